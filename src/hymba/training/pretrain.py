"""Pretraining: next-token prediction over packed windows of a `hymba prepare` dataset."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from . import distributed as D
from .config import TrainConfig
from .data import DataError, PackedDataset, PackedLoader, load_manifest
from .task import Batch, TrainingError, even_shards


class PretrainTask:
    name = "pretrain"

    def __init__(self) -> None:
        self.tokenizer_dir: str | None = None
        self.manifest: dict[str, Any] = {}
        self.device = torch.device("cpu")

    def prepare(self, cfg: TrainConfig, info: D.DistInfo) -> None:
        path = cfg.data.path
        if not path:
            raise TrainingError("pretraining needs data.path: a directory made by `hymba prepare`")
        self.manifest = load_manifest(path)
        self.train = PackedDataset.from_prepared(path, "train", cfg.data.seq_len)
        self.val = PackedDataset.from_prepared(path, "val", cfg.data.seq_len)
        if len(self.train) == 0:
            raise DataError(f"{path}: the train split has fewer than seq_len + 1 = {cfg.data.seq_len + 1} tokens")
        tok = cfg.data.tokenizer or os.path.join(path, self.manifest["tokenizer"]["dir"])
        self.tokenizer_dir = tok if os.path.exists(os.path.join(tok, "tokenizer.json")) else None
        self.shuffle = cfg.data.shuffle
        self.device = info.device

    def model_overrides(self) -> dict[str, Any]:
        m = self.manifest
        return {"vocab_size": m["vocab_size"], "bos_token_id": m.get("bos_token_id"),
                "eos_token_id": m.get("eos_token_id"), "pad_token_id": m.get("pad_token_id")}

    def check_model(self, model: nn.Module) -> None:
        if model.config.vocab_size < self.manifest["vocab_size"]:
            raise TrainingError(f"the data's tokenizer has {self.manifest['vocab_size']} ids but the model's vocabulary "
                                f"only {model.config.vocab_size}: prepare the data with the model's tokenizer")

    def attach(self, model: nn.Module, cfg: TrainConfig, info: D.DistInfo) -> None:
        pass

    def train_loader(self, global_batch: int, info: D.DistInfo, seed: int) -> PackedLoader:
        return PackedLoader(self.train, global_batch, info.rank, info.world_size, seed, self.shuffle)

    def val_batches(self, micro_batch: int, info: D.DistInfo, max_items: int) -> Iterator[Batch]:
        for indices in even_shards(len(self.val), micro_batch, info, max_items):
            yield {"tokens": torch.from_numpy(self.val.batch(indices))}

    def count(self, batch: Batch) -> int:
        tokens = batch["tokens"]
        return tokens.shape[0] * (tokens.shape[1] - 1)

    def tokens(self, batch: Batch) -> int:
        return self.count(batch)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens = batch["tokens"].to(self.device, non_blocking=True)
        out = model(tokens[:, :-1], labels=tokens[:, 1:], label_shift=0, loss_reduction="sum", return_logits=False)
        return out.loss, {}
