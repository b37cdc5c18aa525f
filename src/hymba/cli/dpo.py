"""`hymba dpo`: direct preference optimization on JSONL pairs ({"prompt", "chosen", "rejected"}).

    hymba dpo --model runs/sft/checkpoints/step-00000200 --data prefs.jsonl --out runs/dpo dpo.beta=0.1
    hymba dpo --model CKPT --data prefs.jsonl --lora           # reference = the model with adapters off
"""

from __future__ import annotations

import argparse

from .train import add_common_arguments, add_overrides, run_training


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="the policy's starting checkpoint (model.init_from)")
    p.add_argument("--data", metavar="FILE.jsonl", help="training preference pairs (data.path)")
    p.add_argument("--val-data", metavar="FILE.jsonl", help="validation pairs (data.val_path)")
    p.add_argument("--reference", metavar="DIR", help="reference checkpoint (dpo.reference; default: --model)")
    add_common_arguments(p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    _options(p)
    add_overrides(p, _options)


def run(args: argparse.Namespace) -> int:
    return run_training(args, "dpo")
