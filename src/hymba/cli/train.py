"""`hymba train`: train a model from scratch (or continue one) on a prepared dataset.

    hymba train --config configs/tinyshakespeare.yaml
    hymba train --preset tiny --data data/shakespeare --out runs/tiny train.max_steps=500 optim.lr=1e-3
    torchrun --nproc_per_node 2 -m hymba.cli train --config cfg.yaml distributed.strategy=ddp
    hymba train --config cfg.yaml --resume           # continue the newest checkpoint of train.out_dir
"""

from __future__ import annotations

import argparse
import json
import sys

from ..training import distributed
from ..training.config import TrainConfig, TrainConfigError
from ..training.data import DataError
from ..training.trainer import Trainer, TrainingError


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by train, sft and dpo."""
    p.add_argument("--config", metavar="FILE.yaml", help="a training config (see configs/)")
    p.add_argument("--out", metavar="DIR", help="run directory (train.out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the run directory")
    p.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint directory")
    p.add_argument("--max-steps", type=int, help="train.max_steps")
    p.add_argument("--device", help="train.device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (lora.enabled=true)")

def add_overrides(p: argparse.ArgumentParser, options) -> None:
    """`section.key=value` overrides, which may come before, between or after the options (argparse alone
    stops taking options at the first positional: the rest is re-parsed by `merge_options`)."""
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="section.key=value",
                   help="config overrides, e.g. optim.lr=1e-3 train.batch_size=16 model.config.hidden_size=256")
    p.set_defaults(_options=options)


def merge_options(args: argparse.Namespace) -> argparse.Namespace:
    """Options that followed an override land among the overrides: parse them and set them on `args`."""
    if not any(a.startswith("-") for a in args.overrides):
        return args
    fresh = argparse.ArgumentParser(prog="hymba", add_help=False)
    args._options(fresh)
    fresh.add_argument("overrides", nargs="*")
    extra = fresh.parse_intermixed_args(args.overrides)
    for key, value in vars(extra).items():
        if key == "overrides":
            args.overrides = value
        elif value != fresh.get_default(key):
            setattr(args, key, value)
    return args


def _options(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="train a fresh model of this preset (model.preset)")
    src.add_argument("--init-from", metavar="DIR", help="start from this checkpoint (model.init_from)")
    p.add_argument("--data", metavar="DIR", help="a `hymba prepare` directory (data.path)")
    add_common_arguments(p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    _options(p)
    add_overrides(p, _options)


def build_config(args: argparse.Namespace, task: str):
    """The config file (or defaults), then the command-line flags, then the key=value overrides."""
    cfg = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    if args.config and cfg.task != task:
        command = {"pretrain": "train"}.get(cfg.task, cfg.task)
        raise TrainConfigError(f"{args.config} is a {cfg.task!r} config: run it with `hymba {command}`")
    flags = [f"task={task}"]
    for name, key in (("preset", "model.preset"), ("init_from", "model.init_from"), ("model", "model.init_from"),
                      ("data", "data.path"), ("val_data", "data.val_path"), ("reference", "dpo.reference"), ("out", "train.out_dir"),
                      ("max_steps", "train.max_steps"), ("device", "train.device")):
        value = getattr(args, name, None)
        if value is not None:
            flags.append(f"{key}={value}")
    if getattr(args, "lora", False):
        flags.append("lora.enabled=true")
    if getattr(args, "preset", None):
        flags.append("model.init_from=null")
    if getattr(args, "init_from", None) or getattr(args, "model", None):
        flags.append("model.preset=null")
    # Flags go in as overrides, so a value with spaces or YAML-looking text stays a string.
    cfg.apply_overrides([_quote(f) for f in flags] + list(args.overrides))
    return cfg


def _quote(item: str) -> str:
    key, value = item.split("=", 1)
    if key in ("model.init_from", "data.path", "data.val_path", "train.out_dir", "model.preset",
               "dpo.reference") and value != "null":
        value = json.dumps(value)
    return f"{key}={value}"


def run_training(args: argparse.Namespace, task: str) -> int:
    try:
        cfg = build_config(merge_options(args), task)
        result = Trainer(cfg, resume=args.resume_from or args.resume).fit()
    except (TrainConfigError, TrainingError, DataError, FileNotFoundError, ValueError) as e:
        print(f"hymba {task if task != 'pretrain' else 'train'}: error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown()
    return 0 if result.steps else 1


def run(args: argparse.Namespace) -> int:
    return run_training(args, "pretrain")
