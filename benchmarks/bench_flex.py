"""FlexAttention at a hymba-1.5b training step's shape: which kernel options are fastest.

Batch 4, 2048 text tokens + 128 meta tokens, 25 query heads over 5 K/V heads, key head 64, value head 128,
bf16; the two masks of the model (global: causal; window layers: 1024-token window + meta tokens). For each
mask, times the forward and forward + backward with inductor's default options for this GPU, with the
options the library passes (`flex.FLEX_KERNEL_OPTIONS`), and with `--autotune` under max-autotune (inductor
benchmarks its own list of options and logs the winner: how the library's options were found); reports ms
and TFLOP/s (the FLOPs of the visible query-key pairs only).

    python benchmarks/bench_flex.py [--out benchmarks/results] [--autotune]

Writes flex.json.
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
from hymba.ops.attention.masks import allowed_keys  # noqa: E402
from hymba.utils import atomic_write_text  # noqa: E402

def attention_flops(T: int, window: int | None, M: int, batch: int, heads: int, dk: int, dv: int) -> tuple[float, float]:
    """(forward, backward) FLOPs over the visible pairs: forward QK^T and PV; backward recomputes QK^T and
    forms dV, dP, dQ, dK."""
    pos = torch.arange(T)[None]
    pairs = float(allowed_keys(pos, pos, window, M).sum()) * batch * heads
    return pairs * 2 * (dk + dv), pairs * 2 * (3 * dk + 2 * dv)


def run_case(fn, q, k, v, grad) -> dict:
    t = time.time()
    out = fn(q, k, v)
    out.backward(grad)
    torch.cuda.synchronize()
    compile_s = time.time() - t
    with torch.no_grad():
        fwd = bench(lambda: fn(q, k, v))

    def fwd_bwd():
        for x in (q, k, v):
            x.grad = None
        fn(q, k, v).backward(grad)
    return dict(forward_ms=fwd, forward_backward_ms=bench(fwd_bwd), first_call_s=compile_s)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--autotune", action="store_true", help="also time max-autotune's pick (minutes)")
    args = ap.parse_args()
    from torch.nn.attention.flex_attention import flex_attention

    c = HymbaConfig.from_preset("hymba-1.5b")
    M, T = c.num_memory_tokens, args.context + c.num_memory_tokens
    B, H, Hkv, dk, dv = args.batch, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.v_head_dim
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, T, H, dk, device="cuda", generator=g, dtype=torch.bfloat16).transpose(1, 2)
    k = torch.randn(B, T, Hkv, dk, device="cuda", generator=g, dtype=torch.bfloat16).transpose(1, 2)
    v = torch.randn(B, T, Hkv, dv, device="cuda", generator=g, dtype=torch.bfloat16).transpose(1, 2)
    for x in (q, k, v):
        x.requires_grad_(True)
    grad = torch.randn(B, H, T, dv, device="cuda", generator=g, dtype=torch.bfloat16)
    scale = dk ** -0.5
    results = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, batch=B, tokens=T, heads=H,
                   kv_heads=Hkv, dk=dk, dv=dv, masks={})
    variants = {"inductor default": None, "hymba (FLEX_KERNEL_OPTIONS)": flex.kernel_options(q, v)}
    if variants["hymba (FLEX_KERNEL_OPTIONS)"] is None:
        del variants["hymba (FLEX_KERNEL_OPTIONS)"]  # none tuned for this GPU
    if args.autotune:
        variants["max-autotune"] = "autotune"
    for kind, window in (("global", None), ("window", c.sliding_window)):
        block_mask = flex._plain_block_mask(T, window, M, "cuda")
        f_flops, b_flops = attention_flops(T, window, M, B, H, dk, dv)
        rows = results["masks"][kind] = dict(forward_TFLOP=f_flops / 1e12, backward_TFLOP=b_flops / 1e12,
                                            variants={})
        for name, spec in variants.items():
            torch._dynamo.reset()
            if spec == "autotune":
                compiled = torch.compile(flex_attention, mode="max-autotune-no-cudagraphs")
                opts = None
            else:
                compiled = torch.compile(flex_attention)
                opts = spec

            def fn(q, k, v):
                return compiled(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True, kernel_options=opts)
            try:
                r = run_case(fn, q, k, v, grad)
            except Exception as e:  # options the template rejects (shared memory, divisibility)
                rows["variants"][name] = dict(error=f"{type(e).__name__}: {str(e)[:200]}")
                print(f"{kind:7s} {name:40s} failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
                continue
            r["forward_TFLOPs"] = f_flops / (r["forward_ms"] * 1e-3) / 1e12
            bwd_ms = r["forward_backward_ms"] - r["forward_ms"]
            r["backward_TFLOPs"] = b_flops / (bwd_ms * 1e-3) / 1e12
            rows["variants"][name] = r
            print(f"{kind:7s} {name:40s} fwd {r['forward_ms']:6.3f} ms ({r['forward_TFLOPs']:5.0f} TFLOP/s)  "
                  f"fwd+bwd {r['forward_backward_ms']:6.3f} ms (bwd {r['backward_TFLOPs']:5.0f} TFLOP/s)  "
                  f"first call {r['first_call_s']:.0f} s", flush=True)
    atomic_write_text(os.path.join(args.out, "flex.json"), json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
