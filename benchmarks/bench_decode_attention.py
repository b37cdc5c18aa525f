"""The Triton decode-attention kernel at hymba-1.5b's batch-128, 8k-context decode step, over launch
configurations (keys per iteration, warps, pipeline stages).

Decode attention is 59% of the compiled decode step (results/profile_decode_compiled.log: 5.73 ms over 32
layers, ~84% of the copy bandwidth over the bytes it reads). This times the kernel alone for the two kinds
of layer: global (the whole cache: 128 meta + 8,232 slots) and window (the ring: 128 meta + 1,024 slots), for
each launch configuration, against the bytes it must read (K and V once, the slots' positions), and prints
what a step's 3 global + 29 window layers would take with the default and with the fastest configuration.
Each configuration's output is compared with the default's.

    python benchmarks/bench_decode_attention.py [--out benchmarks/results] [--batch 128] [--context 8192]

Writes decode_attention.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from bench_scan import bench, copy_bandwidth  # noqa: E402
from hymba import HymbaConfig  # noqa: E402
from hymba.ops.attention import decode_triton  # noqa: E402
from hymba.utils import atomic_write_text  # noqa: E402

SWEEP = {"BLOCK_N": (32, 64, 128), "num_warps": (2, 4, 8), "num_stages": (2, 3, 4)}


def layer_inputs(config: HymbaConfig, batch: int, context: int, steps: int, window: int | None):
    """q, k, v, q_pos, k_pos of one layer at a decode step after `context` tokens, as the static cache lays them
    out: meta slots first, then the tokens (global), or a ring of the last `window` tokens in rotated order."""
    M, Hkv, H = config.num_memory_tokens, config.num_key_value_heads, config.num_attention_heads
    dk = config.head_dim
    dv = config.v_head_dim  # twice the key head
    pos = M + context  # the query's position
    if window is None:
        S = M + context + steps + 8  # the capacity bench_e2e.py gives the cache
        k_pos = torch.arange(S, device="cuda")
        k_pos[pos + 1:] = -1
    else:
        ring = torch.arange(pos - window + 1, pos + 1, device="cuda").roll(window // 3)  # its `window` slots
        k_pos = torch.cat([torch.arange(M, device="cuda"), ring])
        S = k_pos.numel()
    k_pos = k_pos[None].expand(batch, -1).contiguous()
    q_pos = torch.full((batch, 1), pos, device="cuda")
    q = torch.randn(batch, H, 1, dk, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, Hkv, S, dk, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(batch, Hkv, S, dv, device="cuda", dtype=torch.bfloat16)
    return q, k, v, q_pos, k_pos


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--context", type=int, default=8192)
    args = ap.parse_args()
    config = HymbaConfig.from_preset("hymba-1.5b")
    n_global = sum(config.is_global(i) for i in range(config.num_hidden_layers))
    n_window = config.num_hidden_layers - n_global
    bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e12:.2f} TB/s; default launch "
          f"{decode_triton.LAUNCH}, global layers {decode_triton.LAUNCH_GLOBAL} over it", flush=True)
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, batch=args.batch,
               context=args.context, copy_bandwidth_TBps=bw / 1e12, default=dict(decode_triton.LAUNCH),
               default_global=dict(decode_triton.LAUNCH_GLOBAL), layers={})
    scale = config.head_dim ** -0.5
    for kind, window in (("global", None), ("window", config.sliding_window)):
        q, k, v, q_pos, k_pos = layer_inputs(config, args.batch, args.context, 32, window)
        nbytes = k.nbytes + v.nbytes + k_pos.nbytes
        M = config.num_memory_tokens

        def run(launch):
            return decode_triton.decode_attention(q, k, v, q_pos, k_pos, window, M, scale, launch=launch)
        want = run(None).float()
        rows = []
        for values in itertools.product(*SWEEP.values()):
            launch = dict(zip(SWEEP, values))
            try:
                err = ((run(launch).float() - want).norm() / want.norm()).item()
                ms = bench(lambda: run(launch))
            except Exception as e:  # a configuration the GPU cannot hold (shared memory, registers)
                rows.append(dict(launch=launch, error=f"{type(e).__name__}: {str(e)[:120]}"))
                print(f"{kind:6s} {launch}: {rows[-1]['error']}", flush=True)
                continue
            rows.append(dict(launch=launch, ms=ms, GBps=nbytes / ms / 1e6, of_copy_bw=nbytes / (ms * 1e-3) / bw,
                             rel_err_vs_default=err))
            print(f"{kind:6s} BLOCK_N={launch['BLOCK_N']:3d} warps={launch['num_warps']} "
                  f"stages={launch['num_stages']}: {ms:.4f} ms, {rows[-1]['GBps']:.0f} GB/s "
                  f"({rows[-1]['of_copy_bw']:.0%} of copy), rel. diff {err:.1e}", flush=True)
        timed = [r for r in rows if "ms" in r]
        library = {**decode_triton.LAUNCH, **(decode_triton.LAUNCH_GLOBAL if window is None else {})}
        default = next(r for r in timed if r["launch"] == library)
        best = min(timed, key=lambda r: r["ms"])
        res["layers"][kind] = dict(slots=k.shape[2], bytes=nbytes, runs=rows, default_ms=default["ms"],
                                   best=best)
        print(f"{kind}: default {default['ms']:.4f} ms, fastest {best['launch']} {best['ms']:.4f} ms", flush=True)
    L = res["layers"]
    step_default = n_global * L["global"]["default_ms"] + n_window * L["window"]["default_ms"]
    step_best = n_global * L["global"]["best"]["ms"] + n_window * L["window"]["best"]["ms"]
    res.update(step_attention_default_ms=step_default, step_attention_best_ms=step_best)
    print(f"a step's attention ({n_global} global + {n_window} window layers): default {step_default:.2f} ms, "
          f"fastest per kind {step_best:.2f} ms", flush=True)
    atomic_write_text(os.path.join(args.out, "decode_attention.json"), json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
