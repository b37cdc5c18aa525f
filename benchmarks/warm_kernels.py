"""Compile the Triton kernel variants the benchmarks launch, side by side in separate processes.

A fresh GPU machine compiles every Triton kernel on its first launch, one after the other inside a process;
the scan backward alone takes ~40 s per variant, a compiled layer graph ~2 minutes. Run first, this script fills Triton's on-disk cache
(`TRITON_CACHE_DIR`, default ~/.triton/cache) from several processes at once, so the benchmarks that follow
find their kernels there. Each job launches its kernels at the shapes and layouts the benchmarks use (Triton
specialises on pointer alignment and stride divisibility, so a 3-layer model stands in for the whole one);
nothing is timed. Jobs that fail are reported; the exit status is 1 if any did.

    python benchmarks/warm_kernels.py [--jobs scan,model,decode] [--processes 8]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.dirname(__file__))


SCAN_SHAPES = {  # name: (batch, L, d, N, with gradients), the few-rows shapes the model runs the scan at
    "training 4x2176": (4, 2176, 3200, 16, True),
    "prefill 1x8320": (1, 8320, 3200, 16, False),
}


def scan_job(shape: str):
    """One call of the scan at a SCAN_SHAPES shape, with the library's launch choices."""
    import torch

    from bench_scan import inputs
    from hymba.ops.scan.triton import selective_scan_triton

    batch, L, d, N, grad = SCAN_SHAPES[shape]
    x = inputs(batch, L, d, N, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        y, _ = selective_scan_triton(**x)
    if grad:
        y.float().sum().backward()


def variant_job(kind: str, index: int):
    """One launch configuration of bench_scan's FWD_VARIANTS / BWD_VARIANTS at its default shape."""
    import torch

    from bench_scan import BWD_VARIANTS, FWD_VARIANTS, SHAPE, inputs
    from hymba.ops.scan.triton import launch, scan_bwd, scan_fwd

    x = inputs(*SHAPE)
    if kind == "forward":
        scan_fwd(**x, config=dict(launch.FWD_CONFIG, **FWD_VARIANTS[index]))
        return
    y, _, ckpt = scan_fwd(**x, save_states=True)
    args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    scan_bwd(*args, True, ckpt, torch.ones_like(y), config=BWD_VARIANTS[index])
    torch.cuda.synchronize()


def model_job(kind: str):
    """A 3-layer model of hymba-1.5b's widths: a bf16-autocast training step (kind="train", what bench_train
    runs) or a prefill and a few decode steps in bf16 (kind="decode", what bench_e2e and check_gpu run)."""
    import torch

    from hymba import HymbaConfig, HymbaForCausalLM

    config = HymbaConfig.from_preset("hymba-1.5b", num_hidden_layers=3, global_attn_idx=[0],
                                     kv_reuse_group=[[1, 2]])
    with torch.device("cuda"):
        model = HymbaForCausalLM(config)
    ids = torch.randint(0, config.vocab_size, (1, 2048), device="cuda")
    if kind == "train":
        model.set_kernels("triton-conv")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, labels=ids, return_logits=False).loss
        loss.backward()
    else:
        from hymba.engine.generate import generate

        model = model.to(torch.bfloat16).eval()
        model.set_kernels("triton-conv")
        generate(model, ids[:, :300].repeat(2, 1), max_new_tokens=20, cuda_graph=False)


def _variant_jobs():
    from bench_scan import BWD_VARIANTS, FWD_VARIANTS

    return ([(variant_job, ("forward", i)) for i in range(len(FWD_VARIANTS))]
            + [(variant_job, ("backward", i)) for i in range(len(BWD_VARIANTS))])


JOBS = {
    "scan": [(scan_job, ("training 4x2176",)), (scan_job, ("prefill 1x8320",))],
    "model": [(model_job, ("train",))],
    "decode": [(model_job, ("decode",))],
    "variants": _variant_jobs(),
}


def _run(job):
    fn, args = job
    t = time.time()
    try:
        fn(*args)
        return f"ok   {fn.__name__}{args} in {time.time() - t:.0f} s", True
    except Exception:
        return f"FAIL {fn.__name__}{args} after {time.time() - t:.0f} s\n{traceback.format_exc()}", False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", default="scan,model,decode", help=f"comma list of: {', '.join(JOBS)}")
    ap.add_argument("--processes", type=int, default=8)
    args = ap.parse_args()
    jobs = [j for name in args.jobs.split(",") for j in JOBS[name]]
    t = time.time()
    with mp.get_context("spawn").Pool(min(args.processes, len(jobs))) as pool:
        results = pool.map(_run, jobs, chunksize=1)
    for line, _ in results:
        print(line, flush=True)
    print(f"warm_kernels: {len(jobs)} jobs in {time.time() - t:.0f} s "
          f"(cache: {os.environ.get('TRITON_CACHE_DIR', '~/.triton/cache')})", flush=True)
    sys.exit(0 if all(ok for _, ok in results) else 1)


if __name__ == "__main__":
    main()
