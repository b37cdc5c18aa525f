"""The SSM branch's two small projections at a hymba-1.5b training step's shape, as they are and padded.

x_proj maps the 3200 conv channels to dt_rank + 2N = 132 features, and dt_proj maps dt_rank = 100 back to 3200.
Neither width is a multiple of 8 elements (16 bytes in bf16), and the profile of a compiled training step
(results/profile_train_compiled.json) shows their six GEMMs (forward, input and weight gradients) in cuBLAS's
sm_80 fallback kernels ("align2"), ~11 ms a step for ~3 ms of bytes. This times each projection's forward
and forward + backward with the width as is and zero-padded (x_proj: extra output rows; dt_proj: extra input
columns), the padding included in the timed work, to see whether padding is worth it.

    python benchmarks/bench_ssm_proj.py [--out benchmarks/results] [--batch 4] [--context 2048]

Writes ssm_proj.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from bench_scan import bench  # noqa: E402
from hymba import HymbaConfig  # noqa: E402
from hymba.utils import atomic_write_text  # noqa: E402


def x_proj_case(rows: int, d_inner: int, out: int, padded: int):
    """fn() -> output [rows, out] (a view of [rows, padded] when padded), and its backward."""
    x = torch.randn(rows, d_inner, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(out, d_inner, device="cuda", dtype=torch.bfloat16) * 0.02).requires_grad_()
    grad = torch.randn(rows, out, device="cuda", dtype=torch.bfloat16)

    def fn():
        wp = F.pad(w, (0, 0, 0, padded - out)) if padded > out else w
        return F.linear(x, wp)[:, :out]
    return fn, (x, w), grad


def dt_proj_case(rows: int, d_inner: int, rank: int, padded: int):
    dt = torch.randn(rows, rank, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(d_inner, rank, device="cuda", dtype=torch.bfloat16) * 0.1).requires_grad_()
    grad = torch.randn(rows, d_inner, device="cuda", dtype=torch.bfloat16)

    def fn():
        if padded > rank:
            return F.linear(F.pad(dt, (0, padded - rank)), F.pad(w, (0, padded - rank)))
        return F.linear(dt, w)
    return fn, (dt, w), grad


def time_case(fn, leaves, grad) -> dict:
    with torch.no_grad():
        fwd = bench(fn)

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        fn().backward(grad)
    return dict(forward_ms=fwd, forward_backward_ms=bench(fwd_bwd))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--context", type=int, default=2048)
    args = ap.parse_args()
    c = HymbaConfig.from_preset("hymba-1.5b")
    rows = args.batch * (args.context + c.num_memory_tokens)
    d_inner, rank, n = c.d_inner, c.mamba_dt_rank, c.mamba_d_state
    width = rank + 2 * n
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows, d_inner=d_inner,
               x_proj={}, dt_proj={})
    for padded in (width, -(-width // 8) * 8, -(-width // 16) * 16, -(-width // 64) * 64):
        r = res["x_proj"][str(padded)] = time_case(*x_proj_case(rows, d_inner, width, padded))
        print(f"x_proj  {d_inner}->{width} padded to {padded:4d}: forward {r['forward_ms']:.3f} ms, "
              f"forward+backward {r['forward_backward_ms']:.3f} ms", flush=True)
    for padded in (rank, -(-rank // 8) * 8, -(-rank // 16) * 16, -(-rank // 64) * 64):
        r = res["dt_proj"][str(padded)] = time_case(*dt_proj_case(rows, d_inner, rank, padded))
        print(f"dt_proj {rank}->{d_inner} padded to {padded:4d}: forward {r['forward_ms']:.3f} ms, "
              f"forward+backward {r['forward_backward_ms']:.3f} ms", flush=True)
    atomic_write_text(os.path.join(args.out, "ssm_proj.json"), json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
