"""AdamW with the usual weight-decay exemptions, and learning-rate schedules as plain functions of the step.

Decay applies to matrices (projections, embeddings); norms, biases, the meta tokens and the SSM's A_log and
D are exempt (decaying A_log would pull every channel's time scale towards 1, D is a skip gain).

Schedules return a multiplier of the peak learning rate. Warmup is linear over `warmup_steps`; after it:
- "wsd": warmup-stable-decay (the paper's schedule): the peak until the last `decay_fraction` of training,
  then down to `min_lr` along `decay_shape` ("linear", "cosine", or "sqrt": 1 - sqrt(t));
- "cosine": half a cosine from the peak to `min_lr` over the remaining steps;
- "constant": the peak throughout.
The position can be given as a fraction of training done instead of a step count (a run that stops on a time
budget lays its schedule out over the budget).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

SCHEDULES = ("wsd", "cosine", "constant")
DECAY_SHAPES = ("linear", "cosine", "sqrt")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Vectors (norm weights, biases, D) and, by name, the meta tokens and A_log."""
    if param.ndim < 2 or name.split(".")[-1] == "bias":
        return True
    return any(key in name for key in ("norm", "memory_tokens", "A_log"))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups (decay / no decay) over the trainable parameters, each parameter once (tied ones too)."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if is_no_decay(name, p) else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1, betas=(0.9, 0.95), eps: float = 1e-8,
                    fused: bool | str = "auto") -> torch.optim.AdamW:
    """AdamW over `param_groups`. fused="auto": the fused kernel when every parameter is on CUDA or the CPU
    (both have one in current PyTorch), else the multi-tensor one."""
    groups = param_groups(model, weight_decay)
    if fused == "auto":
        devices = {p.device.type for g in groups for p in g["params"]}
        fused = devices <= {"cuda"} or devices <= {"cpu"}
    kwargs = dict(lr=lr, betas=tuple(betas), eps=eps)
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError):  # e.g. DTensor parameters on a backend without a fused kernel
            pass
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


@dataclass(frozen=True)
class LRSchedule:
    lr: float
    total_steps: int
    name: str = "wsd"
    warmup_steps: int = 0
    min_lr: float = 0.0
    decay_fraction: float = 0.2  # wsd: share of training spent decaying
    decay_shape: str = "linear"  # wsd

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; expected one of {SCHEDULES}")
        if self.decay_shape not in DECAY_SHAPES:
            raise ValueError(f"unknown decay_shape {self.decay_shape!r}; expected one of {DECAY_SHAPES}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")
        if self.total_steps < 1 or self.warmup_steps < 0:
            raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got {self.total_steps}, {self.warmup_steps}")

    def __call__(self, step: int, progress: float | None = None) -> float:
        """The learning rate for optimizer step `step` (0-based). `progress` in [0, 1] (fraction of training
        done) replaces step / total_steps after the warmup when given."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if progress is None:
            span = max(1, self.total_steps - self.warmup_steps)
            done = min(1.0, (step - self.warmup_steps) / span)
            t_total = min(1.0, step / self.total_steps)
        else:
            done = t_total = min(1.0, max(0.0, progress))
        if self.name == "constant":
            return self.lr
        if self.name == "cosine":
            return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * done))
        # wsd: decay over the last decay_fraction of the whole run
        if self.decay_fraction == 0 or t_total < 1 - self.decay_fraction:
            return self.lr
        t = (t_total - (1 - self.decay_fraction)) / self.decay_fraction
        shape = {"linear": 1 - t, "cosine": 0.5 * (1 + math.cos(math.pi * t)), "sqrt": 1 - math.sqrt(t)}
        return self.min_lr + (self.lr - self.min_lr) * shape[self.decay_shape]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
