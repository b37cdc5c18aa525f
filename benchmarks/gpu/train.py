"""A training step of hymba-1.5b at 2k context: forward + backward + fused AdamW, bf16 autocast over fp32
master weights, batch 4 of random tokens, the loss taken from the hidden states (no [tokens, vocab] logits
kept), as the trainer runs it; eager here, with every decoder layer compiled in train_compiled.py.

Tokens/s and MFU: model FLOPs (common.model_flops: matmuls and attention over the keys each query sees,
x3 for the backward) per second over the GPU's dense bf16 peak, and over the matmul rate measured in the
same run. Target: MFU 35%.
"""

from __future__ import annotations

import torch

from ..common import (
    Ctx,
    fast_kernels,
    free_memory,
    matmul_rate,
    metric,
    model_config,
    model_flops,
    peak_bf16_flops,
    peak_memory_gb,
    random_ids,
    time_ms,
)

NAME = "train_step"
SUITE = "gpu"
DESCRIPTION = "training step tokens/s and MFU of hymba-1.5b at 2k context, batch 4, eager"
DEFAULT = True
EST_S = 60
WARM_S = 90  # seconds of its warm-up job (the parallel phase starts the longest first)
TARGET_MFU = 0.35


def training_step(ctx: Ctx, config, batch: int, text_len: int, compiled: bool):
    """One optimizer step on random tokens, as a function returning the loss."""
    from hymba import HymbaForCausalLM
    from hymba.modeling import compile_layers

    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = HymbaForCausalLM(config)
    model.set_kernels(fast_kernels(ctx))
    if compiled:
        compile_layers(model)  # our conv rather than fla-core's: no graph break in each layer
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=ctx.device.type == "cuda")
    ids = random_ids(config.vocab_size, (batch, text_len), ctx.device)

    def step():
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
            loss = model(ids, labels=ids, return_logits=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def measure(ctx: Ctx, compiled: bool) -> dict:
    batch = ctx.param("batch", 1 if ctx.smoke else 4)
    context = ctx.param("context", 8 if ctx.smoke else 2048)
    steps = ctx.param("steps", 1 if ctx.smoke else 4)
    config = model_config(ctx)
    step = training_step(ctx, config, batch, context, compiled)
    if ctx.warm:
        step()
        return {}
    free_memory()  # the peak below is the steps'
    t = time_ms(step, ctx.device, warmup=2, reps=steps)
    rate = matmul_rate(ctx.device, small=ctx.smoke)
    cuda = ctx.device.type == "cuda"
    peak = peak_bf16_flops(torch.cuda.get_device_name()) if cuda else None
    flops = model_flops(config, batch, context, backward=True)
    s = t["median_ms"] / 1e3
    mfu, of_rate = (flops["total"] / s / peak if peak else None), flops["total"] / s / rate
    mode = "compiled layers" if compiled else "eager"
    peak_text = f"MFU {mfu:.1%} of {peak / 1e12:.0f} TFLOP/s" if mfu else "MFU: peak unknown for this device"
    return dict(
        params=dict(preset="hymba-1.5b", mode=mode, batch=batch, context=context, steps=steps, autocast="bfloat16",
                    optimizer="AdamW (fused)"),
        metrics=[
            metric(f"{mode}, batch {batch} x {context}", batch * context / s, "tok/s", headline=True,
                   compare=f"{peak_text}, {of_rate:.1%} of the measured matmul rate; target MFU {TARGET_MFU:.0%}",
                   mfu=mfu, of_measured_matmul=of_rate, target_mfu=TARGET_MFU),
            metric("step", t["median_ms"], "ms"),
            metric("MFU", None if mfu is None else mfu * 100, "%"),
            metric("peak GPU memory", peak_memory_gb(ctx.device), "GB")],
        details=dict(timing=t, model_flops=flops, matmul_TFLOPs=rate / 1e12))


def run(ctx: Ctx) -> dict:
    return measure(ctx, compiled=False)
