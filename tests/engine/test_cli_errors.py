"""Command-line mistakes get one line and exit status 2, never a traceback; ignored options are named."""

import os
import subprocess
import sys

import pytest

from hymba.cli import main

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.mark.parametrize("flag, value, message", [
    ("--top-p", "0", "argument --top-p: must be in (0, 1], got 0"),
    ("--top-p", "1.5", "argument --top-p: must be in (0, 1], got 1.5"),
    ("--stop", "", "argument --stop: must not be empty"),
    ("--prefill-chunk-size", "0", "argument --prefill-chunk-size: must be >= 1, got 0"),
    ("--max-new-tokens", "-3", "argument --max-new-tokens: must be >= 1, got -3"),
    ("--temperature", "-1", "argument --temperature: must be >= 0, got -1"),
    ("--top-k", "many", "argument --top-k: expected an integer, got 'many'"),
])
def test_bad_values_are_usage_errors(checkpoint_dir, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--model", checkpoint_dir, "--prompt", "hi", f"{flag}={value}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_info_on_a_broken_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "hymba"')
    assert main(["info", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hymba info: error: ") and "config.json is not valid JSON" in err
    assert "Traceback" not in err and err.count("\n") == 1


def run_cli(args, stdin: bytes | None = None):
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "src")}
    return subprocess.run([sys.executable, "-m", "hymba.cli"] + args, input=stdin, capture_output=True, env=env,
                          timeout=120)


def test_prompts_that_are_not_utf8_say_where_they_came_from(checkpoint_dir, tmp_path):
    bad = b"caf\xe9 au lait"  # Latin-1, not UTF-8
    proc = run_cli([b"generate", b"--model", checkpoint_dir.encode(), b"--prompt", bad])
    assert proc.returncode == 2 and b"--prompt is not valid UTF-8 text" in proc.stderr
    proc = run_cli(["generate", "--model", checkpoint_dir, "--prompt-file", "-"], stdin=bad)
    assert proc.returncode == 2 and b"standard input is not valid UTF-8 text (byte 0xe9 at offset 3)" in proc.stderr
    path = tmp_path / "prompt.txt"
    path.write_bytes(bad)
    proc = run_cli(["generate", "--model", checkpoint_dir, "--prompt-file", str(path)])
    assert proc.returncode == 2 and f"--prompt-file {path} is not valid UTF-8".encode() in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_ignored_options_are_named(checkpoint_dir, capsys):
    assert main(["generate", "--model", checkpoint_dir, "--prompt", "hi", "--max-new-tokens", "2", "--quiet",
                 "--system", "be brief", "--top-p", "0.9", "--seed", "1"]) == 0
    err = capsys.readouterr().err
    assert "warning: --system is ignored without --chat" in err
    assert "warning: --top-p, --seed are ignored with --temperature 0 (greedy decoding)" in err
