"""`hymba perplexity`: sliding-window perplexity of a text file (the standard WikiText evaluation)."""

from __future__ import annotations

import argparse
import sys

from ..evaluation.perplexity import text_perplexity
from ..evaluation.results import write_json
from .generate import add_model_arguments, load_model
from .progress import progress


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text file (CRLF line ends are read as LF)")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens the model reads at once (default: its max_position_embeddings less the meta tokens)")
    p.add_argument("--stride", type=int, default=None,
                   help="new tokens scored per window (default: max-length / 2; max-length: disjoint windows)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    p.add_argument("--out", default=None, metavar="FILE.json", help="also write the numbers as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        print(f"hymba perplexity: --text {args.text}: no such file", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:
        print(f"hymba perplexity: --text {args.text} is not UTF-8 text ({e})", file=sys.stderr)
        return 2
    try:
        model, tokenizer = load_model(args)
        model.eval()
        with progress("windows") as update:
            result = text_perplexity(model, tokenizer, text, max_length=args.max_length, stride=args.stride,
                                     batch_size=args.batch_size, progress=update)
    except (ValueError, FileNotFoundError) as e:
        print(f"hymba perplexity: {e}", file=sys.stderr)
        return 2
    r = result.to_dict()
    print(f"text: {args.text} ({r['bytes']:,} bytes, {r['words']:,} words)")
    print(f"windows: {r['windows']} (max length {r['max_length']}, stride {r['stride']}), tokens scored: {r['tokens']:,}")
    print(f"nll: {r['nll_per_token']:.4f} nats/token | perplexity: {r['perplexity']:.3f} | "
          f"word perplexity: {r['word_perplexity']:.3f} | bits per byte: {r['bits_per_byte']:.4f}")
    if args.out:
        write_json(args.out, {"model": args.model, "text": args.text, **r})
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
