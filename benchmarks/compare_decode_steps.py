"""The batch-128, 8k-context decode step of hymba-1.5b launched three ways, in one process and in an order
that can be chosen: eager (kernel by kernel from Python), a CUDA graph of the eager step, and a CUDA graph
of the step compiled by torch.compile (`CUDAGraphDecoder(compile=True)`).

Written because bench_e2e.py once measured the compiled step's graph at the plain graph's 12.4 ms while two
other runs, this script's first among them, measured 9.9 ms (results/decode_compile_probe.log). `--prefill`
first runs an 8k prefill as bench_e2e.py does (FlexAttention compiled, the scan segmented), the one thing
that run did differently.

    python benchmarks/compare_decode_steps.py [--order eager,graph,compiled,eager,compiled,graph] [--prefill]
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from bench_e2e import (build_hymba, cuda_time, decode_parser, fill_hymba_cache, free_memory,  # noqa: E402
                       hymba_prefill)


def graph_step(model, batch, context, compile: bool, tok) -> dict:
    from hymba.engine.cuda_graph import CUDAGraphDecoder

    free_memory()
    t = time.time()
    dec = CUDAGraphDecoder(model, batch, context + 64, compile=compile)
    setup = time.time() - t
    fill_hymba_cache(dec.cache, context)
    s = cuda_time(lambda: dec.step(tok), 20)
    dec.cache.length -= 21  # the replays advanced the host-side length
    launched = cuda_time(lambda: dec._forward_step(), 5)  # the same step without the graph
    return dict(graph_ms=s * 1e3, tokens_per_s=len(tok) / s, launched_ms=launched * 1e3, setup_s=setup)


def eager_step(model, batch, context, tok) -> dict:
    from hymba.engine.cuda_graph import StaticHybridCache

    free_memory()
    cache = StaticHybridCache(model.config, batch, context + 64, device="cuda", dtype=model.dtype)
    fill_hymba_cache(cache, context)
    s = cuda_time(lambda: model(tok[:, None], cache=cache, logits_to_keep=1), 5)
    return dict(launched_ms=s * 1e3, tokens_per_s=len(tok) / s)


@torch.no_grad()
def main():
    ap = decode_parser(__doc__)
    ap.add_argument("--order", default="eager,graph,compiled,eager,compiled,graph")
    ap.add_argument("--prefill", action="store_true", help="an 8k batch-1 prefill first, as bench_e2e.py runs")
    args = ap.parse_args()
    from torch._dynamo.utils import counters

    model = build_hymba("triton-conv")
    tok = torch.randint(0, model.config.vocab_size, (args.batch,), device="cuda")
    runs = []
    if args.prefill:
        runs.append(dict(mode="prefill", **hymba_prefill(model, args.context)))
    for mode in args.order.split(","):
        if mode == "eager":
            r = eager_step(model, args.batch, args.context, tok)
        elif mode in ("graph", "compiled"):
            r = graph_step(model, args.batch, args.context, mode == "compiled", tok)
        else:
            raise SystemExit(f"unknown mode {mode!r} in --order (eager, graph, compiled)")
        r.update(mode=mode, compiled_frames=counters["frames"].get("ok", 0),
                 graphs=counters["stats"].get("unique_graphs", 0))
        runs.append(r)
        print(json.dumps(r), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "compare_decode_steps.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), batch=args.batch, context=args.context,
                       prefill_first=args.prefill, runs=runs), f, indent=1)


if __name__ == "__main__":
    main()
