"""Prefill of an 8k-token prompt at batch 1 through the public API: `generate(max_new_tokens=1)`, hymba-1.5b
with random bf16 weights, wall time to the first token; with generate's default prefill chunk (512 tokens)
and with the whole prompt in one chunk. Compared with the compute floor: the model FLOPs of the prefill
(common.model_flops) at the bf16 matmul rate measured in the same run.
"""

from __future__ import annotations

import inspect
import statistics

from ..common import Ctx, build_model, generate_seconds, matmul_rate, metric, model_config, model_flops, random_ids

NAME = "prefill_8k"
SUITE = "gpu"
DESCRIPTION = "generate() prefill tok/s of an 8k prompt at batch 1 (default 512-token chunks, and one chunk)"
DEFAULT = True
EST_S = 40
WARM_S = 60  # seconds of its warm-up job (the parallel phase starts the longest first)


def run(ctx: Ctx) -> dict:
    from hymba.engine import generate

    default_chunk = inspect.signature(generate).parameters["prefill_chunk_size"].default
    context = ctx.param("context", 40 if ctx.smoke else 8192)
    reps = ctx.param("reps", 2 if ctx.smoke else 5)
    config = model_config(ctx)
    model = build_model(ctx, config)
    ids = random_ids(config.vocab_size, (1, context), ctx.device)
    chunks = {"default": 16 if ctx.smoke else default_chunk, "whole": context}
    times = {}
    for label, chunk in chunks.items():
        generate_seconds(model, ids, 1, prefill_chunk_size=chunk, engine=False)  # compiles (FlexAttention for these lengths)
        if ctx.warm:
            continue
        times[label] = [generate_seconds(model, ids, 1, prefill_chunk_size=chunk, engine=False) for _ in range(reps)]
    if ctx.warm:
        return {}
    rate = matmul_rate(ctx.device, small=ctx.smoke)
    flops = model_flops(config, 1, context, backward=False, head_tokens=1)["total"]
    floor_s = flops / rate
    metrics = []
    for label, chunk in chunks.items():
        s = statistics.median(times[label])
        what = f"default {chunk}-token chunks" if label == "default" else "one chunk"
        metrics.append(metric(f"prefill {context} tokens, {what}", context / s, "tok/s", headline=True,
                              compare=f"compute floor {context / floor_s:,.0f} tok/s ({flops / 1e12:.1f} TFLOP at "
                                      f"{rate / 1e12:.0f} TFLOP/s): {floor_s / s:.0%} of it",
                              floor_tok_s=context / floor_s, seconds=s))
    return dict(params=dict(preset="hymba-1.5b", batch=1, context=context, chunks=chunks, reps=reps, dtype="bfloat16"),
                metrics=metrics, details=dict(seconds=times, model_flops=flops, matmul_TFLOPs=rate / 1e12))
