"""The training configuration: a YAML file (sections below), or a preset, plus `section.key=value` overrides.

    task: pretrain                      # pretrain | sft | dpo
    model: {preset: hymba-125m, config: {vocab_size: 8192}}   # or init_from: path/to/checkpoint
    data: {path: data/gutenberg, seq_len: 1024}
    optim: {lr: 3.0e-3, min_lr: 1.0e-5, weight_decay: 0.1, grad_clip: 1.0}
    schedule: {name: wsd, warmup_steps: 200, decay_fraction: 0.2}
    train: {out_dir: runs/gutenberg, batch_size: 64, micro_batch_size: 8, max_steps: 5000}
    distributed: {strategy: fsdp}

Every key is checked: an unknown one is an error that lists the known ones.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import HymbaError


class TrainConfigError(HymbaError, ValueError):
    """A training configuration that names unknown keys or impossible values."""


@dataclass
class ModelSection:
    preset: str | None = None  # a HymbaConfig preset, for training from scratch
    init_from: str | None = None  # a checkpoint directory to start from (fine-tuning, continued pretraining)
    config: dict[str, Any] = field(default_factory=dict)  # HymbaConfig overrides on top of the preset
    kernels: str = "auto"
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile every decoder layer


@dataclass
class DataSection:
    path: str | None = None  # pretrain: a `hymba prepare` directory; sft/dpo: a JSONL file
    val_path: str | None = None  # sft/dpo: a validation JSONL (pretrain uses the prepared val split)
    seq_len: int = 256  # pretrain: window length; sft/dpo: the longest example allowed (longer ones: see drop_long)
    tokenizer: str | None = None  # default: the prepared dataset's, or the init_from checkpoint's
    drop_long: bool = False  # sft/dpo: skip (and count) examples longer than seq_len instead of failing
    shuffle: bool = True


@dataclass
class OptimSection:
    lr: float = 3e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0: off
    fused: Any = "auto"


@dataclass
class ScheduleSection:
    name: str = "wsd"  # wsd | cosine | constant
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # wsd
    decay_shape: str = "linear"  # wsd: linear | cosine | sqrt


@dataclass
class TrainSection:
    out_dir: str = "runs/train"
    batch_size: int = 32  # global: sequences (or examples, or preference pairs) per optimizer step
    micro_batch_size: int = 0  # per rank per forward; 0: batch_size / world_size (no accumulation)
    max_steps: int = 1000
    time_budget_s: float = 0.0  # > 0: stop after this many seconds, the schedule laid out over them
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | fp32 | bf16
    threads: int = 0  # CPU threads for torch; 0: leave torch's default
    adaptive_threads: bool = False  # CPU: time 1 thread against all every few dozen steps, keep the faster
    eval_interval: int = 100  # 0: only at the end
    eval_batches: int = 20  # validation batches (of batch_size items) per evaluation; 0: the whole validation set
    log_interval: int = 10
    save_interval: int = 500  # 0: only at the end
    keep_last: int = 3
    max_bad_steps: int = 10  # stop after this many non-finite steps in a row
    progress: bool = True
    tensorboard: bool = True
    plot: bool = True


@dataclass
class DistributedSection:
    strategy: str = "fsdp"  # fsdp (FSDP2 fully_shard) | ddp
    backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU


@dataclass
class SFTSection:
    eos_after_assistant: str = "auto"  # auto: EOS after a reply unless the template ends it with one | never


@dataclass
class DPOSection:
    beta: float = 0.1
    label_smoothing: float = 0.0  # conservative DPO: assumed probability that a preference label is flipped
    reference: str | None = None  # a checkpoint; default: the starting model (or, with LoRA, the base weights)


@dataclass
class LoraSection:
    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["in_proj", "out_proj", "gate_proj", "up_proj",
                                                                "down_proj"])
    save: str = "both"  # merged (released format, weights merged) | adapter (peft adapter only) | both


TASKS = ("pretrain", "sft", "dpo")


def _yaml():
    try:
        import yaml
    except ImportError:
        raise TrainConfigError("training configs need PyYAML: pip install 'hymba[train]'") from None
    return yaml


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Give a value the type of the field's current value (YAML reads `3e-4` as a string, `1` as an int)."""
    try:
        if isinstance(current, bool):
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise ValueError
        elif isinstance(current, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        elif isinstance(current, int):
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) else int(value)
        elif isinstance(current, list) and not isinstance(value, list):
            raise ValueError
        elif isinstance(current, dict) and not isinstance(value, dict):
            raise ValueError
    except (TypeError, ValueError):
        raise TrainConfigError(f"{where} = {value!r}: expected a {type(current).__name__} like {current!r}") from None
    return value


@dataclass
class TrainConfig:
    task: str = "pretrain"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    sft: SFTSection = field(default_factory=SFTSection)
    dpo: DPOSection = field(default_factory=DPOSection)
    lora: LoraSection = field(default_factory=LoraSection)

    # ---- building -----------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "TrainConfig":
        if not isinstance(d, dict):
            raise TrainConfigError(f"{source}: expected a mapping of sections, got {type(d).__name__}")
        cfg = cls()
        for key, value in d.items():
            cfg._set(key, value, source)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str) -> "TrainConfig":
        yaml = _yaml()

        if not os.path.exists(path):
            raise FileNotFoundError(f"training config {path} does not exist")
        with open(path, encoding="utf-8") as f:
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise TrainConfigError(f"{path} is not valid YAML: {e}") from None
        return cls.from_dict(data, source=path)

    def apply_overrides(self, overrides: list[str]) -> "TrainConfig":
        """`section.key=value` (value parsed as YAML: numbers, booleans, lists, null); `model.config.X=V` sets a
        HymbaConfig field."""
        yaml = _yaml()

        for item in overrides:
            if "=" not in item:
                raise TrainConfigError(f"override {item!r} is not of the form section.key=value")
            key, raw = item.split("=", 1)
            try:
                value = yaml.safe_load(raw) if raw != "" else ""
            except yaml.YAMLError:
                value = raw
            parts = key.strip().split(".")
            if len(parts) == 1:
                self._set(parts[0], value, "override")
            else:
                nested: Any = value
                for p in reversed(parts[1:]):
                    nested = {p: nested}
                self._set(parts[0], nested, "override", merge=True)
        self.validate()
        return self

    def _set(self, key: str, value: Any, source: str, merge: bool = False) -> None:
        names = [f.name for f in dataclasses.fields(self)]
        if key not in names:
            raise TrainConfigError(f"{source}: unknown section {key!r}; known: {', '.join(names)}")
        current = getattr(self, key)
        if not dataclasses.is_dataclass(current):
            setattr(self, key, value)
            return
        if not isinstance(value, dict):
            raise TrainConfigError(f"{source}: section {key!r} must be a mapping, got {value!r}")
        known = {f.name for f in dataclasses.fields(current)}
        for k, v in value.items():
            if k not in known:
                raise TrainConfigError(f"{source}: unknown key {key}.{k}; known keys of {key}: {', '.join(sorted(known))}")
            if merge and isinstance(getattr(current, k), dict) and isinstance(v, dict):
                getattr(current, k).update(v)
            else:
                setattr(current, k, _coerce(v, getattr(current, k), f"{source}: {key}.{k}"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return _yaml().safe_dump(self.to_dict(), sort_keys=False)

    # ---- checks ---------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise TrainConfigError(msg)

        t = self.train
        need(self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}")
        need(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
        need(t.micro_batch_size >= 0, f"train.micro_batch_size must be >= 0, got {t.micro_batch_size}")
        need(t.max_steps >= 1, f"train.max_steps must be >= 1, got {t.max_steps}")
        need(t.time_budget_s >= 0, f"train.time_budget_s must be >= 0, got {t.time_budget_s}")
        need(t.precision in ("auto", "fp32", "bf16"), f"train.precision must be auto, fp32 or bf16, got {t.precision!r}")
        for k in ("eval_interval", "eval_batches", "save_interval", "threads"):
            need(getattr(t, k) >= 0, f"train.{k} must be >= 0, got {getattr(t, k)}")
        need(t.log_interval >= 1, f"train.log_interval must be >= 1, got {t.log_interval}")
        need(t.keep_last >= 1, f"train.keep_last must be >= 1, got {t.keep_last}")
        need(t.max_bad_steps >= 1, f"train.max_bad_steps must be >= 1, got {t.max_bad_steps}")
        need(self.data.seq_len >= 1, f"data.seq_len must be >= 1, got {self.data.seq_len}")
        need(self.optim.lr > 0, f"optim.lr must be positive, got {self.optim.lr}")
        need(len(self.optim.betas) == 2, f"optim.betas must be two numbers, got {self.optim.betas}")
        need(self.optim.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {self.optim.grad_clip}")
        need(self.distributed.strategy in ("ddp", "fsdp"),
             f"distributed.strategy must be ddp or fsdp, got {self.distributed.strategy!r}")
        need(self.lora.save in ("merged", "adapter", "both"),
             f"lora.save must be merged, adapter or both, got {self.lora.save!r}")
        need(self.sft.eos_after_assistant in ("auto", "never"),
             f"sft.eos_after_assistant must be auto or never, got {self.sft.eos_after_assistant!r}")
        need(self.model.preset is None or self.model.init_from is None,
             "model.preset and model.init_from are exclusive: a preset builds a fresh model, init_from loads one")
        need(self.dpo.beta > 0, f"dpo.beta must be positive, got {self.dpo.beta}")
        need(0 <= self.dpo.label_smoothing < 0.5, f"dpo.label_smoothing must be in [0, 0.5), got {self.dpo.label_smoothing}")
