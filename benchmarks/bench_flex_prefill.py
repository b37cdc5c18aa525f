"""FlexAttention at prefill shapes through the cache: compiled for static shapes, for dynamic shapes, and for
dynamic shapes whose lengths are multiples of 128 (the inputs handed over as [B, H, blocks, 128, d]).

A prefill through the cache attends from the chunk's T queries to the meta tokens, the window ring and the
chunk itself (window layers), or to every slot so far (global layers), with a block mask built from the
slots' positions (`flex.build_flex_mask`). torch.compile recompiles flex_attention for a second shape with
dynamic lengths, and inductor's template then cannot know that the lengths divide its blocks.

    python benchmarks/bench_flex_prefill.py [--out benchmarks/results] [--shapes 1x8192,8x2048,1x4096,1x3000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from bench_scan import bench  # noqa: E402
from hymba import HymbaConfig  # noqa: E402
from hymba.ops.attention import flex  # noqa: E402
from hymba.utils import atomic_write_text  # noqa: E402


def prefill_inputs(c: HymbaConfig, batch: int, T: int, is_global: bool, pad: bool = False):
    """q, k, v and the block mask of one layer's attention in a prefill of T tokens after the meta prefix
    (pad: both lengths padded to multiples of 128 with position -1, i.e. padding)."""
    M, ring = c.num_memory_tokens, min(c.sliding_window, T)
    q_pos = (M + torch.arange(T, device="cuda", dtype=torch.int32))[None].expand(batch, -1)
    meta = torch.arange(M, device="cuda", dtype=torch.int32)[None].expand(batch, -1)
    if is_global:
        k_pos = torch.cat([meta, q_pos], 1)
    else:
        k_pos = torch.cat([meta, torch.full((batch, ring), -1, device="cuda", dtype=torch.int32), q_pos], 1)
    if pad:
        q_pos, k_pos = (torch.nn.functional.pad(p, (0, -p.shape[1] % 128), value=-1) for p in (q_pos, k_pos))
        T = q_pos.shape[1]
    mask = flex.build_flex_mask(q_pos, k_pos, None if is_global else c.sliding_window, M, torch.bfloat16)
    kw = dict(device="cuda", dtype=torch.bfloat16)
    q = torch.randn(batch, c.num_attention_heads, T, c.head_dim, **kw)
    k = torch.randn(batch, c.num_key_value_heads, k_pos.shape[1], c.head_dim, **kw)
    v = torch.randn(batch, c.num_key_value_heads, k_pos.shape[1], c.v_head_dim, **kw)
    return q, k, v, mask.block_mask


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--shapes", default="1x8192,8x2048,1x4096,1x3000")
    args = ap.parse_args()
    from torch.nn.attention.flex_attention import flex_attention

    import torch._dynamo
    torch._dynamo.config.recompile_limit = 64
    c = HymbaConfig.from_preset("hymba-1.5b")
    scale = c.head_dim ** -0.5

    def call(q, k, v, bm):
        return flex_attention(q, k, v, block_mask=bm, scale=scale, enable_gqa=True,
                              kernel_options=flex.kernel_options(q, v))

    def call_blocks(q5, k5, v5, bm):  # lengths = 128 x (a dynamic block count): divisible, known statically
        q, k, v = (t.flatten(2, 3) for t in (q5, k5, v5))
        return call(q, k, v, bm)

    modes = {"static": torch.compile(call, dynamic=False), "dynamic": torch.compile(call, dynamic=True),
             "dynamic, 128-multiples": torch.compile(call_blocks, dynamic=True)}
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, runs={})
    for shape in args.shapes.split(","):
        batch, T = (int(x) for x in shape.split("x"))
        for is_global in (False, True):
            q, k, v, bm = prefill_inputs(c, batch, T, is_global)
            qp, kp, vp, bmp = prefill_inputs(c, batch, T, is_global, pad=True)
            qp[:, :, :T], kp[:, :, :k.shape[2]], vp[:, :, :k.shape[2]] = q, k, v
            blocks = tuple(t.unflatten(2, (-1, 128)) for t in (qp, kp, vp))
            for name, fn in modes.items():
                inputs = (*blocks, bmp) if name.startswith("dynamic, 128") else (q, k, v, bm)
                t0 = time.time()
                with torch.no_grad():
                    out = fn(*inputs)
                torch.cuda.synchronize()
                first = time.time() - t0
                with torch.no_grad():
                    ms = bench(lambda: fn(*inputs))
                ref = modes["static"](q, k, v, bm) if name != "static" else out
                diff = (out[:, :, :T].float() - ref.float()).abs().max().item()
                key = f"{shape} {'global' if is_global else 'window'} {name}"
                res["runs"][key] = dict(ms=ms, first_call_s=first, max_diff_vs_static=diff)
                print(f"{key}: {ms:.3f} ms (first call {first:.1f} s, max diff vs static {diff:.1e})", flush=True)
    atomic_write_text(os.path.join(args.out, "flex_prefill.json"), json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
