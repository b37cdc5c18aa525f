"""Reference points for engine_chat: transformers' Llama-3.2-1B and Qwen2.5-1.5B (their public configs,
written out here; random bf16 weights on CUDA, SDPA attention) on the same chat protocol: 128 random prompt
tokens, 256 new (min_new_tokens = max_new_tokens), greedy, batch 1 and 8, three calls, the first reported as
cold; tokens/s = batch x 256 / the fastest warm call's wall time.

Through `model.generate(..., cache_implementation="static")` with `disable_compile=True`: transformers'
static cache, eager (transformers would otherwise compile the forward on CUDA by itself, ~1-2 minutes per
model and shape). `--param anchors.compiled=true` adds the compiled variant (transformers' automatic
torch.compile of the static-cache forward; its first call, the compile, is the cold one). The transformers
version is recorded with the results: its generate loop changes between releases.
"""

from __future__ import annotations

import torch

from ..common import Ctx, free_memory, metric, peak_memory_gb, random_ids, wall
from .llama import LLAMA
from .llama import SMOKE as SMOKE_LLAMA

NAME = "anchors"
SUITE = "gpu"
DESCRIPTION = "transformers Llama-3.2-1B and Qwen2.5-1.5B (random weights, static cache): the chat protocol"
DEFAULT = True
EST_S = 120

QWEN = {  # Qwen/Qwen2.5-1.5B/config.json (q/k/v projections carry a bias in Qwen2's modeling code)
    "Qwen2.5-1.5B": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
                         use_sliding_window=False, bos_token_id=151643, eos_token_id=151643),
}
SMOKE_QWEN = dict(QWEN["Qwen2.5-1.5B"], vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)


def models(smoke: bool) -> dict:
    """{name: (config class name, config kwargs)}."""
    if smoke:
        return {"tiny Llama (smoke)": ("LlamaConfig", SMOKE_LLAMA), "tiny Qwen2 (smoke)": ("Qwen2Config", SMOKE_QWEN)}
    return {"Llama-3.2-1B": ("LlamaConfig", LLAMA["Llama-3.2-1B"]),
            "Qwen2.5-1.5B": ("Qwen2Config", QWEN["Qwen2.5-1.5B"])}


def build(kind: str, cfg: dict, device):
    import transformers

    config = getattr(transformers, kind)(**cfg)
    config._attn_implementation = "sdpa"
    cls = transformers.LlamaForCausalLM if kind == "LlamaConfig" else transformers.Qwen2ForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(config).to(torch.bfloat16).eval()
    return model


@torch.no_grad()
def chat_calls(model, ids: torch.Tensor, new: int, calls: int, compiled: bool) -> dict:
    eos = model.config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, cache_implementation="static",
              pad_token_id=eos if eos is not None else 0, disable_compile=not compiled)
    mask = torch.ones_like(ids)

    def call(n):
        out = model.generate(ids, attention_mask=mask, **dict(kw, max_new_tokens=n, min_new_tokens=n))
        if out.shape != (ids.shape[0], ids.shape[1] + n):
            raise RuntimeError(f"generate returned shape {tuple(out.shape)}, expected {(ids.shape[0], ids.shape[1] + n)}")
        return out
    walls = [wall(lambda: call(new), ids.device)[0] for _ in range(calls)]
    best = min(walls[1:]) if calls > 1 else walls[0]
    first = min(wall(lambda: call(1), ids.device)[0] for _ in range(2))
    return dict(walls_s=walls, cold_s=walls[0], best_warm_s=best, first_token_s=first)


def run(ctx: Ctx) -> dict:
    import transformers

    prompt = ctx.param("prompt", 8 if ctx.smoke else 128)
    new = ctx.param("new", 4 if ctx.smoke else 256)
    batches = ctx.param("batches", [1, 2] if ctx.smoke else [1, 8])
    calls = ctx.param("calls", 3)
    variants = ["static cache"] + (["static cache, compiled"] if ctx.param("compiled", False) else [])
    metrics, details = [], {}
    for name, (kind, cfg) in models(ctx.smoke).items():
        model = build(kind, cfg, ctx.device)
        for variant in variants:
            for batch in batches:
                ids = random_ids(model.config.vocab_size, (batch, prompt), ctx.device, seed=batch)
                r = chat_calls(model, ids, new, calls, compiled=variant.endswith("compiled"))
                tok_s = batch * new / r["best_warm_s"]
                label = f"{name}, batch {batch}" + (", compiled" if variant.endswith("compiled") else "")
                details[label] = dict(r, tokens_per_s=tok_s, variant=variant)
                metrics += [
                    metric(f"{label}: end to end", tok_s, "tok/s", headline=True,
                           compare=f"cold call {r['cold_s']:.2f} s; first token {r['first_token_s'] * 1e3:.0f} ms; "
                                   f"engine_chat, same protocol"),
                    metric(f"{label}: first token", r["first_token_s"] * 1e3, "ms")]
        details[name] = dict(peak_memory_GB=peak_memory_gb(ctx.device),
                             parameters=sum(p.numel() for p in model.parameters()))
        model = None
        free_memory()
    return dict(params=dict(prompt=prompt, new_tokens=new, batches=batches, calls=calls, variants=variants,
                            attention="sdpa", dtype="bfloat16", transformers=transformers.__version__),
                metrics=metrics, details=details)
