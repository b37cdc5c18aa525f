"""The `hymba` command. Each subcommand lives in its own module (`hymba/cli/<name>.py`) exposing
`add_arguments(parser)` and `run(args) -> int | None`, and is a thin call into the library."""

from __future__ import annotations

import argparse
import sys

from ..errors import HymbaError
from . import cache_size, chat, demo, dpo, eval, generate, info, perplexity, prepare, recall, serve, sft, train

# subcommand -> (module with add_arguments(parser) and run(args), one-line help)
COMMANDS = {
    "info": (info, "build a model from a preset or checkpoint; print parameters, cache size and a text's loss"),
    "generate": (generate, "generate text from a prompt, streaming"),
    "chat": (chat, "multi-turn chat with an instruct checkpoint"),
    "cache-size": (cache_size, "decoding cache of a model vs transformers of similar size"),
    "prepare": (prepare, "tokenize text files into training shards"),
    "train": (train, "train a model from scratch or continue one"),
    "sft": (sft, "supervised fine-tuning on chat data"),
    "dpo": (dpo, "direct preference optimization on preference pairs"),
    "demo": (demo, "the built-in demo: train a small Hymba on this machine in ~5 minutes"),
    "eval": (eval, "lm-evaluation-harness tasks on local data"),
    "perplexity": (perplexity, "sliding-window perplexity of a text file"),
    "recall": (recall, "synthetic recall tasks (MQAR, needle in a haystack)"),
    "serve": (serve, "an OpenAI-compatible HTTP server with continuous batching"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hymba", description="Hymba hybrid-head language models in plain PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_run=module.run)
        module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args._run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except HymbaError as e:  # what a command did not report itself: one line, not a traceback
        print(f"hymba {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
