"""Selective scan micro-benchmark against the memory floor and the torch reference.

Shape of the issue: batch 8, d_inner 3200, L 4096, N 16; u, delta, z, B, C in bf16 (what the model feeds
the kernel), A, D, delta bias fp32. The floor is the bytes each input is read once plus y written once,
over the device-to-device copy bandwidth measured in the same run (bytes read + written). Forward+backward
is compared with the same forward floor (the issue's target: within 3x).

    python benchmarks/bench_scan.py [--out benchmarks/results] [--quick]
    python benchmarks/bench_scan.py --fwd-segments # the forward in time segments side by side, few rows
    python benchmarks/bench_scan.py --bwd-segments # the backward in time segments side by side, few rows
    python benchmarks/bench_scan.py --model-layout # the forward on a training step's strided inputs
    python benchmarks/bench_scan.py --conv         # only the causal conv (conv.json)

Launch configurations and segment counts are passed to scan_fwd / scan_bwd explicitly (`config=`,
`segments=`), next to what the launch heuristics pick.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from hymba.ops.scan import selective_scan_chunked  # noqa: E402
from hymba.ops.scan.triton import launch, op, scan_bwd, scan_bytes, scan_fwd  # noqa: E402
from hymba.utils import atomic_write_text  # noqa: E402


def bench(fn, rep_ms=200) -> float:
    """Median milliseconds (CUDA events, L2 flushed between runs by triton's do_bench)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=rep_ms, return_mode="median")


def copy_bandwidth() -> float:
    """Bytes read + written per second of a large device-to-device copy."""
    a = torch.randn(256 * 2**20, device="cuda", dtype=torch.float32)  # 1 GiB
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a))
    return 2 * a.nbytes / (ms * 1e-3)


def inputs(batch, L, d, N, dtype=torch.bfloat16, requires_grad=False):
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    x = dict(u=r(batch, L, d).to(dtype), delta=(r(batch, L, d) * 0.5 - 3).to(dtype),
             A=-torch.exp(r(d, N) * 0.3), B=r(batch, L, N).to(dtype), C=r(batch, L, N).to(dtype),
             D=r(d), z=r(batch, L, d).to(dtype), delta_bias=r(d) * 0.3)
    if requires_grad:
        for v in x.values():
            v.requires_grad_(True)
    return x


def bench_conv(batch, L, d, bw) -> dict:
    """The causal conv beside it (same activation shape, K=4, silu): ours, fla-core's, torch's."""
    from hymba.ops.conv import causal_conv1d_ref
    from hymba.ops.conv.triton_conv import causal_conv1d_triton, fla_causal_conv1d

    impls = {"triton (ours)": causal_conv1d_triton, "torch reference": causal_conv1d_ref}
    if os.environ.get("BENCH_FLA") == "1":  # fla-core autotunes ~20 configurations per call signature first
        impls["fla-core"] = fla_causal_conv1d()
    x = torch.randn(batch, L, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(d, 4, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)
    floor_ms = 2 * x.nbytes / bw * 1e3
    out = dict(floor_ms=floor_ms)
    for name, fn in impls.items():
        with torch.no_grad():
            fwd = bench(lambda: fn(x, w, b, None, "silu"))

        def fb():
            x.grad = w.grad = b.grad = None
            fn(x, w, b, None, "silu")[0].backward(dy)
        fwd_bwd = bench(fb)
        out[name] = dict(forward_ms=fwd, forward_backward_ms=fwd_bwd)
        print(f"conv {batch}x{L}x{d} {name:<16} fwd {fwd:7.3f} ms ({floor_ms / fwd:5.1%} of floor)  fwd+bwd {fwd_bwd:7.3f} ms",
              flush=True)
    return out


SHAPE = (8, 4096, 3200, 16)  # the issue's: batch, L, d_inner, N

# Launch configurations timed beside the defaults (warm_kernels.py compiles them ahead, in parallel).
FWD_VARIANTS = [launch.FWD_SPLIT]  # each channel's states over two lanes (what few rows run)
BWD_VARIANTS = [dict(BD=32, S=1)]  # one lane per channel (the default backward splits over two)


def count_sweep(label: str, counts, run) -> tuple[dict, dict]:
    """`run(k)` (the outputs with k time segments) timed for each count, and its largest relative difference
    from one pass's outputs; printed as it goes, then the fastest count. Returns (ms, max_rel_diff)."""
    one = run(1)
    ms, diff = {}, {}
    for k in counts:
        diff[k] = max(((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
                      for a, b in zip(run(k), one) if b is not None)
        ms[k] = bench(lambda: run(k))
        print(f"{label} segments {k:>2}: {ms[k]:7.3f} ms  (vs one pass: {diff[k]:.1e})", flush=True)
    return ms, diff


def report_best(label: str, ms: dict, picked: int) -> None:
    best = min(ms, key=ms.get)
    print(f"{label} best {best} segments, {ms[1] / ms[best]:.2f}x over one pass; the heuristic picks {picked} "
          f"({ms[1] / ms[picked]:.2f}x)", flush=True)


# (batch, L): training steps at batch 4 and 6, fine-tuning with few long rows, and the shape
BWD_SEGMENT_SHAPES = ((4, 2176), (6, 2176), (2, 4224), (1, 2176), (1, 8320), (8, 4096))


def bwd_segment_sweep(out_dir: str, d: int = 3200, N: int = 16, counts=(1, 2, 3, 4, 6, 8, 12)) -> dict:
    """The backward alone (scan_bwd on the forward's checkpoints) walked back in 1, 2, ... time segments side
    by side, against `_bwd_segments`' pick; the gradients of each count against one pass's."""
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, d=d, N=N, shapes={})
    for batch, L in BWD_SEGMENT_SHAPES:
        x = inputs(batch, L, d, N)
        _, _, ckpt = scan_fwd(**x, save_states=True)
        dy = torch.randn(batch, L, d, device="cuda", dtype=torch.bfloat16)
        args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
        n_chunks = -(-L // launch.CHUNK)
        picked = launch._bwd_segments(batch, d, n_chunks, torch.device("cuda"), launch.BWD_CONFIG)
        label = f"bwd {batch}x{L:<5}"
        ms, diff = count_sweep(label, sorted(set(counts) | {picked}),
                               lambda k: scan_bwd(*args, True, ckpt, dy, segments=k))
        report_best(label, ms, picked)
        res["shapes"][f"{batch}x{L}"] = dict(batch=batch, L=L, heuristic=picked, ms=ms, max_rel_diff=diff)
        x = ckpt = dy = args = None  # free the shape's tensors before the next one
        torch.cuda.empty_cache()
    atomic_write_text(os.path.join(out_dir, "scan_bwd_segments.json"), json.dumps(res, indent=1))
    return res


# (batch, L, with the training checkpoints): a batch-1 8k prefill, fine-tuning with few long rows, training
FWD_SEGMENT_SHAPES = ((1, 8320, False), (2, 8320, False), (1, 8320, True), (1, 2176, True), (2, 4224, True),
                      (4, 2176, True))


def fwd_segment_sweep(out_dir: str, d: int = 3200, N: int = 16, counts=(1, 2, 4, 6, 8, 10, 12, 16)) -> dict:
    """The forward in 1, 2, ... time segments side by side (scan_fwd's `segments`), against `_fwd_segments`'
    pick; outputs and checkpoints of each count against one pass's."""
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, d=d, N=N, shapes={})
    for batch, L, save in FWD_SEGMENT_SHAPES:
        x = inputs(batch, L, d, N)
        cfg = dict(launch.FWD_CONFIG, **launch._forward_split(batch, d, torch.device("cuda")))
        picked = launch._fwd_segments(batch, d, -(-L // launch.CHUNK), torch.device("cuda"), cfg)
        name = f"{batch}x{L} {'training' if save else 'inference'}"
        label = f"fwd {name:<20}"
        ms, diff = count_sweep(label, sorted(set(counts) | {picked}),
                               lambda k: scan_fwd(**x, save_states=save, segments=k))
        row = dict(batch=batch, L=L, save_states=save, heuristic=picked, ms=ms, max_rel_diff=diff)
        report_best(label, ms, picked)
        res["shapes"][name] = row
        x = None
        torch.cuda.empty_cache()
    atomic_write_text(os.path.join(out_dir, "scan_fwd_segments.json"), json.dumps(res, indent=1))
    return res


def model_layout(out_dir: str, batch: int = 4, text_len: int = 2048) -> dict:
    """The forward kernel on the very tensors a hymba-1.5b training step hands it (bf16 autocast: strided
    views of the projections) against contiguous copies of them, one input at a time."""
    from hymba import HymbaConfig, HymbaForCausalLM

    config = HymbaConfig.from_preset("hymba-1.5b", num_hidden_layers=1, global_attn_idx=[0], kv_reuse_group=[])
    with torch.device("cuda"):
        model = HymbaForCausalLM(config)
    model.set_kernels("triton-conv")
    captured = {}
    original = op._scan_fwd_op

    def capture(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, save_states):
        captured.update(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
        return original(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, save_states)
    op._scan_fwd_op = capture  # what selective_scan_triton calls
    try:
        ids = torch.randint(0, config.vocab_size, (batch, text_len), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(ids, labels=ids).loss.backward()
    finally:
        op._scan_fwd_op = original
    x = {k: v.detach() for k, v in captured.items()}
    res = dict(device=torch.cuda.get_device_name(), shape=list(x["u"].shape),
               layout={k: dict(dtype=str(v.dtype), stride=list(v.stride()), offset=v.storage_offset())
                       for k, v in x.items()}, forward_ms={})
    print("scan inputs in a training step:", {k: (str(v.dtype)[6:], tuple(v.stride())) for k, v in x.items()})
    variants = {"as the model gives them": {}}
    for name in ("u", "delta", "z", "B", "C"):
        variants[f"{name} contiguous"] = {name: x[name].contiguous()}
    variants["all contiguous"] = {k: v.contiguous() for k, v in x.items()}
    for label, swap in variants.items():
        args = {**x, **swap}
        ms = bench(lambda: scan_fwd(**args, save_states=True))
        res["forward_ms"][label] = ms
        print(f"fwd (saving states) {label:<26} {ms:8.3f} ms", flush=True)
    atomic_write_text(os.path.join(out_dir, "scan_model_layout.json"), json.dumps(res, indent=1))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--shape", default=",".join(map(str, SHAPE)), help="batch,L,d_inner,N")
    ap.add_argument("--quick", action="store_true", help="only the default launch configurations")
    ap.add_argument("--fwd-segments", action="store_true",
                    help="only the forward's time-segment sweep (scan_fwd_segments.json)")
    ap.add_argument("--bwd-segments", action="store_true",
                    help="only the backward's time-segment sweep (scan_bwd_segments.json)")
    ap.add_argument("--conv", action="store_true", help="only the causal conv, at the scan's and a training shape")
    ap.add_argument("--model-layout", action="store_true",
                    help="only the forward on a training step's own input layout (scan_model_layout.json)")
    args = ap.parse_args()
    if args.fwd_segments:
        fwd_segment_sweep(args.out)
        return
    if args.bwd_segments:
        bwd_segment_sweep(args.out)
        return
    if args.model_layout:
        model_layout(args.out)
        return
    if args.conv:
        bw = copy_bandwidth()
        res = {shape: bench_conv(*map(int, shape.split(",")), bw) for shape in ("8,4096,3200", "4,2176,3200")}
        out = dict(device=torch.cuda.get_device_name(), copy_bandwidth_TBps=bw / 1e12, shapes=res)
        atomic_write_text(os.path.join(args.out, "conv.json"), json.dumps(out, indent=1))
        return
    batch, L, d, N = map(int, args.shape.split(","))
    import triton

    dev_name = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    floor_bytes = scan_bytes(batch, L, d, N, torch.bfloat16)
    floor_ms = floor_bytes / bw * 1e3
    print(f"{dev_name}: copy bandwidth {bw / 1e12:.2f} TB/s; forward floor {floor_bytes / 1e9:.3f} GB -> "
          f"{floor_ms:.3f} ms", flush=True)
    res = dict(device=dev_name, torch=torch.__version__, triton=triton.__version__, shape=dict(batch=batch, L=L, d=d, N=N),
               dtype="bfloat16", copy_bandwidth_TBps=bw / 1e12, floor_bytes=floor_bytes, floor_ms=floor_ms,
               forward={}, forward_backward={}, reference={})

    x = inputs(batch, L, d, N)
    fwd_variants = [dict(launch.FWD_CONFIG)] + ([] if args.quick else FWD_VARIANTS)
    for cfg in fwd_variants:
        cfg = dict(launch.FWD_CONFIG, **cfg)
        key = "BD={BD} S={S} warps={num_warps} PF={PF} PB={PB}".format(**cfg)
        if key in res["forward"]:
            continue
        t = time.time()
        fn = lambda: scan_fwd(**x, save_states=False, config=cfg)  # noqa: E731
        fn()
        torch.cuda.synchronize()
        compile_s = time.time() - t
        ms = bench(fn)
        res["forward"][key] = dict(ms=ms, GBps=floor_bytes / ms / 1e6, of_copy_bw=floor_ms / ms, compile_s=compile_s)
        print(f"fwd  {key:<40} {ms:8.3f} ms  {floor_bytes / ms / 1e6:7.0f} GB/s  {floor_ms / ms:6.1%} of floor"
              f"  (compile {compile_s:.0f} s)", flush=True)
    best_fwd = min(res["forward"].values(), key=lambda r: r["ms"])["ms"]
    # forward with the checkpoints the backward needs (what training runs)
    ms = bench(lambda: scan_fwd(**x, save_states=True))
    res["forward_saving_states_ms"] = ms
    print(f"fwd  saving states (training)           {ms:8.3f} ms", flush=True)

    dy = torch.randn(batch, L, d, device="cuda", dtype=torch.bfloat16)
    scan_args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    bwd_variants = [dict(launch.BWD_CONFIG)] + ([] if args.quick else BWD_VARIANTS)
    for cfg in bwd_variants:
        cfg = dict(launch.BWD_CONFIG, **cfg)
        key = "BD={BD} S={S} warps={num_warps} PF={PF} PB={PB}".format(**cfg)
        if key in res["forward_backward"]:
            continue

        def step():  # what training runs: the forward saving its checkpoints, then the backward
            _, _, ckpt = scan_fwd(**x, save_states=True)
            return scan_bwd(*scan_args, True, ckpt, dy, config=cfg)
        try:
            t = time.time()
            step()
            torch.cuda.synchronize()
            compile_s = time.time() - t
            ms = bench(step)
        except Exception as e:  # a configuration that does not compile or run is reported, not fatal
            print(f"fwd+bwd {key}: failed: {e!r}", flush=True)
            res["forward_backward"][key] = dict(error=repr(e))
            continue
        res["forward_backward"][key] = dict(ms=ms, x_forward_floor=ms / floor_ms, compile_s=compile_s)
        print(f"fwd+bwd {key:<37} {ms:8.3f} ms  {ms / floor_ms:5.2f}x the forward floor  (compile {compile_s:.0f} s)",
              flush=True)

    # the torch reference (chunked scan), at the full shape if it fits, else one batch row scaled up
    for mode in ("forward", "forward_backward"):
        for b in (batch, 1):
            try:
                xr = inputs(b, L, d, N, requires_grad=mode != "forward")
                dyr = dy[:b]

                def ref():
                    y, _ = selective_scan_chunked(**xr)
                    if mode != "forward":
                        y.backward(dyr)
                with torch.no_grad() if mode == "forward" else torch.enable_grad():
                    ms = bench(ref, rep_ms=500) * batch / b
                res["reference"][mode] = dict(ms=ms, measured_batch=b)
                print(f"torch reference {mode:<17} {ms:9.2f} ms (batch {b}{', scaled' if b != batch else ''})",
                      flush=True)
                break
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                continue
    best_fb = min((r["ms"] for r in res["forward_backward"].values() if "ms" in r), default=float("nan"))
    res["summary"] = dict(
        forward_ms=best_fwd, forward_of_floor=floor_ms / best_fwd,
        forward_backward_ms=best_fb, forward_backward_x_floor=best_fb / floor_ms,
        speedup_vs_torch_forward=res["reference"].get("forward", {}).get("ms", float("nan")) / best_fwd,
        speedup_vs_torch_forward_backward=res["reference"].get("forward_backward", {}).get("ms", float("nan")) / best_fb)
    res["conv"] = bench_conv(batch, L, d, bw)
    print(json.dumps(res["summary"], indent=1))
    atomic_write_text(os.path.join(args.out, "scan.json"), json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
