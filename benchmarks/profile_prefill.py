"""Where the GPU time of a Hymba-1.5B prefill goes (8k tokens, batch 1, bf16, random weights, through the
cache as generation runs it), eagerly and with the decoder layers compiled (`compile_layers`).

Times the prefill, then profiles it and sums the GPU time of its kernels by kind of work (the kinds of
profile_train.py) and by name; the difference between the timed prefill and the kernel time is the gaps
between kernels (the host launching them).

    python benchmarks/profile_prefill.py [--out benchmarks/results] [--shapes 1x8192,8x2048] [--modes eager,compiled]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from bench_e2e import build_hymba, cuda_time  # noqa: E402
from profile_decode import kernel_times  # noqa: E402
from profile_train import by_kind  # noqa: E402

from hymba.engine import new_cache
from hymba.modeling import compile_layers  # noqa: E402
from hymba.utils import atomic_write_text  # noqa: E402


def prefill_fn(model, batch: int, length: int):
    ids = torch.randint(0, model.config.vocab_size, (batch, length), device="cuda")

    @torch.no_grad()
    def run():
        model(ids, cache=new_cache(model, batch, length), logits_to_keep=1)
    return run


def profile_run(run, runs: int = 2) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            run()
        torch.cuda.synchronize()
    kernels, total, count = kernel_times(prof, runs)
    return dict(kernel_ms=total / 1e3, kernels=count,
                kinds={k: dict(ms=us / 1e3, calls=n) for k, (us, n) in by_kind(kernels).items()},
                top=[dict(kernel=n, ms=us / 1e3, calls=c)
                     for n, (us, c) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:40]])


def report(label: str, r: dict, top: int) -> None:
    print(f"\n{label}: {r['ms']:.1f} ms, {r['tokens_per_s']:.0f} tok/s (first call {r['first_call_s']:.1f} s); "
          f"kernel time {r['kernel_ms']:.1f} ms in {r['kernels']:.0f} kernels")
    print(f"{'ms':>8} {'share':>6} {'calls':>6}  kind")
    for kind, k in r["kinds"].items():
        print(f"{k['ms']:8.2f} {k['ms'] / r['kernel_ms']:6.1%} {k['calls']:6.0f}  {kind}")
    print(f"{'ms':>8} {'share':>6} {'calls':>6}  kernel")
    for row in r["top"][:top]:
        print(f"{row['ms']:8.2f} {row['ms'] / r['kernel_ms']:6.1%} {row['calls']:6.0f}  {row['kernel'][:100]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--shapes", default="1x8192,8x2048", help="comma list of BATCHxLENGTH (text tokens)")
    ap.add_argument("--modes", default="eager,compiled")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    model = build_hymba("auto")
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, runs={})
    for mode in args.modes.split(","):
        if mode == "compiled":
            compile_layers(model)
        for shape in args.shapes.split(","):
            batch, length = (int(v) for v in shape.split("x"))
            run = prefill_fn(model, batch, length)
            t = time.time()
            run()
            torch.cuda.synchronize()
            first = time.time() - t
            s = cuda_time(run, 3)
            r = dict(ms=s * 1e3, tokens_per_s=batch * length / s, first_call_s=first, **profile_run(run))
            res["runs"][f"{mode} {shape}"] = r
            report(f"{mode} prefill {shape}", r, args.top)
            atomic_write_text(os.path.join(args.out, "profile_prefill.json"), json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
