"""The batch-128, 8k-context decode step of hymba-1.5b launched several ways, in one process and in an order
that can be chosen: eager (kernel by kernel from Python), a CUDA graph of the eager step, a CUDA graph of
the step compiled by torch.compile (`CUDAGraphDecoder(compile=True)`), and the same compiled with autotuned
matmuls (below), each timed by bench_e2e.py's `hymba_decode`.

Written because bench_e2e.py once measured the compiled step's graph at the plain graph's 12.4 ms while two
other runs, this script's first among them, measured 9.9 ms (results/decode_compile_probe.log). `--prefill`
first runs an 8k prefill as bench_e2e.py does (FlexAttention compiled, the scan segmented), the one thing
that run did differently. (Its next run, in the sixth session, measured 9.94 ms again: results/e2e.*.)
`autotuned`: the step compiled in mode "max-autotune-no-cudagraphs" (Triton matmul templates timed against
cuBLAS for the 128-row matmuls, which cuBLAS runs at ~1.4 TB/s of weights).

    python benchmarks/compare_decode_steps.py [--order eager,graph,compiled,autotuned,...] [--prefill]
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from bench_e2e import build_hymba, decode_parser, hymba_decode, hymba_prefill  # noqa: E402
from hymba.utils import atomic_write_text  # noqa: E402


@torch.no_grad()
def main():
    ap = decode_parser(__doc__)
    ap.add_argument("--order", default="eager,graph,compiled,eager,compiled,graph")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prefill", action="store_true", help="an 8k batch-1 prefill first, as bench_e2e.py runs")
    args = ap.parse_args()
    modes = args.order.split(",")
    compile_modes = {"eager": False, "graph": False, "compiled": True, "autotuned": "max-autotune-no-cudagraphs"}
    if not set(modes) <= set(compile_modes):
        raise SystemExit(f"--order {args.order!r}: modes are {', '.join(compile_modes)}")
    from torch._dynamo.utils import counters

    model = build_hymba("triton-conv")
    runs = []
    if args.prefill:
        runs.append(dict(mode="prefill", **hymba_prefill(model, args.context)))
    for mode in modes:
        # timed exactly as bench_e2e.py times them (each step fed the previous step's argmax)
        r = hymba_decode(model, args.batch, args.context, 8 if mode == "eager" else args.steps,
                         graph=mode != "eager", compile=compile_modes[mode])
        r.update(mode=mode, compiled_frames=counters["frames"].get("ok", 0),
                 graphs=counters["stats"].get("unique_graphs", 0))
        runs.append(r)
        print(json.dumps(r), flush=True)
    out = dict(device=torch.cuda.get_device_name(), batch=args.batch, context=args.context,
               prefill_first=args.prefill, runs=runs)
    atomic_write_text(os.path.join(args.out, "compare_decode_steps.json"), json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
