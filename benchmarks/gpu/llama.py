"""transformers' Llama-3.2-3B and -1B (their public configs, random bf16 weights, SDPA) at the shapes of
prefill_8k and decode_8k, for comparison. Opt-in; run it in the same call as those two
(`--only decode_8k,prefill_8k,llama`) so that the comparison is within one run.

Not the same protocol as Hymba's generate(): prefill is one forward of the 8k prompt; decode fills a
StaticCache with random keys and values for the 8k context (a step reads the whole cache whatever it holds)
and times steps captured as a CUDA graph (eager if the capture fails), batch 128 halved on out-of-memory.
"""

from __future__ import annotations

import torch

from ..common import Ctx, free_memory, metric, peak_memory_gb, random_ids, time_ms

NAME = "llama"
SUITE = "gpu"
DESCRIPTION = "transformers Llama-3.2-3B/-1B (random weights) prefill at 8k and decode at 8k, batch 128 (opt-in)"
DEFAULT = False
EST_S = 150

_COMMON = dict(vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
               rope_scaling=dict(factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
                                 original_max_position_embeddings=8192, rope_type="llama3"),
               hidden_act="silu", tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
LLAMA = {  # meta-llama/Llama-3.2-{3B,1B}/config.json
    "Llama-3.2-3B": dict(_COMMON, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128),
    "Llama-3.2-1B": dict(_COMMON, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64),
}
SMOKE = dict(_COMMON, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8)


@torch.no_grad()
def decode(model, batch: int, context: int, steps: int, device) -> dict:
    from transformers import StaticCache

    free_memory()
    cache = StaticCache(config=model.config, max_cache_len=context + 2 * steps + 8)
    ids = random_ids(model.config.vocab_size, (batch, 1), device)
    pos = torch.tensor([context - 1], device=device)
    model(ids, past_key_values=cache, cache_position=pos, use_cache=True)  # allocates the cache
    for layer in cache.layers:  # the context: random keys and values
        layer.keys.normal_().mul_(0.5)
        layer.values.normal_().mul_(0.5)
    pos.fill_(context)

    def forward():
        return model(ids, past_key_values=cache, cache_position=pos, use_cache=True).logits[:, -1]
    mode = "eager"
    if device.type == "cuda":
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                forward(), forward()
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = forward()
            mode = "CUDA graph"
        except Exception as e:  # capture refused (host syncs in mask creation, ...): eager
            print(f"CUDA graph capture failed ({type(e).__name__}: {str(e)[:100]}); eager", flush=True)
            torch.cuda.synchronize()

    def step():
        if mode == "CUDA graph":
            graph.replay()
            out = logits
        else:
            out = forward()
        ids.copy_(out.argmax(-1, keepdim=True))
        pos.add_(1)
    t = time_ms(step, device, warmup=2, reps=steps)
    return dict(step_ms=t["median_ms"], tokens_per_s=batch / t["median_ms"] * 1e3, mode=mode,
                peak_memory_GB=peak_memory_gb(device),
                cache_GB=sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers) / 1e9)


def run(ctx: Ctx) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    context = ctx.param("context", 24 if ctx.smoke else 8192)
    batch = ctx.param("batch", 2 if ctx.smoke else 128)
    steps = ctx.param("steps", 2 if ctx.smoke else 16)
    models = {"tiny Llama (smoke)": SMOKE} if ctx.smoke else LLAMA
    metrics, details = [], {}
    for name, cfg in models.items():
        config = LlamaConfig(**cfg)
        config._attn_implementation = "sdpa"
        torch.manual_seed(0)
        with torch.device(ctx.device):
            model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
        ids = random_ids(config.vocab_size, (1, context), ctx.device)
        with torch.no_grad():
            t = time_ms(lambda: model(ids, use_cache=False, logits_to_keep=1), ctx.device, warmup=1, reps=3)
        b = batch
        while True:
            try:
                d = decode(model, b, context, steps, ctx.device)
                break
            except torch.OutOfMemoryError:
                pass
            free_memory()  # here, not in `except`: the failed attempt's tensors live as long as the exception
            b //= 2
            if b < 1:
                raise RuntimeError("out of memory at batch 1")
        details[name] = dict(prefill_ms=t["median_ms"], decode=dict(d, batch=b))
        metrics += [metric(f"{name}: prefill {context}", context / t["median_ms"] * 1e3, "tok/s", headline=True,
                           compare="prefill_8k, same run"),
                    metric(f"{name}: decode batch {b}, {context} context", d["tokens_per_s"], "tok/s", headline=True,
                           compare=f"decode_8k, same run ({d['mode']})")]
        model = None
        free_memory()
    return dict(params=dict(context=context, batch=batch, steps=steps, attention="sdpa", dtype="bfloat16"),
                metrics=metrics, details=details)
