"""`hymba demo`: train a small Hymba from scratch on this machine's Python standard library, in ~5 minutes on a
CPU, then report validation perplexity, the cache size against a transformer, and a sampled continuation."""

from __future__ import annotations

import argparse
import sys

from ..training.demo import run_demo


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default: runs/demo)")
    p.add_argument("--minutes", type=float, default=None,
                   help="training budget in minutes (default: 5 on a CPU, 2 on a GPU)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    try:
        run_demo(out=args.out, minutes=args.minutes, device=args.device, seed=args.seed)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"hymba demo: error: {e}", file=sys.stderr)
        return 2
    return 0
