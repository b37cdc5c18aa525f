"""Training step throughput and model FLOPs utilisation of `hymba-1.5b` at 2k context on one GPU.

One step = forward + backward + fused AdamW, bf16 autocast over fp32 master weights, batch 8 on random tokens,
smaller on out-of-memory (8, 6, 4, 2, 1: on an H100 batch 6 fits at 2k context, 74.8 GB).
Model FLOPs per step count the matmuls (6 x parameters x tokens; the layers
see the 128 meta tokens too, the LM head only the text) and the attention scores and values over the keys
each query really sees (causal in global layers, window + meta elsewhere), times 3 for forward + backward;
the scan, norms and elementwise work are not counted (they are bandwidth, not FLOPs). MFU is against the
H100 SXM dense bf16 peak (989 TFLOP/s) and, in brackets, against the matmul rate measured in the same run.

    python benchmarks/bench_train.py [--out benchmarks/results] [--modes eager,compiled]

The scan runs with the library's launch choices; the time segments its heuristics pick for the forward and
the backward are reported (bench_scan.py times the scan's alternatives on their own).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from hymba import HymbaConfig, HymbaForCausalLM  # noqa: E402
from hymba.modeling import compile_layers  # noqa: E402
from hymba.ops.scan.triton import launch  # noqa: E402
from hymba.utils import atomic_write_text  # noqa: E402
from bench_e2e import cuda_time, free_memory  # noqa: E402  (scripts in this folder share these helpers)

PEAK_BF16 = 989.4e12  # H100 SXM, dense


def matmul_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):
        a @ b
    return 2 * 8192**3 / cuda_time(lambda: a @ b, 10)  # cuda_time warms up once more


def visible_keys(T: int, window: int | None, M: int) -> int:
    """Sum over queries 0..T-1 of the keys each sees (meta + text index space)."""
    q = torch.arange(T, dtype=torch.float64)
    if window is None:
        return int((q + 1).sum())
    in_window = torch.minimum(q + 1, torch.tensor(window + 1.0))
    meta_outside = torch.clamp(torch.minimum(q - window, torch.tensor(float(M))), min=0)
    return int((in_window + meta_outside).sum())


def model_flops(config: HymbaConfig, batch: int, text_len: int) -> dict:
    c = config
    T = c.num_memory_tokens + text_len
    layer_params, head_params = 0, c.vocab_size * c.hidden_size
    model = HymbaForCausalLM(c, init=False).to("meta")
    for name, p in model.named_parameters():
        if p.dim() == 2 and "embed_tokens" not in name and "lm_head" not in name and "A_log" not in name:
            layer_params += p.numel()
    matmul = 6 * (layer_params * batch * T + head_params * batch * text_len)
    attn = 0
    for i in range(c.num_hidden_layers):
        keys = visible_keys(T, None if c.is_global(i) else c.sliding_window, c.num_memory_tokens)
        attn += 2 * c.num_attention_heads * (c.head_dim + c.v_head_dim) * keys * batch
    return dict(matmul=matmul, attention=3 * attn, total=matmul + 3 * attn)


def training_step(config, batch, text_len, compiled: bool):
    """(model, one optimizer step as a function returning the loss, the token ids) on random tokens."""
    torch.manual_seed(0)
    torch._dynamo.reset()  # a batch halved after out-of-memory compiles for its own static shapes
    with torch.device("cuda"):
        model = HymbaForCausalLM(config)
    if compiled:
        compile_layers(model)  # (picks kernels without graph breaks: our conv rather than fla-core's)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, config.vocab_size, (batch, text_len), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, labels=ids, return_logits=False).loss  # as the trainer: no [B, L, V] logits
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return model, step, ids


def train_steps(config, batch, text_len, compiled: bool, steps: int):
    free_memory()  # the peak below is this run's
    model, step, ids = training_step(config, batch, text_len, compiled)
    t = time.time()
    step()
    step()
    torch.cuda.synchronize()
    warm = time.time() - t
    losses = []
    sec = cuda_time(lambda: losses.append(step()), steps)
    loss = losses[-1]
    out = dict(step_s=sec, warmup_s=warm, loss=loss.item(), peak_memory_GB=torch.cuda.max_memory_allocated() / 1e9,
               kernels=model.model.kernels_for(ids.device).name)
    return out


def scan_segments(batch: int, L: int, d: int, N: int, device: torch.device) -> dict:
    """The time segments the scan's launch heuristics pick for a training step's forward and backward."""
    n_chunks = -(-L // launch.CHUNK)
    fwd = launch._lanes_for(dict(launch.FWD_CONFIG, **launch._forward_split(batch, d, device)), N)
    bwd = launch._lanes_for(dict(launch.BWD_CONFIG), N)
    return dict(forward=launch._fwd_segments(batch, d, n_chunks, device, fwd),
                backward=launch._bwd_segments(batch, d, n_chunks, device, bwd))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--modes", default="eager,compiled", help="eager, compiled (torch.compile per layer)")
    args = ap.parse_args()
    config = HymbaConfig.from_preset("hymba-1.5b")
    rate = matmul_rate()
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, context=args.context,
               measured_matmul_TFLOPs=rate / 1e12, peak_TFLOPs=PEAK_BF16 / 1e12, runs={})
    print(f"{res['device']}: bf16 matmul {rate / 1e12:.0f} TFLOP/s measured", flush=True)
    for mode in args.modes.split(","):
        key = mode
        batch = args.batch
        while batch >= 1:
            try:
                r = train_steps(config, batch, args.context, mode == "compiled", args.steps)
                break
            except torch.OutOfMemoryError:
                smaller = batch - 2 if batch > 4 else batch // 2
                print(f"  {key} batch {batch}: out of memory, trying {smaller}", flush=True)
            # The failed attempt's tensors live as long as the exception: train_steps resets the peak
            # once they are gone. (Reset inside `except`, as before the eighth session, the peak reported
            # after an out-of-memory could be the failed attempt's: 78.8 GB at batch 6 in that session.)
            batch = smaller
        if batch < 1:
            continue
        flops = model_flops(config, batch, args.context)
        r["scan_segments"] = scan_segments(batch, args.context + config.num_memory_tokens, config.d_inner,
                                           config.mamba_d_state, torch.device("cuda"))
        r.update(scan_backward=dict(launch.BWD_CONFIG), batch=batch,
                 tokens_per_s=batch * args.context / r["step_s"], flops=flops,
                 mfu=flops["total"] / r["step_s"] / PEAK_BF16, mfu_vs_measured=flops["total"] / r["step_s"] / rate)
        res["runs"][key] = r
        print(f"{key:<9} batch {batch}: {r['step_s'] * 1e3:.0f} ms/step, {r['tokens_per_s']:.0f} tok/s, "
              f"MFU {r['mfu']:.1%} ({r['mfu_vs_measured']:.1%} of measured matmul), "
              f"peak {r['peak_memory_GB']:.1f} GB, scan segments {r['scan_segments']['forward']} "
              f"(backward {r['scan_segments']['backward']}), "
              f"warm-up {r['warmup_s']:.0f} s", flush=True)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    atomic_write_text(os.path.join(args.out, "train.json"), json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
