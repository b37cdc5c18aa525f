"""A training step on the CPU: a hymba-125m-shaped model cut to 4 layers (the full 32001-token vocabulary),
fp32, AdamW, batch 2 x 256 random tokens, the loss from the hidden states as the trainer takes it. Tokens/s,
and model FLOPs (common.model_flops, x3 for the backward) per second as a share of the fp32 matmul rate
measured on the same threads.
"""

from __future__ import annotations

import torch

from ..common import Ctx, matmul_rate, metric, model_flops, random_ids, time_ms

NAME = "train_cpu"
SUITE = "cpu"
DESCRIPTION = "CPU training step tokens/s of a 4-layer hymba-125m-shaped model, batch 2 x 256, fp32 AdamW"
DEFAULT = True
EST_S = 90


def run(ctx: Ctx) -> dict:
    from hymba import HymbaConfig, HymbaForCausalLM

    layers = ctx.param("layers", 2 if ctx.smoke else 4)
    batch = ctx.param("batch", 1 if ctx.smoke else 2)
    context = ctx.param("context", 16 if ctx.smoke else 256)
    steps = ctx.param("steps", 1 if ctx.smoke else 3)
    config = HymbaConfig.from_preset("tiny" if ctx.smoke else "hymba-125m", num_hidden_layers=layers,
                                     global_attn_idx=[0], kv_reuse_group=[[i, i + 1] for i in range(1, layers - 1, 2)])
    torch.manual_seed(0)
    model = HymbaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = random_ids(config.vocab_size, (batch, context), ctx.device)

    def step():
        model(ids, labels=ids, return_logits=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    t = time_ms(step, ctx.device, warmup=1, reps=steps)
    s = t["median_ms"] / 1e3
    flops = model_flops(config, batch, context, backward=True)["total"]
    rate = matmul_rate(ctx.device, small=ctx.smoke)
    return dict(params=dict(preset="hymba-125m", layers=layers, batch=batch, context=context, steps=steps,
                            dtype="float32", parameters=model.num_parameters(), threads=torch.get_num_threads()),
                metrics=[metric(f"batch {batch} x {context}", batch * context / s, "tok/s", headline=True,
                                compare=f"{flops / s / rate:.0%} of the fp32 matmul rate ({rate / 1e9:.0f} GFLOP/s)",
                                model_flops=flops, matmul_flops=rate),
                         metric("step", t["median_ms"], "ms")],
                details=dict(timing=t))
