"""End to end on one GPU: Hymba-1.5B against transformers' Llama-3.2-3B and -1B, in the same run.

All models get random bf16 weights (the speed of a forward does not depend on the values). Measured:

- prefill tokens/s at 8k (batch 1): Hymba through its cache (FlexAttention, Triton scan), Llama with SDPA;
- decode tokens/s at 8k context with the paper's protocol: batch 128, halved on out-of-memory. Hymba decodes
  with its model step as a CUDA graph over a static cache; Llama with transformers' StaticCache, its step
  also captured as a CUDA graph when that works (else eager, and the table says so). The context is
  written into the caches directly (random keys/values, states, positions 0..8191) instead of running
  a batch-128 prefill: a decode step reads the whole cache whatever is in it, so the timing is the same;
- peak GPU memory of each decode run and the size of its cache.

    python benchmarks/bench_e2e.py [--out benchmarks/results] [--context 8192] [--steps 32]
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
from hymba.engine import new_cache  # noqa: E402
from hymba.modeling.cache import paper_cache_bytes  # noqa: E402
from hymba.utils import atomic_write_text  # noqa: E402

# The public configs of meta-llama/Llama-3.2-{3B,1B} (config.json on the Hub), as dicts.
_LLAMA_COMMON = dict(vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                     rope_scaling=dict(factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
                                       original_max_position_embeddings=8192, rope_type="llama3"),
                     hidden_act="silu", tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
                     attention_bias=False, mlp_bias=False)
LLAMA = {
    "Llama-3.2-3B": dict(_LLAMA_COMMON, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128),
    "Llama-3.2-1B": dict(_LLAMA_COMMON, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64),
}


def cuda_time(fn, iters: int) -> float:
    """Seconds per call (CUDA events around `iters` calls, after one untimed call)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def free_memory():
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def halving(batch: int, run):
    """The paper's protocol: try `batch`, halve on out-of-memory."""
    while batch >= 1:
        try:
            return batch, run(batch)
        except torch.OutOfMemoryError as e:
            print(f"    batch {batch}: out of memory ({str(e).splitlines()[0][:80]}), halving", flush=True)
        free_memory()  # here, not in `except`: the failed attempt's tensors live as long as the exception
        batch //= 2
    raise RuntimeError("out of memory even at batch 1")


# ---- Hymba -------------------------------------------------------------------------------------------------
def fill_hymba_cache(cache, context: int) -> None:
    """Make a (static) Hymba cache look as if `context` text tokens had been processed."""
    M = cache.num_meta
    end = M + context
    g = torch.Generator(device="cuda").manual_seed(0)
    for i in cache.k:
        cache.k[i][:, :, M:].normal_(generator=g).mul_(0.5)
        cache.v[i][:, :, M:].normal_(generator=g).mul_(0.5)
    for s in cache.conv_state + cache.ssm_state:
        s.normal_(generator=g).mul_(0.1)
    index = torch.arange(M, end, device="cuda", dtype=torch.int32)
    if True in cache.slot_positions:
        cache.slot_positions[True][:, M:end] = index
    if False in cache.slot_positions:
        kept = index[-cache.ring:]
        cache.slot_positions[False][:, cache._slots(kept.long())] = kept
    cache.length = end
    cache.length_t.fill_(end)
    cache.next_position.fill_(end)


def hymba_prefill(model, context: int) -> dict:
    ids = torch.randint(0, model.config.vocab_size, (1, context), device="cuda")

    def run():
        cache = new_cache(model, 1, context)
        model(ids, cache=cache, logits_to_keep=1)
    t = time.time()
    run()  # compiles FlexAttention and the Triton kernels
    torch.cuda.synchronize()
    warm = time.time() - t
    s = cuda_time(run, 3)
    return dict(tokens_per_s=context / s, seconds=s, first_call_s=warm)


def hymba_decode(model, batch: int, context: int, steps: int, graph: bool = True,
                 compile: bool | str = False) -> dict:
    from hymba.engine.cuda_graph import CUDAGraphDecoder, StaticHybridCache

    free_memory()
    max_len = context + steps + 8
    t = time.time()
    if graph:
        dec = CUDAGraphDecoder(model, batch, max_len, compile=compile)
        cache = dec.cache
    else:
        cache = StaticHybridCache(model.config, batch, max_len, device="cuda", dtype=model.dtype)
    fill_hymba_cache(cache, context)
    tok = torch.randint(0, model.config.vocab_size, (batch,), device="cuda")

    @torch.no_grad()
    def step():
        nonlocal tok
        if graph:
            tok = dec.step(tok).argmax(-1)
        else:
            tok = model(tok[:, None], cache=cache, logits_to_keep=1).logits[:, -1].argmax(-1)
    setup_s = time.time() - t
    s = cuda_time(step, steps)
    out = dict(step_ms=s * 1e3, tokens_per_s=batch / s, peak_memory_GB=torch.cuda.max_memory_allocated() / 1e9,
               cache_GB=cache.nbytes() / 1e9, setup_s=setup_s)
    return out


# ---- Llama (transformers) ----------------------------------------------------------------------------------
def build_llama(cfg: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**cfg)
    config._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    return model


@torch.no_grad()
def llama_prefill(model, context: int) -> dict:
    ids = torch.randint(0, model.config.vocab_size, (1, context), device="cuda")

    def run():
        model(ids, use_cache=False, logits_to_keep=1)
    s = cuda_time(run, 3)
    return dict(tokens_per_s=context / s, seconds=s)


@torch.no_grad()
def llama_decode(model, batch: int, context: int, steps: int) -> dict:
    from transformers import StaticCache

    free_memory()
    cache = StaticCache(config=model.config, max_cache_len=context + steps + 8)
    ids = torch.randint(0, model.config.vocab_size, (batch, 1), device="cuda")
    pos = torch.tensor([context - 1], device="cuda")
    model(ids, past_key_values=cache, cache_position=pos, use_cache=True)  # allocates the cache lazily
    for layer in cache.layers:  # the context: random keys and values in every slot before `context`
        layer.keys.normal_().mul_(0.5)
        layer.values.normal_().mul_(0.5)
    cache_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    pos.fill_(context)
    static_ids = ids.clone()

    def forward():
        return model(static_ids, past_key_values=cache, cache_position=pos, use_cache=True).logits[:, -1]

    mode = "CUDA graph"
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                forward()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = forward()

        def step():
            graph.replay()
            static_ids.copy_(logits.argmax(-1, keepdim=True))
            pos.add_(1)
    except Exception as e:  # capture refused (host syncs in mask creation, ...): time it eagerly
        print(f"    CUDA graph capture failed ({type(e).__name__}: {str(e)[:100]}); eager", flush=True)
        torch.cuda.synchronize()
        mode = "eager"

        def step():
            static_ids.copy_(forward().argmax(-1, keepdim=True))
            pos.add_(1)
    pos.fill_(context)
    sec = cuda_time(step, steps)
    return dict(step_ms=sec * 1e3, tokens_per_s=batch / sec, peak_memory_GB=torch.cuda.max_memory_allocated() / 1e9,
                cache_GB=cache_bytes / 1e9, mode=mode)


def build_hymba(kernels: str):
    """hymba-1.5b on the GPU in bf16 with random weights (A_log spread like the released ones)."""
    config = HymbaConfig.from_preset("hymba-1.5b")
    with torch.device("cuda"):
        model = HymbaForCausalLM(config, init=False).to(torch.bfloat16).eval()
    model.set_kernels(kernels)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
        for layer in model.model.layers:
            layer.mamba.A_log[0].uniform_(0, 2.7)
    return model


def run_hymba(args) -> dict:
    model = build_hymba(args.kernels)
    config = model.config
    r = dict(params=model.num_parameters(), kernels=model.model.kernels_for(torch.device("cuda")).name,
             paper_cache_MB_fp16=paper_cache_bytes(config, args.context) / 1e6)
    with torch.no_grad():
        r["prefill"] = hymba_prefill(model, args.context)
        print(f"hymba prefill {args.context}: {r['prefill']['tokens_per_s']:.0f} tok/s", flush=True)
        b, r["decode"] = halving(args.batch, lambda b: hymba_decode(model, b, args.context, args.steps))
        r["decode"]["batch"] = b
        print(f"hymba decode (graph) batch {b}: {r['decode']['tokens_per_s']:.0f} tok/s "
              f"({r['decode']['step_ms']:.2f} ms/step, peak {r['decode']['peak_memory_GB']:.1f} GB)", flush=True)
        if not args.no_compiled_step:
            r["decode_compiled"] = hymba_decode(model, b, args.context, args.steps, compile=True)
            r["decode_compiled"]["batch"] = b
            print(f"hymba decode (graph of the compiled step) batch {b}: "
                  f"{r['decode_compiled']['tokens_per_s']:.0f} tok/s ({r['decode_compiled']['step_ms']:.2f} ms/step, "
                  f"set-up {r['decode_compiled']['setup_s']:.0f} s)", flush=True)
        r["decode_eager"] = hymba_decode(model, b, args.context, 8, graph=False)
        r["decode_eager"]["batch"] = b
        print(f"hymba decode (eager) batch {b}: {r['decode_eager']['tokens_per_s']:.0f} tok/s", flush=True)
    return r


def run_llama(name: str, args) -> dict:
    model = build_llama(LLAMA[name])
    r = dict(params=sum(p.numel() for p in model.parameters()))
    r["prefill"] = llama_prefill(model, args.context)
    print(f"{name} prefill {args.context}: {r['prefill']['tokens_per_s']:.0f} tok/s", flush=True)
    b, r["decode"] = halving(args.batch, lambda b: llama_decode(model, b, args.context, args.steps))
    r["decode"]["batch"] = b
    print(f"{name} decode ({r['decode']['mode']}) batch {b}: {r['decode']['tokens_per_s']:.0f} tok/s "
          f"({r['decode']['step_ms']:.2f} ms/step, peak {r['decode']['peak_memory_GB']:.1f} GB)", flush=True)
    return r


def decode_parser(doc: str) -> argparse.ArgumentParser:
    """The options every decode benchmark shares: --out, --batch (128) and --context (8192), the paper's."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--context", type=int, default=8192)
    return ap


def main():
    ap = decode_parser(__doc__)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--models", default="hymba,Llama-3.2-3B,Llama-3.2-1B")
    ap.add_argument("--no-compiled-step", action="store_true", help="skip the decode step through torch.compile")
    ap.add_argument("--kernels", default="triton-conv", help="Hymba's kernel bundle (triton: fla-core's conv)")
    args = ap.parse_args()
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, context=args.context,
               batch_requested=args.batch, steps=args.steps, models={})
    for name in args.models.split(","):
        try:
            res["models"]["Hymba-1.5B" if name == "hymba" else name] = (
                run_hymba(args) if name == "hymba" else run_llama(name, args))
        except Exception as e:  # keep the other models' numbers
            import traceback

            traceback.print_exc()
            res["models"][name] = dict(error=repr(e))
        free_memory()
        h = res["models"].get("Hymba-1.5B", {})
        for other, m in res["models"].items():
            if other != "Hymba-1.5B" and "decode" in m and "decode" in h:
                res[f"decode_speedup_vs_{other}"] = h["decode"]["tokens_per_s"] / m["decode"]["tokens_per_s"]
                if "decode_compiled" in h:
                    res[f"decode_compiled_speedup_vs_{other}"] = (h["decode_compiled"]["tokens_per_s"]
                                                                  / m["decode"]["tokens_per_s"])
        atomic_write_text(os.path.join(args.out, "e2e.json"), json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if "speedup" in k}, indent=1))


if __name__ == "__main__":
    main()
