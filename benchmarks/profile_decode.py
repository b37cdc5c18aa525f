"""Where the time of one Hymba-1.5B decode step goes (batch 128, 8k context, bf16, random weights).

Runs the step eagerly under torch.profiler and sums the GPU time of every kernel, grouped by kernel name,
then times the same step as a CUDA graph. Kernel times do not depend on how the step is launched, so the
table says what a graph replay spends its time on; the difference between the graph step and the sum of
kernel times is the gaps between kernels.

    python benchmarks/profile_decode.py [--out benchmarks/results] [--batch 128] [--context 8192] [--compile]

--compile profiles the step as torch.compile runs it (what `CUDAGraphDecoder(compile=True)` captures) and
writes profile_decode_compiled.json.
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from bench_e2e import build_hymba, cuda_time, decode_parser, fill_hymba_cache  # noqa: E402
from hymba.utils import atomic_write_text  # noqa: E402


def kernel_times(prof, steps: int) -> tuple[dict[str, list], float, float]:
    """GPU microseconds and launches per step of every kernel name in a torch.profiler trace of `steps`
    steps: ({name: [us, calls]}, total us, total calls)."""
    kernels: dict[str, list] = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels.setdefault(ev.name, [0.0, 0])
            k[0] += ev.device_time / steps
            k[1] += 1 / steps
    return kernels, sum(v[0] for v in kernels.values()), sum(v[1] for v in kernels.values())


@torch.no_grad()
def main():
    ap = decode_parser(__doc__)
    ap.add_argument("--kernels", default="triton-conv")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--compile", action="store_true", help="the step through torch.compile")
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from hymba.engine.cuda_graph import CUDAGraphDecoder

    model = build_hymba(args.kernels)
    dec = CUDAGraphDecoder(model, args.batch, args.context + 64, compile=args.compile)
    fill_hymba_cache(dec.cache, args.context)
    tok = torch.randint(0, model.config.vocab_size, (args.batch,), device="cuda")
    graph_s = cuda_time(lambda: dec.step(tok), 20)
    dec.cache.length -= 21  # the replays advanced the host-side length; the device index keeps moving (harmless)

    def eager():  # the step the graph replays, launched kernel by kernel
        dec._ids.copy_(tok[:, None])
        return dec._forward_step()

    for _ in range(2):
        eager()
    torch.cuda.synchronize()
    steps = 3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            eager()
        torch.cuda.synchronize()
    kernels, total, count = kernel_times(prof, steps)
    rows = sorted(kernels.items(), key=lambda kv: -kv[1][0])
    print(f"graph step {graph_s * 1e3:.2f} ms ({args.batch / graph_s:.0f} tok/s); kernel time {total / 1e3:.2f} ms "
          f"in {count:.0f} kernels per step")
    print(f"{'us/step':>9} {'share':>6} {'calls':>6}  kernel")
    for name, (us, n) in rows[:args.top]:
        print(f"{us:9.1f} {us / total:6.1%} {n:6.0f}  {name[:110]}")
    name = "profile_decode_compiled.json" if args.compile else "profile_decode.json"
    out = dict(device=torch.cuda.get_device_name(), batch=args.batch, context=args.context, compiled=args.compile,
               graph_step_ms=graph_s * 1e3, kernel_ms=total / 1e3, kernels_per_step=count,
               top=[dict(kernel=n, us=us, calls=c) for n, (us, c) in rows[:60]])
    atomic_write_text(os.path.join(args.out, name), json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
