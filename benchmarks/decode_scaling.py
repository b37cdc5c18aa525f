"""Decode step time against context length: a window-heavy Hymba vs an attention-only transformer.

A Hymba decode step attends over the window (+ meta tokens) in most layers and keeps a fixed-size SSM state,
so its cost should stay nearly flat as the context grows; a transformer attends over every cached token in
every layer, so its step time grows linearly. Three models with hymba-125m widths (768 wide, 12 heads of 64,
4 K/V heads, MLP 2048, the 32001-token vocabulary) and the same number of layers: Hymba with one global
layer, Hymba with none (the window layers' cost alone), and the attention-only baseline. Random weights
(the time does not depend on them).

Each model's cache is filled once, chunk by chunk, and copied at every context in the list; then `--steps`
rounds each time one single-token decode step (`model(token, cache=cache)`) of every model at every context,
interleaved so that load from other processes spreads evenly. Reports the median (and the minimum) per cell
and a least-squares slope in ms per 1k tokens of context. Prints a table and writes
benchmarks/results/decode_scaling.{json,md}.

    .venv/bin/python benchmarks/decode_scaling.py --threads 1     # ~4-5 minutes on a 2-core CPU
    .venv/bin/python benchmarks/decode_scaling.py --contexts 1024 2048 --steps 5
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time

import torch

from hymba import HymbaConfig, HymbaForCausalLM
from hymba.engine import new_cache
from hymba.modeling.cache import cache_bytes
from hymba.utils import atomic_write_text

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def hymba_config(layers: int, global_layers: tuple[int, ...] = (0,)) -> HymbaConfig:
    """hymba-125m widths; `global_layers` attend globally, the others through the 1024 window (+128 meta
    tokens) with K/V shared in pairs of neighbouring window layers."""
    window = [i for i in range(layers) if i not in global_layers]
    groups, i = [], 0
    while i < len(window):  # pair consecutive window layers
        if i + 1 < len(window) and window[i + 1] == window[i] + 1:
            groups.append([window[i], window[i + 1]])
            i += 2
        else:
            groups.append([window[i]])
            i += 1
    return HymbaConfig.from_preset("hymba-125m", num_hidden_layers=layers, global_attn_idx=list(global_layers),
                                   kv_reuse_group=groups)


def attention_only_config(layers: int) -> HymbaConfig:
    """The same widths as a Llama-style transformer: attention only, every layer global, no meta tokens."""
    return HymbaConfig.from_preset("hymba-125m", num_hidden_layers=layers, use_ssm=False, mamba_expand=1,
                                   sliding_window=None, global_attn_idx=[], kv_reuse_group=[], num_memory_tokens=0,
                                   rope_type="default")


def models_to_compare(layers: int) -> dict[str, tuple[HymbaConfig, str]]:
    return {
        "hymba": (hymba_config(layers, (0,)),
                  f"layer 0 global, the other {layers - 1} sliding-window 1024 + 128 meta tokens with K/V shared "
                  "in pairs; SSM heads in every layer"),
        "hymba-all-window": (hymba_config(layers, ()),
                             f"all {layers} layers sliding-window: the cost of the window layers alone"),
        "attention-only": (attention_only_config(layers),
                           f"all {layers} layers attend over the whole context (Llama-style)"),
    }


@torch.no_grad()
def prefilled_caches(model: HymbaForCausalLM, contexts: list[int], rounds: int, chunk: int, seed: int = 0) -> dict:
    """One cache per context, each holding that many (random) tokens: the cache is filled once, chunk by
    chunk, and copied each time it reaches a context in the list."""
    g = torch.Generator().manual_seed(seed)
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
    """Decode-step times, interleaved: every round times one step of every model at every context, so that
    load from other processes on a shared machine spreads over all cells instead of skewing one."""
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


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return slope, my - slope * mx


def markdown(result: dict) -> str:
    models = result["models"]
    names = list(models)
    lines = [
        "# Decode step time vs context length (CPU)",
        "",
        f"{result['description']}",
        "",
        f"Machine: {result['machine']['processor']}, torch threads: {result['machine']['threads']}, "
        f"torch {result['machine']['torch']}; median of {result['steps']} interleaved steps after a warm-up round; "
        "batch 1, float32.",
        "",
        "| context | " + " | ".join(f"{n} ms/step" for n in names) + " | " +
        " | ".join(f"{n} cache MB" for n in names) + " |",
        "|---:|" + "---:|" * (2 * len(names)),
    ]
    for i, context in enumerate(result["contexts"]):
        cells = [f"{models[n]['rows'][i]['median_ms']:.2f}" for n in names]
        cells += [f"{models[n]['rows'][i]['cache_mb_fp32']:.1f}" for n in names]
        lines.append(f"| {context} | " + " | ".join(cells) + " |")
    lines.append("")
    for n in names:
        lines.append(f"- {n}: step time x{models[n]['growth']:.2f} from {result['contexts'][0]} to "
                     f"{result['contexts'][-1]} tokens of context, least-squares slope "
                     f"{models[n]['ms_per_1k_context']:+.2f} ms per 1k tokens ({models[n]['summary']})")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--steps", type=int, default=20, help="timed decode steps per model and context")
    p.add_argument("--chunk", type=int, default=1024, help="prefill chunk size")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=RESULTS, help="directory for decode_scaling.json and .md")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    contexts = sorted(args.contexts)
    compared = models_to_compare(args.layers)
    configs = {name: config for name, (config, _) in compared.items()}
    models = {}
    t_start = time.perf_counter()
    nets, caches = {}, {}
    for name, config in configs.items():
        torch.manual_seed(0)
        nets[name] = HymbaForCausalLM(config).eval()
        print(f"{name}: {args.layers} layers, {nets[name].num_parameters() / 1e6:.1f}M parameters; prefilling "
              f"{max(contexts)} tokens", flush=True)
        caches[name] = prefilled_caches(nets[name], contexts, args.steps, args.chunk)
    print(f"timing {args.steps} interleaved rounds", flush=True)
    times = time_steps(nets, caches, contexts, args.steps)
    for name, config in configs.items():
        rows = []
        for c in contexts:
            ts = times[name][c]
            parts = cache_bytes(config, 1, c, dtype=torch.float32)
            rows.append(dict(context=c, median_ms=1e3 * statistics.median(ts), min_ms=1e3 * min(ts),
                             cache_mb_fp32=sum(parts.values()) / 1e6))
        growth = rows[-1]["median_ms"] / rows[0]["median_ms"]
        slope, intercept = fit_line([r["context"] / 1000 for r in rows], [r["median_ms"] for r in rows])
        models[name] = dict(parameters=nets[name].num_parameters(), config=config.to_dict(), rows=rows,
                            growth=growth, ms_per_1k_context=slope, ms_at_zero_context=intercept)
    for name, (_, summary) in compared.items():
        models[name]["summary"] = summary
    result = dict(
        description=("Decode step time of a window-heavy Hymba (and of the same with no global layer at all) "
                     "against an attention-only transformer of the same widths (hymba-125m: 768 wide, 12 heads "
                     f"of 64, 4 K/V heads, MLP 2048, vocabulary 32001), {args.layers} layers each, random "
                     "weights."),
        contexts=contexts, steps=args.steps, seconds=time.perf_counter() - t_start,
        machine=dict(processor=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                     threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version()),
        models=models)

    print()
    header = f"{'context':>8}" + "".join(f"{n + ' ms':>24}" for n in models)
    print(header)
    for i, context in enumerate(contexts):
        print(f"{context:>8}" + "".join(f"{models[n]['rows'][i]['median_ms']:24.2f}" for n in models))
    print("growth  " + "".join(f"{'x%.2f' % models[n]['growth']:>24}" for n in models))
    print("ms/1k   " + "".join(f"{models[n]['ms_per_1k_context']:24.2f}" for n in models))

    atomic_write_text(os.path.join(args.out, "decode_scaling.json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(os.path.join(args.out, "decode_scaling.md"), markdown(result))
    print(f"\nwritten: {os.path.join(args.out, 'decode_scaling.json')} and .md ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
