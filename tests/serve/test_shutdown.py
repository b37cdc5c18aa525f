"""`hymba serve` as a process: it prints its URL, and on SIGTERM it lets a request in flight finish, refuses new
ones and exits 0."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture
def process(checkpoint_dir):
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hymba.cli", "serve", "--model", checkpoint_dir, "--port", "0",
                             "--device", "cpu", "--max-num-seqs", "2", "--max-model-len", "512",
                             "--prefill-chunk-size", "64", "--served-model-name", "tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def test_sigterm_drains_the_request_in_flight_and_exits_0(process):
    line = process.stdout.readline()
    match = re.search(r"on (http://127\.0\.0\.1:\d+/v1) \(.*started in [\d.]+ s\)", line)
    assert match, line + process.stderr.read()
    url = match.group(1)
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 480, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", url + "/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        first = next(lines)
        assert first.startswith("data: ")
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        try:  # a new request while draining: refused (the port is closed) or answered 503
            refused = httpx.post(url + "/completions", json={"prompt": "hi"}, timeout=5).status_code == 503
        except httpx.TransportError:
            refused = True
        assert refused
        rest = [x for x in lines if x]
    assert rest[-1] == "data: [DONE]"
    chunks = [json.loads(x[6:]) for x in [first] + rest[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert process.poll() is None or process.returncode == 0  # still draining, or done
    assert process.wait(timeout=20) == 0, process.stderr.read()
