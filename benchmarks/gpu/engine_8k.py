"""Long context through the continuous-batching engine's public offline API (`hymba.LLM(...).generate`),
hymba-1.5b with random bf16 weights, one LLM (max_num_seqs=128, max_model_len=8192: the model's
max_position_embeddings) for every part, in this order:

1. No request compiles: right after start-up, the first request (batch 1, 8 new tokens) at each of several
   prompt lengths (100, 1000, 3000, 7000, 8000), against the same request repeated (the median of 3 repeats):
   first / warm per length; target <= 1.2 (start-up captured every decode graph and ran every prefill
   shape, so a new length must not compile or autotune anything).
2. Prefill at batch 1: one prompt of 8191 tokens (+ 1 new = 8192, the longest request the model takes),
   prefill tokens/s = 8191 / wall(1 new token), the median of 3 warm calls.
3. Decode at batch 128, the issue's protocol: 128 prompts of 8192 - 65 = 8127 tokens (so that prompt + 65 new
   fits max_model_len), tokens/s = 128 x 64 / (wall(65 new) - wall(1 new)), both warm (after a warm-up call
   at batch 8). The engine interleaves prefill chunks with decode steps, so requests admitted early decode
   while later ones are still being prefilled and finish before the last is admitted: the difference is the
   cost of the 128 x 64 extra tokens as the engine schedules them (mostly at batch ~10-20 beside prefill
   chunks), not of steps at batch 128.
4. Decode at batch 128, steady state: 128 prompts of 7168 tokens asking 1024 new tokens each, long enough that
   all 128 are admitted before the first finishes; the engine is stepped through its public methods
   (`llm.engine.add_request`, `step`) and the 64 steps after every request has its first token are timed:
   128 x 64 / their wall time, at ~7.6k context (then the requests are aborted).
"""

from __future__ import annotations

import statistics
import time

from ..common import Ctx, build_model, free_memory, metric, model_config, peak_memory_gb, random_ids
from .engine_chat import SMOKE_KERNELS, sampling, timed_generate

NAME = "engine_8k"
SUITE = "gpu"
DESCRIPTION = ("LLM.generate at 8k context: decode tok/s at batch 128, prefill tok/s at batch 1, "
               "first request per prompt length vs warm (no compiles)")
DEFAULT = True
EST_S = 240
WARM_S = 90  # seconds of its warm-up job (the parallel phase starts the longest first)
TARGET_TOK_S = 13_000  # the decode goal at this shape
TARGET_FIRST_RATIO = 1.2


def prompts(vocab: int, batch: int, length: int, seed: int) -> list[list[int]]:
    return random_ids(vocab, (batch, length), "cpu", seed=seed).tolist()


def compile_check(ctx: Ctx, llm, vocab: int, lengths: list[int], new: int, repeats: int) -> dict:
    """{length: {first_s, warm_s, ratio}}: the first request at each length, then the same one `repeats` times."""
    out = {}
    params = sampling(new)
    for i, n in enumerate(lengths):
        p = prompts(vocab, 1, n, seed=1000 + i)
        first, _ = timed_generate(llm, p, params, ctx.device)
        warm = statistics.median(timed_generate(llm, p, params, ctx.device)[0] for _ in range(repeats))
        out[n] = dict(first_s=first, warm_s=warm, ratio=first / warm)
        ctx.log(f"length {n}: first {first * 1e3:.1f} ms, warm {warm * 1e3:.1f} ms, ratio {first / warm:.2f}")
    return out


def steady_decode(ctx: Ctx, llm, vocab: int, batch: int, prompt: int, new: int, steps: int) -> dict:
    """Step the engine with `batch` requests of `prompt` tokens and `new` max tokens; time `steps` steps once
    every request has its first token (all decoding, none finished), then abort them all."""
    engine = llm.engine
    reqs = [engine.add_request(ids, sampling(new)) for ids in prompts(vocab, batch, prompt, seed=7)]
    t_start = time.perf_counter()
    while not all(r.first_token_time is not None for r in reqs):
        engine.step()
        if any(r.finished for r in reqs):
            break
    admitted_s = time.perf_counter() - t_start
    engine.step()  # settle: the first step with every row decoding
    done_before = min(len(r.output_ids) for r in reqs)
    t0 = time.perf_counter()
    n = 0
    while n < steps and not any(r.finished for r in reqs):
        engine.step()
        n += 1
    elapsed = time.perf_counter() - t0
    clean = not any(r.finished for r in reqs)
    context = prompt + done_before
    for r in reqs:
        engine.abort(r.request_id)
    while engine.has_work():
        engine.step()
    return dict(steps=n, seconds=elapsed, step_ms=elapsed / max(n, 1) * 1e3, admitted_s=admitted_s,
                context_at_start=context, clean=clean,
                tokens_per_s=batch * n / elapsed if clean and n and elapsed > 0 else None)


def run(ctx: Ctx) -> dict:
    from hymba.engine.llm import LLM

    smoke = ctx.smoke
    batch = ctx.param("batch", 2 if smoke else 128)
    max_model_len = ctx.param("max_model_len", 48 if smoke else 8192)
    new = ctx.param("new", 4 if smoke else 64)
    lengths = ctx.param("lengths", [5, 20, 40] if smoke else [100, 1000, 3000, 7000, 8000])
    repeats = ctx.param("repeats", 3)
    steady = ctx.param("steady", True)
    steady_new = ctx.param("steady_new", 16 if smoke else 1024)
    steady_steps = ctx.param("steady_steps", 4 if smoke else 64)
    config = model_config(ctx)
    model = build_model(ctx, config, kernels=SMOKE_KERNELS if ctx.smoke else True)
    V = config.vocab_size
    llm = LLM(model, max_num_seqs=batch, max_model_len=max_model_len,
              prefill_chunk_size=ctx.param("prefill_chunk_size", 0) or None)
    startup = llm.startup_seconds
    ctx.log(f"engine started in {startup:.1f} s")
    decode_prompt = max_model_len - (new + 1)
    if ctx.warm:  # every kernel of the timed parts once, at stand-in sizes
        timed_generate(llm, prompts(V, 1, max_model_len - 1, seed=2), sampling(1), ctx.device)
        timed_generate(llm, prompts(V, 8, decode_prompt, seed=3), sampling(new + 1), ctx.device)
        return {}

    # 1. the first request at each length against the same request warm
    first = compile_check(ctx, llm, V, [n for n in lengths if n + 8 <= max_model_len], 8, repeats)
    worst = max(first.values(), key=lambda r: r["ratio"])

    # 2. prefill at batch 1
    long_prompt = prompts(V, 1, max_model_len - 1, seed=2)
    timed_generate(llm, long_prompt, sampling(1), ctx.device)
    prefill_s = statistics.median(timed_generate(llm, long_prompt, sampling(1), ctx.device)[0]
                                  for _ in range(repeats))
    prefill_tok_s = (max_model_len - 1) / prefill_s

    # 3. decode at batch 128 by the protocol
    big = prompts(V, batch, decode_prompt, seed=3)
    timed_generate(llm, big[: min(8, batch)], sampling(new + 1), ctx.device)  # warm-up
    one_s = timed_generate(llm, big, sampling(1), ctx.device)[0]
    total_s = timed_generate(llm, big, sampling(new + 1), ctx.device)[0]
    protocol_tok_s = batch * new / (total_s - one_s)

    # 4. decode at batch 128 with every request decoding
    steady_r = None
    if steady:
        steady_prompt = max_model_len - steady_new - 1
        steady_r = steady_decode(ctx, llm, V, batch, steady_prompt, steady_new, steady_steps)

    metrics = [
        metric(f"decode, batch {batch}, {max_model_len} context (protocol)", protocol_tok_s, "tok/s", headline=True,
               compare=f"{batch} x {new} / (wall({new + 1} new) {total_s:.2f} s - wall(1 new) {one_s:.2f} s), prefill "
                       f"interleaved; target {TARGET_TOK_S:,} tok/s; decode_8k (generate) is the same protocol",
               target_tok_s=TARGET_TOK_S)]
    if steady_r is not None:
        metrics.append(metric(f"decode, batch {batch}, every row decoding", steady_r["tokens_per_s"], "tok/s",
                              headline=True,
                              compare=f"{steady_r['steps']} steps of {steady_r['step_ms']:.1f} ms at "
                                      f"{steady_r['context_at_start']:,} context; target {TARGET_TOK_S:,} tok/s",
                              target_tok_s=TARGET_TOK_S))
    metrics += [
        metric(f"prefill {max_model_len - 1} tokens, batch 1", prefill_tok_s, "tok/s", headline=True,
               compare=f"{prefill_s * 1e3:.0f} ms to the first token (median of {repeats} warm calls)"),
        metric("first request / warm, worst prompt length", worst["ratio"], "x", headline=True,
               compare=", ".join(f"{n}: {r['ratio']:.2f}" for n, r in first.items())
               + f"; target <= {TARGET_FIRST_RATIO}", target=TARGET_FIRST_RATIO),
        metric("engine start-up (graph capture + warm-up)", startup, "s"),
        metric("peak GPU memory", peak_memory_gb(ctx.device), "GB")]
    metrics += [metric(f"first request / warm at {n} tokens", r["ratio"], "x") for n, r in first.items()]
    details = dict(startup_seconds=startup, first_request=first, prefill=dict(seconds=prefill_s, tok_s=prefill_tok_s),
                   protocol=dict(one_new_s=one_s, total_s=total_s, tokens_per_s=protocol_tok_s, prompt=decode_prompt),
                   steady=steady_r, engine_stats=dict(llm.engine.stats))
    llm = model = None
    free_memory()
    return dict(params=dict(preset="hymba-1.5b", batch=batch, max_model_len=max_model_len, decode_prompt=decode_prompt,
                            new_tokens=new, lengths=lengths, repeats=repeats, steady_new=steady_new,
                            steady_steps=steady_steps, dtype="bfloat16", greedy=True, ignore_eos=True),
                metrics=metrics, details=details)
