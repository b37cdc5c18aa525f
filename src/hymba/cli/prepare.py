"""`hymba prepare`: tokenize text files into training shards (numpy memmaps + manifest.json).

    hymba prepare --input corpus/*.txt.gz --tokenizer train:8192 --out data/books --val-fraction 0.01
    hymba prepare --input docs.jsonl --tokenizer path/to/Hymba-1.5B-Base --out data/docs --val-input val.jsonl
"""

from __future__ import annotations

import argparse
import sys

from ..training.data import DEFAULT_INCLUDE, DataError, prepare_dataset
from ..training.tokenizer_train import parse_tokenizer_spec


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="text (.txt, .txt.gz), JSONL (.jsonl[.gz], a 'text' field) or Parquet files, or directories")
    p.add_argument("--tokenizer", required=True, metavar="DIR|train:VOCAB",
                   help="a directory with tokenizer.json (e.g. a checkpoint), or train:VOCAB_SIZE to train a "
                        "byte-level BPE on the input")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created whole, atomically)")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="share of the input documents held out for validation (default 0)")
    p.add_argument("--val-input", nargs="+", default=[], metavar="PATH", help="files that go to validation whole")
    p.add_argument("--text-field", default="text", help="JSONL field / Parquet column holding the text")
    p.add_argument("--separator", default="<|endoftext|>",
                   help="document separator inside text files (default <|endoftext|>; '' for one document per file)")
    p.add_argument("--include", nargs="+", default=None, metavar="GLOB",
                   help="file patterns taken from input directories (default: *.txt *.txt.gz *.jsonl *.jsonl.gz "
                        "*.parquet)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file (soft limit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation draw")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def run(args: argparse.Namespace) -> int:
    try:
        tokenizer = parse_tokenizer_spec(args.tokenizer)
        prepare_dataset(args.input, args.out, tokenizer, val_inputs=args.val_input, val_fraction=args.val_fraction,
                        seed=args.seed, shard_tokens=args.shard_tokens, text_field=args.text_field,
                        separator=args.separator or None, include=args.include or DEFAULT_INCLUDE,
                        overwrite=args.overwrite)
    except (DataError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"hymba prepare: error: {e}", file=sys.stderr)
        return 2
    return 0
