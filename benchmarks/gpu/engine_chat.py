"""The chat protocol through the continuous-batching engine's public offline API, `hymba.LLM(...).generate`:
hymba-1.5b with random bf16 weights, a 128-token random prompt, 256 new tokens (min_tokens = max_tokens,
ignore_eos, greedy), batch 1 and batch 8 (that many prompts in one `generate` call). Three calls per batch,
the first reported as cold; tokens/s = batch x new / the fastest warm call's wall time (prefill, every
decode step and the host's bookkeeping included: what a caller sees).

One LLM with max_num_seqs = the largest batch (8) serves both batches: its start-up (the decode CUDA graphs
of every batch bucket up to 8, every prefill shape run once) is paid once, before any call, and reported as
`startup_seconds`; batch 1 runs on the same engine, in its batch-1 graph. The `chat` benchmark is the same
protocol through `hymba.engine.generate`, which captures a graph per call.
"""

from __future__ import annotations

import statistics

from ..common import Ctx, build_model, free_memory, metric, model_config, peak_memory_gb, random_ids, wall

NAME = "engine_chat"
SUITE = "gpu"
DESCRIPTION = "LLM.generate (continuous batching) with a 128-token prompt and 256 new tokens at batch 1 and 8"
DEFAULT = True
EST_S = 60
WARM_S = 60  # seconds of its warm-up job (the parallel phase starts the longest first)
# Under --smoke the engine's scheduling is what is exercised; the Triton interpreter would take minutes.
SMOKE_KERNELS = "reference"


def sampling(new: int):
    from hymba.engine.params import SamplingParams

    return SamplingParams(max_tokens=new, min_tokens=new, temperature=0.0, ignore_eos=True)


def timed_generate(llm, prompts: list[list[int]], params, device) -> tuple[float, list]:
    """(wall seconds, outputs) of one `generate` call; every output checked to hold exactly max_tokens."""
    seconds, outs = wall(lambda: llm.generate(prompts, params), device)
    want = params.max_tokens if not isinstance(params, list) else None
    for i, out in enumerate(outs):
        n = len(out.outputs[0].token_ids)
        expected = want if want is not None else params[i].max_tokens
        if n != expected:
            raise RuntimeError(f"request {i} made {n} tokens, not {expected}")
    return seconds, outs


def request_times(outs) -> dict:
    """From the requests' own clocks (time.monotonic): mean time to the first token, and the decode rate of the
    call from the last first token to the last finish (every request decoding)."""
    ttft = [o.metrics["first_token"] - o.metrics["arrival"] for o in outs]
    first = max(o.metrics["first_token"] for o in outs)
    last = max(o.metrics["finished"] for o in outs)
    steps = min(len(o.outputs[0].token_ids) for o in outs) - 1
    return dict(ttft_mean_s=statistics.mean(ttft), ttft_max_s=max(ttft),
                decode_tok_s=len(outs) * steps / (last - first) if last > first and steps > 0 else None)


def run(ctx: Ctx) -> dict:
    from hymba.engine.llm import LLM

    prompt = ctx.param("prompt", 8 if ctx.smoke else 128)
    new = ctx.param("new", 4 if ctx.smoke else 256)
    batches = ctx.param("batches", [1, 2] if ctx.smoke else [1, 8])
    calls = ctx.param("calls", 3)
    max_num_seqs = ctx.param("max_num_seqs", max(batches))
    config = model_config(ctx)
    model = build_model(ctx, config, kernels=SMOKE_KERNELS if ctx.smoke else True)
    llm = LLM(model, max_num_seqs=max_num_seqs, max_model_len=ctx.param("max_model_len", 1024))
    params = sampling(new)
    metrics, details = [], dict(startup_seconds=llm.startup_seconds)
    for batch in batches:
        prompts = random_ids(config.vocab_size, (batch, prompt), "cpu", seed=batch).tolist()
        if ctx.warm:
            timed_generate(llm, prompts, params, ctx.device)
            continue
        runs = [timed_generate(llm, prompts, params, ctx.device) for _ in range(calls)]
        walls = [s for s, _ in runs]
        best = min(range(1, calls), key=lambda i: walls[i]) if calls > 1 else 0
        times = request_times(runs[best][1])
        tok_s = batch * new / walls[best]
        details[f"batch {batch}"] = dict(walls_s=walls, cold_s=walls[0], best_warm_s=walls[best], **times)
        metrics += [
            metric(f"batch {batch}: end to end", tok_s, "tok/s", headline=True,
                   compare=f"cold call {walls[0]:.2f} s ({batch * new / walls[0]:,.0f} tok/s); first token "
                           f"{times['ttft_mean_s'] * 1e3:.0f} ms; engine start-up {llm.startup_seconds:.1f} s"),
            metric(f"batch {batch}: cold call", batch * new / walls[0], "tok/s"),
            metric(f"batch {batch}: first token (mean over the batch)", times["ttft_mean_s"] * 1e3, "ms"),
            metric(f"batch {batch}: decode within the call", times["decode_tok_s"], "tok/s")]
    if ctx.warm:
        return {}
    metrics += [metric("engine start-up (graph capture + warm-up)", llm.startup_seconds, "s"),
                metric("peak GPU memory", peak_memory_gb(ctx.device), "GB")]
    details["engine_stats"] = dict(llm.engine.stats)
    llm = model = None
    free_memory()
    return dict(params=dict(preset="hymba-1.5b", prompt=prompt, new_tokens=new, batches=batches, calls=calls,
                            max_num_seqs=max_num_seqs, dtype="bfloat16", greedy=True, ignore_eos=True),
                metrics=metrics, details=details)
