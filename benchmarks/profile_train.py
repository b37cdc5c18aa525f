"""Where the GPU time of one hymba-1.5b training step goes (2k context, bf16 autocast, AdamW; what
bench_train.py times), kernel by kernel and by kind of work.

    python benchmarks/profile_train.py [--out benchmarks/results] [--batch 4] [--mode compiled]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from bench_train import training_step  # noqa: E402
from hymba import HymbaConfig  # noqa: E402
from hymba.utils import atomic_write_text  # noqa: E402
from profile_decode import kernel_times  # noqa: E402

# kind of work -> kernel-name pattern (first match wins)
KINDS = [
    ("selective scan", r"_scan_(fwd|bwd)_kernel"),
    ("causal conv", r"conv"),
    ("attention", r"flex|attention|fmha|flash"),
    ("matmul", r"gemm|cutlass|xmma|nvjet|sm90_|sm100_|cublas|matmul"),
    ("optimizer", r"adam|multi_tensor"),
    ("fused by inductor", r"^triton_"),
    ("eager elementwise / reductions", r"elementwise|reduce|vectorized|unrolled|copy|fill|index|gather|scatter|cat"),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def by_kind(kernels: dict[str, list]) -> dict[str, list]:
    """kernel_times' {name: [us, calls]} summed by kind of work: {kind: [us, calls]}, largest first."""
    kinds: dict[str, list] = {}
    for name, (us, n) in kernels.items():
        k = kinds.setdefault(kind_of(name), [0.0, 0.0])
        k[0] += us
        k[1] += n
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1][0]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--mode", default="compiled", choices=["eager", "compiled"])
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    config = HymbaConfig.from_preset("hymba-1.5b")
    _, step, _ = training_step(config, args.batch, args.context, args.mode == "compiled")
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    steps = 2
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize()
    step_ms = start.elapsed_time(end) / steps
    kernels, total, count = kernel_times(prof, steps)
    kinds = by_kind(kernels)
    print(f"{args.mode} batch {args.batch}: step {step_ms:.1f} ms (profiled); kernel time {total / 1e3:.1f} ms in "
          f"{count:.0f} kernels")
    print(f"{'ms/step':>9} {'share':>6} {'calls':>7}  kind")
    for kind, (us, n) in kinds.items():
        print(f"{us / 1e3:9.2f} {us / total:6.1%} {n:7.0f}  {kind}")
    rows = sorted(kernels.items(), key=lambda kv: -kv[1][0])
    print(f"\n{'ms/step':>9} {'share':>6} {'calls':>7}  kernel")
    for name, (us, n) in rows[:args.top]:
        print(f"{us / 1e3:9.2f} {us / total:6.1%} {n:7.0f}  {name[:110]}")
    out = dict(device=torch.cuda.get_device_name(), mode=args.mode, batch=args.batch, context=args.context,
               step_ms=step_ms, kernel_ms=total / 1e3, kernels_per_step=count,
               kinds={k: dict(ms=us / 1e3, calls=n) for k, (us, n) in kinds.items()},
               top=[dict(kernel=n, us=us, calls=c) for n, (us, c) in rows[:60]])
    atomic_write_text(os.path.join(args.out, f"profile_train_{args.mode}.json"), json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
