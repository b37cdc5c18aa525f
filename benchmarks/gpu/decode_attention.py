"""The Triton decode-attention kernel alone at hymba-1.5b's batch-128, 8k-context decode step, for the two
kinds of layer: global (the whole cache: 128 meta slots + the context) and window (128 meta + a ring of
1,025 slots), with the library's launch configuration for each. Compared with the bytes it must read (K and V
once, the slots' positions) over the copy bandwidth measured in the same run. `--param
decode_attention.sweep=1` also times keys per block x warps x pipeline stages (54 compilations).
"""

from __future__ import annotations

import itertools

import torch

from ..common import Ctx, copy_bandwidth, metric, model_config, time_ms

NAME = "decode_attention"
SUITE = "gpu"
DESCRIPTION = "Triton decode attention at batch 128, 8k context (global and window layer) vs the bytes it reads"
DEFAULT = True
EST_S = 20
WARM_S = 15  # seconds of its warm-up job (the parallel phase starts the longest first)
SWEEP = {"BLOCK_N": (32, 64, 128), "num_warps": (2, 4, 8), "num_stages": (2, 3, 4)}


def layer_inputs(config, batch: int, context: int, window: int | None, device, capacity: int):
    """q, k, v, q_pos, k_pos of one layer after `context` tokens, laid out as the static cache holds them:
    meta slots first, then the tokens (global; empty slots after them), or the ring of the window."""
    M, Hkv, H, dk, dv = (config.num_memory_tokens, config.num_key_value_heads, config.num_attention_heads,
                         config.head_dim, config.v_head_dim)
    pos = M + context  # the query's position
    if window is None:
        k_pos = torch.arange(M + capacity, device=device)
        k_pos[pos + 1:] = -1
    else:
        ring = torch.arange(pos - window, pos + 1, device=device).roll(window // 3)  # window + 1 slots, rotated
        k_pos = torch.cat([torch.arange(M, device=device), ring])
    S = k_pos.numel()
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(batch, H, 1, dk, device=device, generator=g).to(torch.bfloat16)
    k = torch.randn(batch, Hkv, S, dk, device=device, generator=g).to(torch.bfloat16)
    v = torch.randn(batch, Hkv, S, dv, device=device, generator=g).to(torch.bfloat16)
    return q, k, v, torch.full((batch, 1), pos, device=device), k_pos[None].expand(batch, -1).contiguous()


def run(ctx: Ctx) -> dict:
    from hymba.ops.attention import decode_triton

    config = model_config(ctx)
    batch = ctx.param("batch", 2 if ctx.smoke else 128)
    context = ctx.param("context", 24 if ctx.smoke else 8192)
    sweep = ctx.param("sweep", False)
    warmup, reps = (1, 1) if ctx.smoke else (2, 20)
    dev, M = ctx.device, config.num_memory_tokens
    n_global = sum(config.is_global(i) for i in range(config.num_hidden_layers))
    n_window = config.num_hidden_layers - n_global
    bw = None if ctx.warm else copy_bandwidth(dev, small=ctx.smoke)
    layers, metrics = {}, []
    for kind, window in (("global", None), ("window", config.sliding_window)):
        q, k, v, q_pos, k_pos = layer_inputs(config, batch, context, window, dev, capacity=context + 65)
        nbytes = k.nbytes + v.nbytes + k_pos.nbytes
        library = {**decode_triton.LAUNCH, **(decode_triton.LAUNCH_GLOBAL if window is None else {})}

        def attend(launch=library):
            return decode_triton.decode_attention(q, k, v, q_pos, k_pos, window, M, config.head_dim ** -0.5,
                                                  launch=launch)
        if ctx.warm:
            attend()
            continue
        ms = time_ms(attend, dev, warmup=warmup, reps=reps)["median_ms"]
        floor_ms = nbytes / bw * 1e3
        layers[kind] = dict(slots=k.shape[2], bytes=nbytes, launch=library, ms=ms, floor_ms=floor_ms)
        metrics.append(metric(f"{kind} layer ({k.shape[2]:,} slots)", ms, "ms", headline=True,
                              compare=f"{nbytes / 1e9:.2f} GB at {bw / 1e12:.2f} TB/s: {floor_ms:.3f} ms, "
                                      f"{floor_ms / ms:.0%} of the copy bandwidth", floor_ms=floor_ms))
        if sweep:
            want, rows = attend().float(), []
            for values in itertools.product(*SWEEP.values()):
                launch = dict(zip(SWEEP, values))
                try:
                    err = ((attend(launch).float() - want).norm() / want.norm()).item()
                    rows.append(dict(launch=launch, ms=time_ms(lambda: attend(launch), dev, warmup, reps)["median_ms"],
                                     rel_diff=err))
                except Exception as e:  # a configuration the GPU cannot hold (shared memory, registers)
                    rows.append(dict(launch=launch, error=f"{type(e).__name__}: {str(e)[:120]}"))
            layers[kind]["sweep"] = rows
    if ctx.warm:
        return {}
    step = n_global * layers["global"]["ms"] + n_window * layers["window"]["ms"]
    step_floor = n_global * layers["global"]["floor_ms"] + n_window * layers["window"]["floor_ms"]
    metrics.append(metric(f"a step's attention ({n_global} global + {n_window} window layers)", step, "ms",
                          floor_ms=step_floor))
    return dict(params=dict(preset="hymba-1.5b", batch=batch, context=context, dtype="bfloat16", sweep=sweep),
                metrics=metrics, details=dict(layers=layers, copy_bandwidth_TBps=bw / 1e12))
