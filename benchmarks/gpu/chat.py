"""A chat-shaped request through the public API: a 128-token prompt, 256 new tokens, batch 1 and 8,
hymba-1.5b with random bf16 weights, generate's direct path (cuda_graph=True: a CUDA graph per call; on CUDA
generate's default is the shared engine, which `engine_chat` measures). Reports the
end-to-end tokens/s of the whole call (prefill, graph capture, 256 steps), the decode tokens/s by the
decode protocol (common.decode_protocol, 255 steps), and the time to the first token.
"""

from __future__ import annotations

from ..common import Ctx, build_model, decode_protocol, generate_seconds, metric, model_config, random_ids

NAME = "chat"
SUITE = "gpu"
DESCRIPTION = "generate() with a 128-token prompt and 256 new tokens at batch 1 and 8: end-to-end and decode tok/s"
DEFAULT = True
EST_S = 30
WARM_S = 40  # seconds of its warm-up job (the parallel phase starts the longest first)


def run(ctx: Ctx) -> dict:
    prompt = ctx.param("prompt", 8 if ctx.smoke else 128)
    new = ctx.param("new", 4 if ctx.smoke else 256)
    batches = ctx.param("batches", [1, 2] if ctx.smoke else [1, 8])
    config = model_config(ctx)
    model = build_model(ctx, config)
    kw = dict(cuda_graph=ctx.device.type == "cuda")
    metrics, details = [], {}
    for batch in batches:
        ids = random_ids(config.vocab_size, (batch, prompt), ctx.device, seed=batch)
        if ctx.warm:
            generate_seconds(model, ids, new, **kw)
            continue
        r = decode_protocol(model, ids, new - 1, **kw)
        details[f"batch {batch}"] = r
        metrics += [
            metric(f"batch {batch}: end to end", batch * new / r["total_s"], "tok/s", headline=True,
                   compare=f"decode alone {r['tokens_per_s']:,.0f} tok/s; "
                           f"first token {r['first_token_s'] * 1e3:.0f} ms"),
            metric(f"batch {batch}: decode", r["tokens_per_s"], "tok/s"),
            metric(f"batch {batch}: first token", r["first_token_s"] * 1e3, "ms")]
    return dict(params=dict(preset="hymba-1.5b", prompt=prompt, new_tokens=new, batches=batches, dtype="bfloat16"),
                metrics=metrics, details=details)
