"""What a kind of training (pretraining, SFT, DPO) brings to the shared loop, and the pieces tasks share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import HymbaError
from . import distributed as D
from .config import TrainConfig


class TrainingError(HymbaError, RuntimeError):
    """Training cannot go on (diverged, misconfigured data/model pairing, ...)."""


Batch = dict[str, Any]


class Task(Protocol):
    """What a kind of training brings to the loop."""

    name: str
    tokenizer_dir: str | None  # copied into every checkpoint

    def prepare(self, cfg: TrainConfig, info: D.DistInfo) -> None:
        """Load data (and tokenizer); called before the model is built."""

    def model_overrides(self) -> dict[str, Any]:
        """HymbaConfig fields the data dictates for a fresh model (vocab size, special token ids)."""

    def check_model(self, model: nn.Module) -> None:
        """Raise if the model cannot be trained on this data."""

    def attach(self, model: nn.Module, cfg: TrainConfig, info: D.DistInfo) -> None:
        """Last set-up with the (unwrapped, LoRA-adapted) model, e.g. a DPO reference."""

    def train_loader(self, global_batch: int, info: D.DistInfo, seed: int):
        """An object with next_batch() -> Batch (this rank's part), state_dict(), load_state_dict()."""

    def val_batches(self, micro_batch: int, info: D.DistInfo, max_items: int) -> Iterator[Batch]:
        """This rank's validation micro-batches over the first `max_items` items (0: all), the same number on
        every rank (see `even_shards`); empty if there is no validation data."""

    def count(self, batch: Batch) -> int:
        """The units the loss is averaged over (target tokens, preference pairs)."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(sum of the loss over the batch's units, other metrics as sums over the same units)."""

    def tokens(self, batch: Batch) -> int:
        """Tokens processed (for tokens/s)."""


def pad_batch(rows: list[list[int]], pad_value: int) -> torch.Tensor:
    """Right-pad lists of ints to a [len(rows), longest] tensor."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def even_shards(num_items: int, micro_batch: int, info: D.DistInfo, max_items: int = 0) -> list[list[int]]:
    """Item indices of this rank's validation micro-batches. The first `max_items` items (0: all) are dealt in
    steps of micro_batch x world_size items, so every rank runs the same number of forwards (FSDP needs every
    rank in every one) and the items scored do not depend on the world size (when max_items is a multiple of
    the step, as batch_size multiples are)."""
    world = info.world_size
    per_step = micro_batch * world
    n = min(num_items, max_items) if max_items else num_items
    steps = n // per_step
    if steps == 0:
        per_rank = n // world
        if per_rank == 0:
            return []
        start = info.rank * per_rank
        return [list(range(start, start + per_rank))]
    return [list(range(s * per_step + info.rank * micro_batch, s * per_step + (info.rank + 1) * micro_batch))
            for s in range(steps)]
