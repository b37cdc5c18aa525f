"""Online serving: `hymba serve` (the OpenAI-compatible server) with hymba-1.5b's random bf16 weights, driven
by a client written here (asyncio + httpx: no maintained load generator, such as vLLM's benchmark_serving,
is installed on the GPU machine, and the machine reaches no network to fetch one).

The request set (fixed seed): N requests (`n`, default 64), prompts of random token ids (sent as token-id
lists, so no tokenizer is involved in what is measured), prompt lengths uniform in [64, 512], output lengths
uniform in [64, 256], each asked with min_tokens = max_tokens and ignore_eos, greedy, streamed. The same set
is sent at each request rate (2, 8, 32 req/s with Poisson arrivals, and "inf": all at once). Per rate:
request throughput and output tokens/s over the span from the first request sent to the last finished,
TTFT (time to the first streamed chunk carrying a choice) p50/p99, TPOT ((end to end - TTFT) / (tokens - 1))
p50/p99, and failures: an HTTP error, or a response whose completion is not exactly the requested tokens
(`usage.completion_tokens` when the stream carries usage, asked with stream_options.include_usage; finish
reason "length" in any case). Any failure fails the benchmark.

Offline baseline: before the server starts (it holds the GPU afterwards), the same request set, all at once,
through `LLM(model_dir).generate` in-process (loaded from the same directory as the server, the same
max_num_seqs and max_model_len), then freed. Serving at saturation ("inf") / offline: target >= 0.8.

The model directory is a temporary one: config.json + model.safetensors saved from the random model, and a
tokenizer (the server needs one): the release tokenizer from `--param serving.tokenizer=DIR`, else
`../shared/hymba-1.5b` beside the repository, else a synthetic word-level tokenizer of the model's vocabulary
(text output is then meaningless, which does not matter here). At the end the server gets SIGTERM and must
exit with status 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from ..common import ROOT, Ctx, Skip, build_model, free_memory, metric, model_config, peak_memory_gb

NAME = "serving"
SUITE = "gpu"
DESCRIPTION = "hymba serve under Poisson load (2, 8, 32 req/s, all at once): throughput, TTFT, TPOT vs offline LLM"
DEFAULT = True
EST_S = 210
TARGET_RATIO = 0.8
SERVE = [sys.executable, "-m", "hymba.cli", "serve"]  # the server's command, before its options
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


# ---- the request set -----------------------------------------------------------------------------------------
def request_set(n: int, prompt_range: tuple[int, int], output_range: tuple[int, int], vocab: int,
                seed: int = 0) -> list[dict]:
    """`n` requests: random token ids (ids 0-2, the special tokens, left out), lengths uniform in the ranges."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(*prompt_range)
        out.append(dict(prompt=[rng.randrange(3, vocab) for _ in range(length)],
                        max_tokens=rng.randint(*output_range)))
    return out


def arrivals(n: int, rate: float, seed: int) -> list[float]:
    """Send times in seconds from the start: a Poisson process of `rate` per second (inf: all at 0)."""
    if rate == float("inf"):
        return [0.0] * n
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


# ---- the model directory and the server -------------------------------------------------------------------------
def tokenizer_source(ctx: Ctx) -> str | None:
    for d in (ctx.param("tokenizer", ""), os.path.join(os.path.dirname(ROOT), "shared", "hymba-1.5b")):
        if d and os.path.exists(os.path.join(d, "tokenizer.json")):
            return d
    return None


def write_tokenizer(model_dir: str, source: str | None, vocab: int) -> str:
    """Copy the tokenizer files of `source` into `model_dir`, or write a word-level one of `vocab` tokens."""
    if source is not None:
        for f in TOKENIZER_FILES:
            if os.path.exists(os.path.join(source, f)):
                shutil.copy(os.path.join(source, f), model_dir)
        return source
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"<t{i}>": i for i in range(vocab)}, unk_token="<t0>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(os.path.join(model_dir, "tokenizer.json"))
    return f"synthetic word-level, {vocab} tokens"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: str, n: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def wait_healthy(proc, base: str, log_path: str, timeout: float) -> float:
    """Seconds until GET /health answers 200; raises if the server exits or `timeout` passes."""
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before it was healthy:\n"
                               + tail(log_path))
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not healthy after {timeout:.0f} s:\n" + tail(log_path))


# ---- the client --------------------------------------------------------------------------------------------------
async def one_request(client, url: str, body: dict, send_at: float, t0: float) -> dict:
    """Send `body` (streamed) at t0 + send_at; TTFT, end to end, completion tokens, finish reason."""
    await asyncio.sleep(max(0.0, t0 + send_at - time.perf_counter()))
    sent = time.perf_counter()
    first = None
    chunks = 0
    usage = finish = None
    token_ids = 0
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")[:300]
                return dict(ok=False, error=f"HTTP {resp.status_code}: {text}", sent=sent)
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    if first is None:
                        first = time.perf_counter()
                    chunks += 1
                    token_ids += len(choice.get("token_ids") or [])
                    finish = choice.get("finish_reason") or finish
    except Exception as e:  # a dropped connection, a malformed chunk: a failed request, recorded
        return dict(ok=False, error=f"{type(e).__name__}: {e}"[:300], sent=sent)
    end = time.perf_counter()
    want = body["max_tokens"]
    if usage is not None and usage.get("completion_tokens") is not None:
        n, counted = usage["completion_tokens"], "usage"
    elif token_ids:
        n, counted = token_ids, "token_ids"
    else:
        n, counted = want, "finish_reason"  # min_tokens = max_tokens and finish "length": exactly max_tokens
    error = None
    if first is None:
        error = "no chunk with a choice"
    elif finish != "length":
        error = f"finish_reason {finish!r}, expected 'length'"
    elif n != want:
        error = f"{n} completion tokens ({counted}), expected {want}"
    return dict(ok=error is None, error=error, sent=sent, end=end, ttft=(first or end) - sent, e2e=end - sent,
                n_out=n, counted=counted, chunks=chunks)


def request_body(req: dict, model_name: str, include_usage: bool) -> dict:
    body = dict(model=model_name, prompt=req["prompt"], max_tokens=req["max_tokens"], min_tokens=req["max_tokens"],
                ignore_eos=True, temperature=0.0, stream=True)
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


async def drive(base: str, model_name: str, requests: list[dict], rate: float, include_usage: bool,
                seed: int) -> list[dict]:
    import httpx

    limits = httpx.Limits(max_connections=len(requests) + 8, max_keepalive_connections=len(requests) + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        t0 = time.perf_counter()
        bodies = [request_body(r, model_name, include_usage) for r in requests]
        return await asyncio.gather(*(one_request(client, base + "/v1/completions", b, at, t0)
                                      for b, at in zip(bodies, arrivals(len(requests), rate, seed))))


def summarize(results: list[dict]) -> dict:
    ok = [r for r in results if r["ok"]]
    failures = [r["error"] for r in results if not r["ok"]]
    if not ok:
        return dict(requests=len(results), failures=len(failures), errors=failures[:5])
    span = max(r["end"] for r in ok) - min(r["sent"] for r in results)
    ttft = [r["ttft"] * 1e3 for r in ok]
    tpot = [(r["e2e"] - r["ttft"]) / (r["n_out"] - 1) * 1e3 for r in ok if r["n_out"] > 1]
    return dict(requests=len(results), failures=len(failures), errors=failures[:5], span_s=span,
                request_per_s=len(ok) / span, output_tok_s=sum(r["n_out"] for r in ok) / span,
                ttft_p50_ms=percentile(ttft, 50), ttft_p99_ms=percentile(ttft, 99),
                tpot_p50_ms=percentile(tpot, 50), tpot_p99_ms=percentile(tpot, 99),
                counted_by=sorted({r["counted"] for r in ok}))


# ---- the parts ---------------------------------------------------------------------------------------------------
def offline(ctx: Ctx, model_dir: str, requests: list[dict], max_num_seqs: int, max_model_len: int) -> dict:
    """The request set, all at once, through LLM.generate in this process; then the LLM is freed."""
    from hymba.engine.llm import LLM
    from hymba.engine.params import SamplingParams

    llm = LLM(model_dir, device=str(ctx.device), max_num_seqs=max_num_seqs, max_model_len=max_model_len)
    startup = llm.startup_seconds
    params = [SamplingParams(max_tokens=r["max_tokens"], min_tokens=r["max_tokens"], temperature=0.0, ignore_eos=True)
              for r in requests]
    prompts = [r["prompt"] for r in requests]
    llm.generate(prompts[:8], params[:8])  # warm-up
    t = time.perf_counter()
    outs = llm.generate(prompts, params)
    seconds = time.perf_counter() - t
    made = [len(o.outputs[0].token_ids) for o in outs]
    bad = sum(m != r["max_tokens"] for m, r in zip(made, requests))
    if bad:
        raise RuntimeError(f"offline: {bad} requests did not make exactly their max_tokens")
    peak = peak_memory_gb(ctx.device)
    llm = outs = None
    free_memory()
    return dict(seconds=seconds, output_tok_s=sum(made) / seconds, request_per_s=len(requests) / seconds,
                startup_s=startup, peak_memory_GB=peak)


def probe(base: str, model_dir: str, requests: list[dict]) -> tuple[str, bool]:
    """The served model's name (GET /v1/models, else the directory) and whether the server accepts
    stream_options (one streamed request, which also warms the HTTP path)."""
    import httpx

    name = model_dir
    try:
        r = httpx.get(base + "/v1/models", timeout=10)
        if r.status_code == 200 and r.json().get("data"):
            name = r.json()["data"][0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError):
        pass
    req = dict(requests[0], max_tokens=min(8, requests[0]["max_tokens"]))
    for include_usage in (True, False):
        res = asyncio.run(drive(base, name, [req], float("inf"), include_usage, seed=0))[0]
        if res["ok"]:
            return name, include_usage
    raise RuntimeError(f"the server refused a plain streamed completion: {res['error']}")


def run(ctx: Ctx) -> dict:
    try:
        import hymba.cli.serve  # noqa: F401  (the subcommand the server runs as)
    except ImportError as e:
        raise Skip(f"hymba.cli.serve cannot be imported ({e}): no server to benchmark in this checkout")
    if ctx.warm:
        return {}
    smoke = ctx.smoke
    n = ctx.param("n", 6 if smoke else 64)
    rates = [float(r) for r in ctx.param("rates", ["8", "inf"] if smoke else ["2", "8", "32", "inf"])]
    prompt_range = tuple(ctx.param("prompt_range", [4, 16] if smoke else [64, 512]))
    output_range = tuple(ctx.param("output_range", [2, 6] if smoke else [64, 256]))
    max_num_seqs = ctx.param("max_num_seqs", 8 if smoke else 64)
    max_model_len = ctx.param("max_model_len", 64 if smoke else 1024)
    startup_timeout = ctx.param("startup_timeout", 120 if smoke else 400)
    tok_src = tokenizer_source(ctx)
    vocab = 32001 if (smoke and tok_src) else None  # the release tokenizer needs the real vocabulary
    config = model_config(ctx, **({"vocab_size": vocab} if vocab else {}))
    requests = request_set(n, prompt_range, output_range, config.vocab_size, seed=0)
    failures, details = [], {}
    with tempfile.TemporaryDirectory(prefix="hymba-serving-") as tmp:
        model_dir = os.path.join(tmp, "model")
        t = time.perf_counter()
        model = build_model(ctx, config, kernels=False)
        model.save_pretrained(model_dir)
        model = None
        free_memory()
        details["tokenizer"] = write_tokenizer(model_dir, tok_src, config.vocab_size)
        details["save_s"] = time.perf_counter() - t
        ctx.log(f"model saved in {details['save_s']:.1f} s; tokenizer: {details['tokenizer']}")

        details["offline"] = off = offline(ctx, model_dir, requests, max_num_seqs, max_model_len)
        ctx.log(f"offline: {off['output_tok_s']:,.0f} output tok/s in {off['seconds']:.2f} s")

        port = ctx.param("port", 0) or free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = os.path.join(tmp, "server.log")
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(p for p in (os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH"))
                                              if p))
        if smoke:
            env["CUDA_VISIBLE_DEVICES"] = ""  # --smoke is a CPU run
        cmd = [*SERVE, "--model", model_dir, "--host", "127.0.0.1",
               "--port", str(port), "--max-num-seqs", str(max_num_seqs), "--max-model-len", str(max_model_len)]
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            timeout = min(startup_timeout, max(30.0, ctx.time_left() - 60))
            details["server_startup_s"] = wait_healthy(proc, base, log_path, timeout)
            ctx.log(f"server healthy after {details['server_startup_s']:.1f} s")
            model_name, include_usage = probe(base, model_dir, requests)
            details["stream_options_accepted"] = include_usage
            per_rate = {}
            for i, rate in enumerate(rates):
                label = "inf" if rate == float("inf") else f"{rate:g} req/s"
                results = asyncio.run(drive(base, model_name, requests, rate, include_usage, seed=1 + i))
                per_rate[label] = s = summarize(results)
                ctx.log(f"{label}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in s.items() if k != "errors"))
                if s["failures"]:
                    failures.append(f"{label}: {s['failures']} of {n} requests failed: " + "; ".join(s["errors"][:3]))
            details["rates"] = per_rate
        finally:
            rc = None
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    rc = proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    failures.append("the server did not exit within 60 s of SIGTERM")
            else:
                rc = proc.returncode
            details["server_exit_status"] = rc
            details["server_log_tail"] = tail(log_path, 20)
        if rc not in (0, None):
            why = " (killed by the signal: uvicorn re-raises it after a graceful shutdown)" if rc == -signal.SIGTERM else ""
            failures.append(f"the server exited with status {rc} after SIGTERM{why}")

    metrics = []
    for label, s in details["rates"].items():
        if s.get("output_tok_s") is None:
            continue
        metrics.append(metric(f"{label}: output", s["output_tok_s"], "tok/s", headline=True,
                              compare=f"{s['request_per_s']:.2f} req/s; TTFT p50/p99 {s['ttft_p50_ms']:.0f}/"
                                      f"{s['ttft_p99_ms']:.0f} ms; TPOT p50/p99 {s['tpot_p50_ms']:.1f}/"
                                      f"{s['tpot_p99_ms']:.1f} ms; {s['failures']} failed"))
        metrics += [metric(f"{label}: {k}", s[k], unit) for k, unit in (
            ("request_per_s", "req/s"), ("ttft_p50_ms", "ms"), ("ttft_p99_ms", "ms"), ("tpot_p50_ms", "ms"),
            ("tpot_p99_ms", "ms"), ("failures", "requests"))]
    sat = details["rates"].get("inf", {}).get("output_tok_s")
    ratio = sat / off["output_tok_s"] if sat else None
    metrics += [
        metric("saturation / offline", ratio, "x", headline=True,
               compare=f"offline LLM.generate {off['output_tok_s']:,.0f} output tok/s; target >= {TARGET_RATIO}",
               target=TARGET_RATIO),
        metric("offline: output", off["output_tok_s"], "tok/s"),
        metric("server start-up to healthy", details["server_startup_s"], "s")]
    return dict(params=dict(preset="hymba-1.5b", n=n, rates=[str(r) for r in rates], prompt_range=list(prompt_range),
                            output_range=list(output_range), max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                            dtype="bfloat16", greedy=True, ignore_eos=True, streamed=True, seed=0),
                metrics=metrics, details=details, failures=failures)
