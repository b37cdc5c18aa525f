"""The selective scan kernels at batch 8, d_inner 3200, L 4096, N 16 (u, delta, z, B, C in bf16 as the model
feeds them; A, D, delta bias fp32), launched with the library's choices: the forward, the forward saving the
checkpoints the backward needs, and forward + backward (what training runs).

Compared with the copy-bandwidth floor (every input read once and y written once, `scan_bytes`, over the copy
bandwidth measured in the same run; targets: the forward at 60% of it, forward + backward within 3x of the
forward's floor) and with the torch reference (the chunked scan, same inputs; target: 30x faster).
"""

from __future__ import annotations

import torch

from ..common import Ctx, copy_bandwidth, metric, time_ms

NAME = "scan"
SUITE = "gpu"
DESCRIPTION = "selective scan forward and forward+backward (8x4096x3200x16 bf16) vs the bandwidth floor and torch"
DEFAULT = True
EST_S = 45
WARM_S = 60  # seconds of its warm-up job (the parallel phase starts the longest first)
SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def inputs(batch, L, d, N, device, dtype=torch.bfloat16, requires_grad=False) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=device, generator=g)  # noqa: E731
    x = dict(u=r(batch, L, d).to(dtype), delta=(r(batch, L, d) * 0.5 - 3).to(dtype), A=-torch.exp(r(d, N) * 0.3),
             B=r(batch, L, N).to(dtype), C=r(batch, L, N).to(dtype), D=r(d), z=r(batch, L, d).to(dtype),
             delta_bias=r(d) * 0.3)
    for v in x.values():
        v.requires_grad_(requires_grad)
    return x


def run(ctx: Ctx) -> dict:
    from hymba.ops.scan import selective_scan_chunked
    from hymba.ops.scan.triton import launch, scan_bwd, scan_bytes, scan_fwd

    shape = ctx.param("shape", [1, 64, 16, 4] if ctx.smoke else [8, 4096, 3200, 16])
    reps = ctx.param("reps", 2 if ctx.smoke else 20)
    batch, L, d, N = shape
    dev = ctx.device
    x = inputs(batch, L, d, N, dev)
    dy = torch.randn(batch, L, d, device=dev, dtype=torch.bfloat16)
    args = [x[k] for k in SCAN_ARGS]

    def forward():
        return scan_fwd(**x, save_states=False)

    def forward_saving():
        return scan_fwd(**x, save_states=True)

    def forward_backward():  # the forward saving its checkpoints, then the backward
        _, _, ckpt = scan_fwd(**x, save_states=True)
        return scan_bwd(*args, True, ckpt, dy)
    if ctx.warm:
        forward(), forward_backward()
        return {}
    t = {name: time_ms(fn, dev, warmup=3 if not ctx.smoke else 1, reps=reps)
         for name, fn in (("forward", forward), ("forward_saving_states", forward_saving),
                          ("forward_backward", forward_backward))}
    # the torch reference: at the full batch if it fits, else one row, scaled
    ref = {}
    for mode in ("forward", "forward_backward"):
        for b in (batch, 1):
            try:
                xr = inputs(b, L, d, N, dev, requires_grad=mode != "forward")

                def reference():
                    y, _ = selective_scan_chunked(**xr)
                    if mode != "forward":
                        y.backward(dy[:b])
                with torch.set_grad_enabled(mode != "forward"):
                    r = time_ms(reference, dev, warmup=1, reps=1 if ctx.smoke else 3)
                ref[mode] = dict(ms=r["median_ms"] * batch / b, measured_batch=b)
                break
            except torch.OutOfMemoryError:
                xr = None
                torch.cuda.empty_cache()
    bw = copy_bandwidth(dev, small=ctx.smoke)
    floor_bytes = scan_bytes(batch, L, d, N, torch.bfloat16)
    floor_ms = floor_bytes / bw * 1e3
    fwd, fb = t["forward"]["median_ms"], t["forward_backward"]["median_ms"]
    return dict(
        params=dict(batch=batch, L=L, d_inner=d, N=N, dtype="bfloat16", forward_launch=dict(launch.FWD_CONFIG),
                    backward_launch=dict(launch.BWD_CONFIG), reps=reps),
        metrics=[
            metric("forward", fwd, "ms", headline=True,
                   compare=f"floor {floor_ms:.3f} ms ({floor_bytes / 1e9:.2f} GB at {bw / 1e12:.2f} TB/s): "
                           f"{floor_ms / fwd:.1%} of it (target 60%); torch {ref['forward']['ms'] / fwd:.0f}x slower",
                   floor_ms=floor_ms, target_of_floor=0.6, torch_ms=ref["forward"]["ms"]),
            metric("forward + backward", fb, "ms", headline=True,
                   compare=f"{fb / floor_ms:.1f}x the forward's floor (target 3x); torch "
                           f"{ref['forward_backward']['ms'] / fb:.0f}x slower (target 30x)",
                   floor_ms=floor_ms, target_x_floor=3, torch_ms=ref["forward_backward"]["ms"], target_speedup=30),
            metric("forward saving states", t["forward_saving_states"]["median_ms"], "ms"),
            metric("forward, share of the floor", floor_ms / fwd * 100, "%"),
            metric("torch reference forward", ref["forward"]["ms"], "ms"),
            metric("torch reference forward + backward", ref["forward_backward"]["ms"], "ms")],
        details=dict(timings=t, reference=ref, copy_bandwidth_TBps=bw / 1e12, floor_bytes=floor_bytes))
