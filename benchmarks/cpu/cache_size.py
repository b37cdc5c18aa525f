"""The decoding cache of hymba-1.5b at 8k tokens (batch 1, fp16), analytic: the paper's count (global K/V for
every token, window K/V for the window, SSM and conv states, no meta tokens: 78.60 MB) and our HybridCache's
true footprint (meta-token K/V in every K/V-making layer, the SSM state in fp32, slot positions), against
the K/V caches of transformers of similar size (`hymba cache-size`'s references)."""

from __future__ import annotations

from ..common import Ctx, metric

NAME = "cache_size"
SUITE = "cpu"
DESCRIPTION = "decoding cache of hymba-1.5b at 8k (fp16): paper count and our cache vs Llama/Qwen/SmolLM K/V caches"
DEFAULT = True
EST_S = 10
PAPER_MB = 78.60  # the paper's figure for Hymba-1.5B at 8k


def run(ctx: Ctx) -> dict:
    from hymba import HymbaConfig
    from hymba.cli.cache_size import compute

    seq_len = ctx.param("seq_len", 8192)
    r = compute(HymbaConfig.from_preset("hymba-1.5b"), "hymba-1.5b", seq_len, 1, "float16")
    h = r["hymba"]
    paper, ours = h["paper_count_bytes"] / 1e6, h["footprint_bytes"] / 1e6
    refs = {o["name"]: o for o in r["references"]}
    smallest = min(refs.values(), key=lambda o: o["bytes"])
    metrics = [
        metric(f"hymba-1.5b at {seq_len}, paper count", paper, "MB", headline=True,
               compare=f"the paper's {PAPER_MB} MB; {smallest['name']} {smallest['bytes'] / 1e6:,.0f} MB "
                       f"({smallest['ratio_to_paper_count']:.1f}x)", paper_MB=PAPER_MB),
        metric(f"hymba-1.5b at {seq_len}, our cache", ours, "MB", headline=True,
               compare=", ".join(f"{n} {o['ratio_to_footprint']:.1f}x" for n, o in refs.items()) + " larger"),
    ] + [metric(f"{n} K/V cache", o["bytes"] / 1e6, "MB", ratio_to_paper_count=o["ratio_to_paper_count"],
                ratio_to_our_cache=o["ratio_to_footprint"]) for n, o in refs.items()]
    return dict(params=dict(preset="hymba-1.5b", seq_len=seq_len, batch=1, dtype="float16"),
                metrics=metrics, details=r)
