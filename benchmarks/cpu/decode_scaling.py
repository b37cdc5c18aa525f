"""Decode step time against context length on the CPU: a window-heavy Hymba against an attention-only
transformer of the same widths.

A Hymba step attends over the window (+ meta tokens) in most layers and keeps a fixed-size SSM state, so its
cost should stay nearly flat as the context grows; a transformer attends over every cached token in every
layer, so its step grows linearly. Three models at hymba-125m widths (768 wide, 12 heads of 64, 4 K/V heads,
MLP 2048, vocabulary 32001), 6 layers each, random weights: Hymba with layer 0 global, Hymba with no global
layer, and the attention-only baseline. Each cache is filled once, chunk by chunk, and copied at every
context; then `steps` rounds each time one decode step (`model(token, cache=cache)`) of every model at every
context, interleaved so that load from other processes spreads evenly. Median per cell; least-squares slope
in ms per 1k tokens of context.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from ..common import Ctx, metric

NAME = "decode_scaling"
SUITE = "cpu"
DESCRIPTION = "CPU decode step time from 1k to 8k context: Hymba (6 layers, hymba-125m widths) vs attention-only"
DEFAULT = True
EST_S = 240


def hymba_config(preset: str, layers: int, global_layers: tuple[int, ...]):
    """`global_layers` attend globally, the others through the window (+ meta tokens), K/V shared in pairs
    of neighbouring window layers."""
    from hymba import HymbaConfig

    window = [i for i in range(layers) if i not in global_layers]
    groups, i = [], 0
    while i < len(window):
        pair = i + 1 < len(window) and window[i + 1] == window[i] + 1
        groups.append(window[i:i + 2] if pair else [window[i]])
        i += 2 if pair else 1
    return HymbaConfig.from_preset(preset, num_hidden_layers=layers, global_attn_idx=list(global_layers),
                                   kv_reuse_group=groups)


def attention_only_config(preset: str, layers: int):
    """The same widths as a Llama-style transformer: attention only, every layer global, no meta tokens."""
    from hymba import HymbaConfig

    return HymbaConfig.from_preset(preset, num_hidden_layers=layers, use_ssm=False, mamba_expand=1,
                                   sliding_window=None, global_attn_idx=[], kv_reuse_group=[], num_memory_tokens=0,
                                   rope_type="default")


@torch.no_grad()
def filled_caches(model, contexts: list[int], rounds: int, chunk: int) -> dict:
    """One cache per context holding that many random tokens: filled once, copied at each context."""
    from hymba.engine import new_cache

    g = torch.Generator().manual_seed(0)
    cache = new_cache(model, 1, max(contexts) + rounds + 1)
    filled, caches = 0, {}
    for context in sorted(contexts):
        while filled < context:
            n = min(chunk, context - filled)
            model(torch.randint(0, model.config.vocab_size, (1, n), generator=g), cache=cache, logits_to_keep=1)
            filled += n
        caches[context] = copy.deepcopy(cache)
    return caches


@torch.no_grad()
def time_steps(models: dict, caches: dict, contexts: list[int], rounds: int) -> dict:
    """Decode-step seconds, interleaved: each round times one step of every model at every context."""
    times = {name: {c: [] for c in contexts} for name in models}
    tokens = {name: {c: torch.tensor([[1]]) for c in contexts} for name in models}
    for r in range(rounds + 1):  # round 0 warms up
        for name, model in models.items():
            for c in contexts:
                t0 = time.perf_counter()
                logits = model(tokens[name][c], cache=caches[name][c], logits_to_keep=1).logits
                dt = time.perf_counter() - t0
                tokens[name][c] = logits[:, -1].argmax(-1, keepdim=True)
                if r > 0:
                    times[name][c].append(dt)
    return times


def slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def run(ctx: Ctx) -> dict:
    from hymba import HymbaForCausalLM
    from hymba.modeling.cache import cache_bytes

    preset = "tiny" if ctx.smoke else "hymba-125m"
    contexts = sorted(ctx.param("contexts", [24, 48] if ctx.smoke else [1024, 2048, 4096, 8192]))
    layers = ctx.param("layers", 2 if ctx.smoke else 6)
    steps = ctx.param("steps", 2 if ctx.smoke else 20)
    chunk = ctx.param("chunk", 16 if ctx.smoke else 1024)
    configs = {"hymba": hymba_config(preset, layers, (0,)), "hymba-all-window": hymba_config(preset, layers, ()),
               "attention-only": attention_only_config(preset, layers)}
    nets, caches = {}, {}
    for name, config in configs.items():
        torch.manual_seed(0)
        nets[name] = HymbaForCausalLM(config).eval()
        ctx.log(f"{name}: {nets[name].num_parameters() / 1e6:.1f}M parameters; filling {max(contexts)} tokens")
        caches[name] = filled_caches(nets[name], contexts, steps, chunk)
    times = time_steps(nets, caches, contexts, steps)
    models = {}
    for name, config in configs.items():
        rows = [dict(context=c, median_ms=1e3 * statistics.median(times[name][c]), min_ms=1e3 * min(times[name][c]),
                     cache_MB_fp32=sum(cache_bytes(config, 1, c, dtype=torch.float32).values()) / 1e6)
                for c in contexts]
        models[name] = dict(rows=rows, growth=rows[-1]["median_ms"] / rows[0]["median_ms"],
                            ms_per_1k_context=slope([c / 1000 for c in contexts], [r["median_ms"] for r in rows]))
        ctx.log(f"{name:<18}" + "".join(f"{r['context']:>7}: {r['median_ms']:6.2f} ms" for r in rows))
    h, a = models["hymba"], models["attention-only"]
    lo, hi = contexts[0], contexts[-1]
    metrics = [
        metric(f"hymba step, {lo} -> {hi} context", h["rows"][-1]["median_ms"], "ms", headline=True,
               compare=f"from {h['rows'][0]['median_ms']:.1f} ms (x{h['growth']:.2f}, "
                       f"{h['ms_per_1k_context']:+.2f} ms per 1k); attention-only x{a['growth']:.2f} "
                       f"({a['rows'][0]['median_ms']:.1f} -> {a['rows'][-1]['median_ms']:.1f} ms, "
                       f"{a['ms_per_1k_context']:+.2f} ms per 1k)"),
        metric(f"hymba-all-window step at {hi}", models["hymba-all-window"]["rows"][-1]["median_ms"], "ms",
               headline=True, compare=f"x{models['hymba-all-window']['growth']:.2f} from {lo}"),
    ] + [metric(f"{n} ms per 1k tokens of context", m["ms_per_1k_context"], "ms") for n, m in models.items()]
    return dict(params=dict(preset_widths=preset, layers=layers, contexts=contexts, steps=steps, chunk=chunk,
                            batch=1, dtype="float32", threads=torch.get_num_threads()),
                metrics=metrics, details=models)
