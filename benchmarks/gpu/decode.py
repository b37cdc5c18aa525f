"""Decoding at 8k context, batch 128, through the public API (`hymba.engine.generate`), hymba-1.5b with
random bf16 weights: tokens/s by the decode protocol (common.decode_protocol: 64 steps as the difference of a
65-token and a 1-token call), against the bandwidth floor of a step.

The floor: the bytes a step must move (every weight, the K/V each layer attends over, the fp32 SSM states
read and written: common.decode_step_bytes, ~19 GB at this shape) over the copy bandwidth measured in the
same run. Both calls pass cuda_graph=True (what generate picks for 65 new tokens; the 1-token call would
otherwise skip the graph and its capture, which would then not cancel out).
"""

from __future__ import annotations

import torch

from ..common import (
    Ctx,
    Skip,
    build_model,
    copy_bandwidth,
    decode_protocol,
    decode_step_bytes,
    free_memory,
    generate_seconds,
    metric,
    model_config,
    peak_memory_gb,
    random_ids,
)

NAME = "decode_8k"
SUITE = "gpu"
DESCRIPTION = "generate() decode tok/s at 8k context, batch 128, hymba-1.5b bf16, CUDA graph; vs the bandwidth floor"
DEFAULT = True
EST_S = 90
WARM_S = 60  # seconds of its warm-up job (the parallel phase starts the longest first)
TARGET_TOK_S = 10_000  # the stretch goal for this shape


def measure(ctx: Ctx, compile_step: bool = False) -> dict:
    from hymba.modeling.cache import cache_bytes

    batch = ctx.param("batch", 2 if ctx.smoke else 128)
    context = ctx.param("context", 24 if ctx.smoke else 8192)
    new = ctx.param("new", 4 if ctx.smoke else 64)
    graph = ctx.device.type == "cuda"
    if compile_step and not graph:
        raise Skip("needs CUDA: compile_step compiles the CUDA graph's step")
    config = model_config(ctx)
    model = build_model(ctx, config)
    ids = random_ids(config.vocab_size, (batch, context), ctx.device)
    kw = dict(cuda_graph=graph, compile_step=compile_step)
    if ctx.warm:
        generate_seconds(model, ids, new + 1, **kw)
        return {}
    free_memory()
    r = decode_protocol(model, ids, new, **kw)
    bw = copy_bandwidth(ctx.device, small=ctx.smoke)
    moved = decode_step_bytes(config, batch, context)
    floor_ms = moved["total"] / bw * 1e3
    floor_tok_s = batch / floor_ms * 1e3
    cache = sum(cache_bytes(config, batch, context + new + 1, dtype=torch.bfloat16).values())
    mode = "CUDA graph of the compiled step" if compile_step else "CUDA graph" if graph else "eager (smoke)"
    return dict(
        params=dict(preset="hymba-1.5b", batch=batch, context=context, new_tokens=new, dtype="bfloat16", mode=mode),
        metrics=[
            metric(f"decode, batch {batch}, {context} context", r["tokens_per_s"], "tok/s", headline=True,
                   compare=f"bandwidth floor {floor_tok_s:,.0f} tok/s ({moved['total'] / 1e9:.1f} GB a step at "
                           f"{bw / 1e12:.2f} TB/s): {r['tokens_per_s'] / floor_tok_s:.0%} of it; "
                           f"target {TARGET_TOK_S:,} tok/s",
                   floor_tok_s=floor_tok_s, target_tok_s=TARGET_TOK_S),
            metric("step", r["step_ms"], "ms", floor_ms=floor_ms),
            metric("first token (prefill of the batch + graph capture)", r["first_token_s"], "s"),
            metric("peak GPU memory", peak_memory_gb(ctx.device), "GB"),
            metric("cache", cache / 1e9, "GB")],
        details=dict(protocol=r, step_bytes=moved, copy_bandwidth_TBps=bw / 1e12))


def run(ctx: Ctx) -> dict:
    return measure(ctx)
