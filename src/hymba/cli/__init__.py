"""The `hymba` command. Each subcommand lives in its own module (`hymba/cli/<name>.py`) exposing
`add_arguments(parser)` and `run(args) -> int | None`, and is a thin call into the library."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("hymba.cli.info", "build a model from a preset or checkpoint; print parameters, cache size and a text's loss"),
    "generate": ("hymba.cli.generate", "generate text from a prompt, streaming"),
    "chat": ("hymba.cli.chat", "multi-turn chat with an instruct checkpoint"),
    "cache-size": ("hymba.cli.cache_size", "decoding cache of a model vs transformers of similar size"),
    "prepare": ("hymba.cli.prepare", "tokenize text files into training shards"),
    "train": ("hymba.cli.train", "train a model from scratch or continue one"),
    "sft": ("hymba.cli.sft", "supervised fine-tuning on chat data"),
    "dpo": ("hymba.cli.dpo", "direct preference optimization on preference pairs"),
    "demo": ("hymba.cli.demo", "the built-in demo: train a small Hymba on this machine in ~5 minutes"),
    "eval": ("hymba.cli.eval", "lm-evaluation-harness tasks on local data"),
    "perplexity": ("hymba.cli.perplexity", "sliding-window perplexity of a text file"),
    "recall": ("hymba.cli.recall", "synthetic recall tasks (MQAR, needle in a haystack)"),
}


def _available() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, help_)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hymba", description="Hymba hybrid-head language models in plain PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_) in _available().items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = importlib.import_module(args._module).run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
