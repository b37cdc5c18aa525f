"""`hymba info`: build a model (a preset or a checkpoint), report its size and cache, and score a text."""

from __future__ import annotations

import argparse
import math
import os

import torch

from ..config import HymbaConfig
from ..modeling import HymbaForCausalLM
from ..modeling.cache import cache_bytes, paper_cache_bytes
from ..tokenizer import load_tokenizer

SAMPLE_TEXT = (
    "Hymba runs attention heads and state-space heads side by side in every layer. The attention heads recall "
    "exact tokens; the SSM heads summarise the context in a fixed-size state. Meta tokens prepended to every "
    "prompt give the heads somewhere to look when nothing else matters."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help="a preset name (default: tiny)")
    src.add_argument("--model", default=None, help="a checkpoint directory")
    p.add_argument("--text", default=None, help="a text file to score (default: a built-in paragraph)")
    p.add_argument("--seq-len", type=int, default=8192, help="sequence length for the cache report")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    if args.model:
        model = HymbaForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        name = args.model
    else:
        name = args.preset or "tiny"
        model = HymbaForCausalLM(HymbaConfig.from_preset(name)).eval()
    c = model.config
    print(f"model: {name}")
    print(f"  parameters: {model.num_parameters():,} ({model.num_parameters(exclude_embeddings=True):,} "
          "without embeddings)")
    print(f"  layers: {c.num_hidden_layers} (global attention: {[i for i in range(c.num_hidden_layers) if c.is_global(i)]}), "
          f"K/V groups: {c.kv_reuse_group}, meta tokens: {c.num_memory_tokens}, window: {c.sliding_window}")
    parts = cache_bytes(c, 1, args.seq_len, dtype=torch.float16)
    total = sum(parts.values())
    print(f"  cache at {args.seq_len} tokens, batch 1, fp16 (fp32 SSM state): {total / 1e6:.2f} MB")
    for k, v in parts.items():
        print(f"    {k:<11} {v / 1e6:10.3f} MB")
    print(f"  paper's count (no meta tokens, all fp16): {paper_cache_bytes(c, args.seq_len) / 1e6:.2f} MB")

    text = SAMPLE_TEXT
    if args.text:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
    ids = _tokenize(text, args.model, c.vocab_size)
    with torch.no_grad():
        out = model(ids, labels=ids)
    loss = out.loss.item()
    print(f"  text: {ids.shape[1]} tokens, loss {loss:.4f} nats/token, perplexity {math.exp(loss):.2f} "
          f"(uniform over the vocabulary: {math.log(c.vocab_size):.4f})")
    return 0


def _tokenize(text: str, model_dir: str | None, vocab_size: int) -> torch.Tensor:
    """The checkpoint's tokenizer when it has one, else UTF-8 bytes (ids < 256) for a fresh preset."""
    if model_dir and os.path.exists(os.path.join(model_dir, "tokenizer.json")):
        return torch.tensor([load_tokenizer(model_dir).encode(text)])
    if vocab_size < 256:
        raise SystemExit(f"vocabulary of {vocab_size} is too small for byte-level scoring (needs >= 256)")
    return torch.tensor([list(text.encode("utf-8"))])
