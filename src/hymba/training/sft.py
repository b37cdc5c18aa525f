"""Supervised fine-tuning on chat data: the loss only on what the assistant says.

Each JSONL line holds `{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}`.
A conversation is rendered with the tokenizer's chat template and tokenized once, whole, the way `hymba
chat` tokenizes a prompt (no special tokens added beyond the template's). An assistant turn's text is what
the template adds between the conversation so far rendered with the generation prompt and the conversation
including that turn; tokens starting inside such a span get labels, every other token gets -100. When the
template does not end a reply with EOS (the release's does not), EOS is inserted after it and labelled, so
the model learns where to stop (`sft.eos_after_assistant`: auto | never).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..tokenizer import load_tokenizer
from . import distributed as D
from .config import TrainConfig
from .data import BatchSchedule, DataError, iter_jsonl
from .task import Batch, TrainingError, even_shards, pad_batch

IGNORE = -100


def read_jsonl(path: str, required: tuple[str, ...]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line, each checked for the `required` fields."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    records = []
    for lineno, record in iter_jsonl(path):
        missing = [k for k in required if k not in record]
        if missing:
            raise DataError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        records.append((lineno, record))
    if not records:
        raise DataError(f"{path}: no examples")
    return records


def check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{i}] must be an object with string 'role' and 'content'")
    return messages


def assistant_spans(tokenizer, messages: list[dict[str, str]], only_last: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (of the last one only, with
    only_last)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    spans = []
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if only_last:
        turns = turns[-1:]
    for i in turns:
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True) if i else ""
        after = tokenizer.apply_chat_template(messages[:i + 1], add_generation_prompt=False)
        if not (after.startswith(before) and text.startswith(after)):
            raise DataError("the chat template does not render a conversation as the concatenation of its turns "
                            "(rendering a prefix of the messages changes earlier text), so assistant turns cannot be "
                            "located; SFT needs a prefix-stable template")
        if len(after) > len(before):
            spans.append((len(before), len(after)))
    return text, spans


def tokenize_chat(tokenizer, messages: list[dict[str, str]], eos_after_assistant: str = "auto",
                  only_last: bool = False) -> tuple[list[int], list[int]]:
    """(input ids, labels): labels equal the ids on assistant tokens (and inserted EOS), -100 elsewhere."""
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError("the conversation has no assistant message: nothing to learn")
    text, spans = assistant_spans(tokenizer, messages, only_last)
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    if eos is None and eos_after_assistant != "never":
        raise DataError(f"{tokenizer.source}: no eos_token, so replies cannot be ended (sft.eos_after_assistant=never "
                        "to train without one)")
    ids: list[int] = []
    labels: list[int] = []
    span_of = [next((k for k, (s, e) in enumerate(spans) if s <= start < e), -1) for start, _ in enc.offsets]
    for j, (tid, k) in enumerate(zip(enc.ids, span_of)):
        ids.append(tid)
        labels.append(tid if k >= 0 else IGNORE)
        ends_span = k >= 0 and (j + 1 == len(enc.ids) or span_of[j + 1] != k)
        if ends_span and eos_after_assistant != "never" and tid != eos:
            ids.append(eos)
            labels.append(eos)
    if all(label == IGNORE for label in labels):
        raise DataError("no assistant token survived tokenization (empty replies?)")
    return ids, labels


def load_tokenizer_for(cfg: TrainConfig):
    """The tokenizer of data.tokenizer, else of model.init_from."""
    directory = cfg.data.tokenizer or cfg.model.init_from
    if not directory or not os.path.exists(os.path.join(directory, "tokenizer.json")):
        raise TrainingError("fine-tuning needs a tokenizer: set model.init_from to a checkpoint that has "
                            "tokenizer.json, or data.tokenizer to a tokenizer directory")
    return load_tokenizer(directory), directory


class ExampleLoader:
    """Shuffled global batches of pre-tokenized examples; `collate` builds this rank's tensors."""

    def __init__(self, examples: list, global_batch: int, info: D.DistInfo, seed: int, shuffle: bool, collate):
        self.examples, self.collate = examples, collate
        self.schedule = BatchSchedule(len(examples), global_batch, info.rank, info.world_size, seed, shuffle)

    def next_batch(self) -> Batch:
        return self.collate([self.examples[i] for i in self.schedule.next_indices()])

    def state_dict(self) -> dict[str, int]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.schedule.load_state_dict(state)


class ChatDataTask:
    """What SFT and DPO share: the checkpoint's tokenizer, JSONL records tokenized up front (too-long ones
    refused, or skipped with data.drop_long), shuffled global batches, and a model whose vocabulary covers
    the tokenizer. Subclasses say how a record is tokenized and how a batch is collated and scored."""

    name = ""
    fields: tuple[str, ...] = ()  # required JSONL fields
    unit = "example"  # what one record is called in messages
    data_help = ""  # what data.path must be

    def __init__(self) -> None:
        self.tokenizer_dir: str | None = None
        self.device = torch.device("cpu")
        self.skipped_long = 0

    def tokenize(self, record: dict[str, Any], where: str, cfg: TrainConfig) -> tuple[Any, int]:
        """(the tokenized item, its longest row in tokens)."""
        raise NotImplementedError

    def _load(self, path: str, cfg: TrainConfig) -> list:
        items = []
        for lineno, record in read_jsonl(path, self.fields):
            where = f"{path}:{lineno}"
            try:
                item, length = self.tokenize(record, where, cfg)
            except DataError as e:
                raise DataError(e if str(e).startswith(where) else f"{where}: {e}") from None
            if length > cfg.data.seq_len:
                if not cfg.data.drop_long:
                    raise DataError(f"{where}: {length} tokens, more than data.seq_len={cfg.data.seq_len} (raise "
                                    f"data.seq_len, or data.drop_long=true to skip such {self.unit}s)")
                self.skipped_long += 1
                continue
            items.append(item)
        return items

    def load_tokenizer(self, cfg: TrainConfig) -> None:
        self.tokenizer, self.tokenizer_dir = load_tokenizer_for(cfg)
        self.pad_id = next(i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0) if i is not None)

    def prepare(self, cfg: TrainConfig, info: D.DistInfo) -> None:
        if not cfg.data.path:
            raise TrainingError(f"{self.name.upper()} needs data.path: {self.data_help}")
        if self.tokenizer_dir is None:
            self.load_tokenizer(cfg)
        self.train = self._load(cfg.data.path, cfg)
        self.val = self._load(cfg.data.val_path, cfg) if cfg.data.val_path else []
        if not self.train:
            raise DataError(f"{cfg.data.path}: every {self.unit} is longer than data.seq_len={cfg.data.seq_len}")
        self.shuffle = cfg.data.shuffle
        self.device = info.device
        if self.skipped_long and info.is_main:
            print(f"skipped {self.skipped_long} {self.unit}(s) longer than data.seq_len={cfg.data.seq_len}")

    def model_overrides(self) -> dict[str, Any]:
        t = self.tokenizer
        return {"vocab_size": t.vocab_size, "bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id,
                "pad_token_id": t.pad_token_id}

    def check_model(self, model: nn.Module) -> None:
        if model.config.vocab_size < self.tokenizer.vocab_size:
            raise TrainingError(f"tokenizer {self.tokenizer_dir} has {self.tokenizer.vocab_size} ids, the model only "
                                f"{model.config.vocab_size}")

    def attach(self, model: nn.Module, cfg: TrainConfig, info: D.DistInfo) -> None:
        pass

    def collate(self, items: list) -> Batch:
        raise NotImplementedError

    def train_loader(self, global_batch: int, info: D.DistInfo, seed: int) -> ExampleLoader:
        return ExampleLoader(self.train, global_batch, info, seed, self.shuffle, self.collate)

    def val_batches(self, micro_batch: int, info: D.DistInfo, max_items: int) -> Iterator[Batch]:
        for indices in even_shards(len(self.val), micro_batch, info, max_items):
            yield self.collate([self.val[i] for i in indices])

    def tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())


class SFTTask(ChatDataTask):
    name = "sft"
    fields = ("messages",)
    data_help = 'a JSONL file of {"messages": [...]} conversations'

    def tokenize(self, record, where, cfg):
        ids, labels = tokenize_chat(self.tokenizer, check_messages(record["messages"], where),
                                    cfg.sft.eos_after_assistant)
        return (ids, labels), len(ids)

    def collate(self, examples: list[tuple[list[int], list[int]]]) -> Batch:
        ids = pad_batch([e[0] for e in examples], self.pad_id)
        labels = pad_batch([e[1] for e in examples], IGNORE)
        mask = pad_batch([[1] * len(e[0]) for e in examples], 0)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def count(self, batch: Batch) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        labels = batch["labels"].to(self.device)
        out = model(ids, attention_mask=mask, labels=labels, loss_reduction="sum", return_logits=False)
        return out.loss, {}
