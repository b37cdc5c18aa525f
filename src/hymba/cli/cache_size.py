"""`hymba cache-size`: a model's decoding cache next to transformers of similar size at the same length.

Hymba's cache is shown two ways: the paper's count (global K/V for every token, window K/V for
`sliding_window` tokens, SSM and conv state, all in --dtype, meta tokens left out; 78.60 MB for Hymba-1.5B at
8k in fp16) and the true footprint of our HybridCache (meta-token K/V in every K/V-making layer, the SSM
state in fp32, slot bookkeeping). A transformer keeps K and V for every token in every layer:
2 x layers x KV heads x head dim x tokens x bytes per element.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

import torch

from ..config import PRESETS, ConfigError, HymbaConfig
from ..modeling.cache import cache_bytes, paper_cache_bytes
from ..utils import atomic_path, atomic_write_text

MB = 1e6  # the paper's unit: 10^6 bytes


@dataclass(frozen=True)
class TransformerKV:
    name: str
    layers: int
    kv_heads: int
    head_dim: int
    source: str

    def bytes(self, seq_len: int, batch: int, element_size: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * seq_len * batch * element_size


# From each model's public config.json on the Hugging Face Hub (num_hidden_layers, num_key_value_heads,
# head_dim = hidden_size / num_attention_heads). All four use grouped-query attention except SmolLM2 (MHA).
REFERENCE_MODELS = [
    TransformerKV("Llama-3.2-1B", 16, 8, 64, "meta-llama/Llama-3.2-1B: 16 layers, 32 heads of 64 (hidden 2048), 8 KV heads"),
    TransformerKV("Llama-3.2-3B", 28, 8, 128, "meta-llama/Llama-3.2-3B: 28 layers, 24 heads of 128 (hidden 3072), 8 KV heads"),
    TransformerKV("Qwen2.5-1.5B", 28, 2, 128, "Qwen/Qwen2.5-1.5B: 28 layers, 12 heads of 128 (hidden 1536), 2 KV heads"),
    TransformerKV("SmolLM2-1.7B", 24, 32, 64, "HuggingFaceTB/SmolLM2-1.7B: 24 layers, 32 heads of 64 (hidden 2048), 32 KV heads"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="DIR_OR_PRESET",
                   help="a preset name (hymba-1.5b, hymba-350m, ...), a checkpoint directory or a config.json")
    p.add_argument("--seq-len", type=int, required=True, metavar="N", help="tokens per sequence (prompt + output)")
    p.add_argument("--batch", type=int, default=1, metavar="B")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="element type of K/V and conv state (the SSM state is fp32 in our cache)")
    p.add_argument("--plot", metavar="PNG", help="draw cache MB against sequence length (0..N) for every model")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")


def load_config(spec: str):
    """A preset name, a checkpoint directory or a path to a config.json."""
    if os.path.exists(spec):
        return HymbaConfig.from_json(spec), os.path.basename(os.path.normpath(spec)) or spec
    if spec in PRESETS:
        return HymbaConfig.from_preset(spec), spec
    raise ValueError(f"--config {spec!r} is neither an existing directory/config.json nor a preset "
                     f"(presets: {', '.join(sorted(PRESETS))})")


def hymba_figures(config, seq_len: int, batch: int, dtype) -> dict:
    """Bytes per component of the true footprint, its total, and the paper's count (x batch)."""
    parts = cache_bytes(config, batch, seq_len, dtype=dtype)
    return dict(components=parts, total=sum(parts.values()), paper=batch * paper_cache_bytes(config, seq_len, dtype))


def compute(config, name: str, seq_len: int, batch: int, dtype_name: str) -> dict:
    dtype = getattr(torch, dtype_name)
    esize = torch.tensor([], dtype=dtype).element_size()
    h = hymba_figures(config, seq_len, batch, dtype)
    others = []
    for ref in REFERENCE_MODELS:
        b = ref.bytes(seq_len, batch, esize)
        others.append(dict(name=ref.name, bytes=b, layers=ref.layers, kv_heads=ref.kv_heads, head_dim=ref.head_dim,
                           source=ref.source, ratio_to_paper_count=b / h["paper"], ratio_to_footprint=b / h["total"]))
    return dict(model=name, seq_len=seq_len, batch=batch, dtype=dtype_name, unit="MB = 10^6 bytes",
                hymba=dict(paper_count_bytes=h["paper"], footprint_bytes=h["total"], components=h["components"]),
                references=others)


def format_table(r: dict) -> str:
    c = r["hymba"]["components"]
    lines = [f"Decoding cache at {r['seq_len']} tokens, batch {r['batch']}, {r['dtype']} (MB = 10^6 bytes)", ""]
    head = f"{'':34}{'global K/V':>11}{'window K/V':>11}{'meta K/V':>10}{'SSM':>9}{'conv':>8}{'other':>8}{'total':>10}"
    lines.append(head)
    paper = r["hymba"]["paper_count_bytes"]
    paper_parts = {k: c[k] for k in ("global_kv", "window_kv", "conv_state")}
    ssm_paper = paper - sum(paper_parts.values())
    lines.append(f"{r['model'] + ' (paper count)':34}{c['global_kv'] / MB:11.2f}{c['window_kv'] / MB:11.2f}"
                 f"{'-':>10}{ssm_paper / MB:9.2f}{c['conv_state'] / MB:8.2f}{'-':>8}{paper / MB:10.2f}")
    lines.append(f"{r['model'] + ' (our cache, fp32 SSM)':34}{c['global_kv'] / MB:11.2f}{c['window_kv'] / MB:11.2f}"
                 f"{c['meta_kv'] / MB:10.2f}{c['ssm_state'] / MB:9.2f}{c['conv_state'] / MB:8.2f}"
                 f"{c['positions'] / MB:8.2f}{r['hymba']['footprint_bytes'] / MB:10.2f}")
    lines.append("")
    lines.append(f"{'':34}{'K/V':>11}{'x paper count':>15}{'x our cache':>13}")
    for o in r["references"]:
        lines.append(f"{o['name']:34}{o['bytes'] / MB:11.2f}{o['ratio_to_paper_count']:14.2f}x"
                     f"{o['ratio_to_footprint']:12.2f}x")
    lines.append("")
    lines.append("paper count: global K/V for every token + window K/V for the window + SSM + conv state, all in "
                 f"{r['dtype']}, no meta tokens.")
    lines.append("our cache: also the meta tokens' K/V in every K/V-making layer, the SSM state in fp32 and the "
                 "slot positions (other).")
    return "\n".join(lines)


def plot(config, name: str, seq_len: int, batch: int, dtype_name: str, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install 'hymba[eval]')") from None

    dtype = getattr(torch, dtype_name)
    esize = torch.tensor([], dtype=dtype).element_size()
    xs = sorted({max(1, round(seq_len * i / 64)) for i in range(65)})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for ref in REFERENCE_MODELS:
        ax.plot(xs, [ref.bytes(x, batch, esize) / MB for x in xs], label=ref.name)
    figs = [hymba_figures(config, x, batch, dtype) for x in xs]
    ax.plot(xs, [f["total"] / MB for f in figs], label=f"{name} (our cache)", color="black", linewidth=2)
    ax.plot(xs, [f["paper"] / MB for f in figs], label=f"{name} (paper count)", color="black", linestyle="--")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(f"cache (MB, {dtype_name}, batch {batch})")
    ax.set_title("Decoding cache vs sequence length")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    try:
        if args.seq_len < 1 or args.batch < 1:
            raise ValueError(f"--seq-len ({args.seq_len}) and --batch ({args.batch}) must be >= 1")
        config, name = load_config(args.config)
        result = compute(config, name, args.seq_len, args.batch, args.dtype)
        print(format_table(result))
        if args.plot:
            plot(config, name, args.seq_len, args.batch, args.dtype, args.plot)
            print(f"plot written to {args.plot}")
        if args.json:
            atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
            print(f"figures written to {args.json}")
    except (ValueError, FileNotFoundError, ConfigError) as e:
        print(f"hymba cache-size: error: {e}", file=sys.stderr)
        return 2
    return 0
