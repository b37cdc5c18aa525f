"""Generation on the CPU through the public API (`hymba.engine.generate`): a hymba-125m-shaped model with
random fp32 weights (the reference kernels), a random 256-token prompt, at batch 1 and 4: by the decode
protocol (common.decode_protocol: a warm-up call, a 1-token call and a 33-token call), prefill tokens/s from
the 1-token call (time to the first token) and decode tokens/s from the difference (32 steps). Compared
with floors measured on the same threads: the prefill's model FLOPs at the fp32 matmul rate, and a decode
step's bytes (weights, K/V, states) at the copy bandwidth.
"""

from __future__ import annotations

import torch

from ..common import (
    Ctx,
    build_model,
    copy_bandwidth,
    decode_protocol,
    decode_step_bytes,
    matmul_rate,
    metric,
    model_flops,
    random_ids,
)

NAME = "generate_cpu"
SUITE = "cpu"
DESCRIPTION = "CPU generate(): prefill and decode tok/s of a hymba-125m-shaped model, 256-token prompt, batch 1 and 4"
DEFAULT = True
EST_S = 90


def run(ctx: Ctx) -> dict:
    preset = "tiny" if ctx.smoke else ctx.param("preset", "hymba-125m")
    prompt = ctx.param("prompt", 16 if ctx.smoke else 256)
    new = ctx.param("new", 2 if ctx.smoke else 32)
    batches = ctx.param("batches", [1] if ctx.smoke else [1, 4])
    from hymba import HymbaConfig

    config = HymbaConfig.from_preset(preset)
    model = build_model(ctx, config, dtype=torch.float32, kernels=False)
    rate, bw = matmul_rate(ctx.device, small=ctx.smoke), copy_bandwidth(ctx.device, small=ctx.smoke)
    metrics, details = [], {}
    for batch in batches:
        ids = random_ids(config.vocab_size, (batch, prompt), ctx.device, seed=batch)
        r = decode_protocol(model, ids, new)
        prefill_s = r["first_token_s"]
        flops = model_flops(config, batch, prompt, backward=False, head_tokens=1)["total"]
        step_bytes = decode_step_bytes(config, batch, prompt + new, dtype_bytes=4)["total"]
        details[f"batch {batch}"] = dict(r, prefill_s=prefill_s, prefill_flops=flops, decode_step_bytes=step_bytes)
        metrics += [
            metric(f"batch {batch}: prefill {prompt}", batch * prompt / prefill_s, "tok/s", headline=True,
                   compare=f"{flops / prefill_s / rate:.0%} of the fp32 matmul rate ({rate / 1e9:.0f} GFLOP/s)"),
            metric(f"batch {batch}: decode", r["tokens_per_s"], "tok/s", headline=True,
                   compare=f"{step_bytes / (r['step_ms'] * 1e-3) / bw:.0%} of the copy bandwidth "
                           f"({step_bytes / 1e6:.0f} MB a step at {bw / 1e9:.1f} GB/s)"),
            metric(f"batch {batch}: decode step", r["step_ms"], "ms",
                   floor_ms=step_bytes / bw * 1e3)]
    return dict(params=dict(preset=preset, prompt=prompt, new_tokens=new, batches=batches, dtype="float32",
                            kernels="reference", threads=torch.get_num_threads()),
                metrics=metrics, details=details)
