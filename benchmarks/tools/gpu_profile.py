"""Where the GPU time goes, kernel by kernel and by kind of work (torch.profiler), for hymba-1.5b with random
bf16 weights; a diagnostic beside the benchmarks, not one of them (needs a GPU).

    python -m benchmarks.tools.gpu_profile decode [--batch 128] [--context 8192] [--compile]
    python -m benchmarks.tools.gpu_profile prefill [--shapes 1x8192,8x2048] [--compiled]
    python -m benchmarks.tools.gpu_profile train [--batch 4] [--context 2048] [--compiled]

decode: one step of the CUDA-graph decoder over a cache filled directly with random K/V and states (a step
reads the whole cache whatever it holds), launched eagerly under the profiler, next to the graph's step time
(the difference is the gaps between kernels). prefill: a prefill through the cache, as generate runs it.
train: one optimizer step, as benchmarks.gpu.train runs it. --json FILE writes the figures.
"""

from __future__ import annotations

import argparse
import json
import re

import torch

from ..common import Ctx, build_model, model_config, random_ids, time_ms

# kind of work -> kernel-name pattern (first match wins)
KINDS = [
    ("selective scan", r"_scan_|_stitch_kernel"),
    ("causal conv", r"conv"),
    ("attention", r"flex|attention|fmha|flash"),
    ("matmul", r"gemm|cutlass|xmma|nvjet|sm90_|sm100_|cublas|matmul"),
    ("optimizer", r"adam|multi_tensor"),
    ("fused by inductor", r"^triton_"),
    ("eager elementwise / reductions", r"elementwise|reduce|vectorized|unrolled|copy|fill|index|gather|scatter|cat"),
]


def profiled(fn, runs: int) -> dict:
    """GPU milliseconds and launches per run of `fn`, by kind of work and by kernel name."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    kernels: dict[str, list] = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels.setdefault(ev.name, [0.0, 0.0])
            k[0] += ev.device_time / runs / 1e3
            k[1] += 1 / runs
    kinds: dict[str, list] = {}
    for name, (ms, n) in kernels.items():
        kind = next((k for k, p in KINDS if re.search(p, name, re.IGNORECASE)), "other")
        kinds.setdefault(kind, [0.0, 0.0])
        kinds[kind][0] += ms
        kinds[kind][1] += n
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])
    return dict(kernel_ms=sum(v[0] for v in kernels.values()), launches=sum(v[1] for v in kernels.values()),
                kinds={k: dict(ms=v[0], calls=v[1]) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1][0])},
                top=[dict(kernel=n, ms=v[0], calls=v[1]) for n, v in top[:60]])


def show(label: str, wall_ms: float, r: dict, top: int = 25) -> None:
    print(f"\n{label}: {wall_ms:.2f} ms; kernel time {r['kernel_ms']:.2f} ms in {r['launches']:.0f} launches")
    for kind, k in r["kinds"].items():
        print(f"{k['ms']:9.2f} ms {k['ms'] / r['kernel_ms']:6.1%} {k['calls']:7.0f}  {kind}")
    print()
    for row in r["top"][:top]:
        print(f"{row['ms']:9.3f} ms {row['ms'] / r['kernel_ms']:6.1%} {row['calls']:7.0f}  {row['kernel'][:100]}")


def fill_cache(cache, context: int) -> None:
    """Make a static cache look as if `context` text tokens had been processed (random K/V and states)."""
    M, end = cache.num_meta, cache.num_meta + context
    for i in cache.k:
        cache.k[i][:, :, M:].normal_().mul_(0.5)
        cache.v[i][:, :, M:].normal_().mul_(0.5)
    for s in cache.conv_state + cache.ssm_state:
        s.normal_().mul_(0.1)
    index = torch.arange(M, end, device=cache.length_t.device, dtype=torch.int32)
    if True in cache.slot_positions:
        cache.slot_positions[True][:, M:end] = index
    if False in cache.slot_positions:
        kept = index[-cache.ring:]
        cache.slot_positions[False][:, cache._slots(kept.long())] = kept
    cache.length = end
    cache.length_t.fill_(end)
    cache.next_position.fill_(end)


@torch.no_grad()
def decode(ctx: Ctx, args) -> dict:
    from hymba.engine.cuda_graph import CUDAGraphDecoder

    model = build_model(ctx, model_config(ctx))
    dec = CUDAGraphDecoder(model, args.batch, args.context + 64, compile=args.compile)
    fill_cache(dec.cache, args.context)
    tok = random_ids(model.config.vocab_size, (args.batch,), ctx.device)
    graph_ms = time_ms(lambda: dec.step(tok), ctx.device, warmup=2, reps=20)["median_ms"]
    dec.cache.length -= 22  # the replays advanced the host-side length

    def eager():  # the step the graph replays, launched kernel by kernel
        dec._ids.copy_(tok[:, None])
        return dec._forward_step()
    eager(), eager()
    r = profiled(eager, 3)
    show(f"decode step, batch {args.batch}, {args.context} context (graph step time)", graph_ms, r)
    return dict(graph_step_ms=graph_ms, **r)


def prefill(ctx: Ctx, args) -> dict:
    from hymba.engine import new_cache
    from hymba.modeling import compile_layers

    model = build_model(ctx, model_config(ctx))
    if args.compiled:
        compile_layers(model)
    out = {}
    for shape in args.shapes.split(","):
        batch, length = (int(v) for v in shape.split("x"))
        ids = random_ids(model.config.vocab_size, (batch, length), ctx.device)

        @torch.no_grad()
        def run():
            model(ids, cache=new_cache(model, batch, length), logits_to_keep=1)
        ms = time_ms(run, ctx.device, warmup=2, reps=3)["median_ms"]
        out[shape] = dict(ms=ms, tokens_per_s=batch * length / ms * 1e3, **profiled(run, 2))
        show(f"prefill {shape} ({out[shape]['tokens_per_s']:,.0f} tok/s)", ms, out[shape])
    return out


def train(ctx: Ctx, args) -> dict:
    from ..gpu.train import training_step

    step = training_step(ctx, model_config(ctx), args.batch, args.context, args.compiled)
    ms = time_ms(step, ctx.device, warmup=3, reps=3)["median_ms"]
    r = profiled(step, 2)
    show(f"training step, batch {args.batch} x {args.context}", ms, r)
    return dict(step_ms=ms, **r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["decode", "prefill", "train"])
    ap.add_argument("--batch", type=int, default=None, help="decode: 128; train: 4")
    ap.add_argument("--context", type=int, default=None, help="decode: 8192; train: 2048")
    ap.add_argument("--shapes", default="1x8192,8x2048", help="prefill: BATCHxLENGTH,...")
    ap.add_argument("--compile", action="store_true", help="decode: the step through torch.compile")
    ap.add_argument("--compiled", action="store_true", help="prefill, train: decoder layers compiled")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile needs a CUDA GPU")
    args.batch = args.batch or (128 if args.what == "decode" else 4)
    args.context = args.context or (8192 if args.what == "decode" else 2048)
    ctx = Ctx("profile", "gpu")
    r = dict(decode=decode, prefill=prefill, train=train)[args.what](ctx, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), args=vars(args), **r), f, indent=1)


if __name__ == "__main__":
    main()
