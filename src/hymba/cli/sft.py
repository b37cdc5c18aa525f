"""`hymba sft`: supervised fine-tuning on chat data (JSONL of {"messages": [...]}), loss on assistant tokens.

    hymba sft --model runs/demo/model --data chat.jsonl --out runs/sft train.max_steps=200
    hymba sft --model CKPT --data chat.jsonl --lora lora.r=16      # LoRA adapters through peft
"""

from __future__ import annotations

import argparse

from .train import add_common_arguments, add_overrides, run_training


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="the checkpoint to fine-tune (model.init_from)")
    p.add_argument("--data", metavar="FILE.jsonl", help="training conversations (data.path)")
    p.add_argument("--val-data", metavar="FILE.jsonl", help="validation conversations (data.val_path)")
    add_common_arguments(p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    _options(p)
    add_overrides(p, _options)


def run(args: argparse.Namespace) -> int:
    return run_training(args, "sft")
