"""Pretraining data: text files -> token shards on disk -> packed fixed-length training windows.

`prepare_dataset` reads plain text (`.txt`, `.txt.gz`; other extensions given explicitly are read as UTF-8
text), JSONL (`.jsonl`, `.jsonl.gz`: a `text` field per line) and Parquet (a `text` column), cuts it into
documents, tokenizes each as [BOS] + tokens + EOS (BOS when the tokenizer adds one), and appends the ids to
numpy memmap shards (uint16 when the vocabulary fits, else uint32) described by `manifest.json`. The output
directory appears whole or not at all.

`PackedDataset` sees each shard as consecutive windows of seq_len + 1 tokens overlapping by one token (the
inputs are the first seq_len, the targets the last seq_len), so every token of a shard except its first
and its tail (< seq_len tokens) is a target exactly once per epoch, and no window spans two shards.
`BatchSchedule` deals the window indices out: a fresh permutation per epoch from (seed, epoch), cut into
global batches, each split across data-parallel ranks; its position is two integers, so a resumed run
continues with exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

import bisect
import fnmatch
import gzip
import json
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import HymbaError
from ..tokenizer import load_tokenizer
from ..utils import atomic_dir, atomic_write_text
from .tokenizer_train import train_bpe_tokenizer

MANIFEST = "manifest.json"
FORMAT = "hymba-token-shards"
FORMAT_VERSION = 1
DOC_SEPARATOR = "<|endoftext|>"  # the Gutenberg shards' book separator (a line of its own)
DEFAULT_INCLUDE = ("*.txt", "*.txt.gz", "*.jsonl", "*.jsonl.gz", "*.parquet")


class DataError(HymbaError, ValueError):
    """Input data or a prepared dataset that cannot be used as it is."""


# ---- reading documents -------------------------------------------------------------------------------------------
def _kind(path: str) -> str:
    name = path.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def _open_text(path: str):
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def split_documents(text: str, separator: str | None = DOC_SEPARATOR) -> list[str]:
    """Cut `text` at `separator` (and the newline right after it); blank documents are dropped."""
    if not separator:
        parts = [text]
    else:
        parts = re.split(re.escape(separator) + r"\n?", text)
    return [p for p in parts if p.strip()]


def iter_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file (.gz allowed), each checked to be a
    JSON object; errors name the file and line."""
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, record


def iter_documents(path: str, text_field: str = "text", separator: str | None = DOC_SEPARATOR) -> Iterator[str]:
    """The documents of one input file (see the module docstring for the formats)."""
    kind = _kind(path)
    try:
        if kind == "text":
            with _open_text(path) as f:
                text = f.read()
            yield from split_documents(text, separator)
        elif kind == "jsonl":
            for lineno, record in iter_jsonl(path):
                if not isinstance(record.get(text_field), str):
                    raise DataError(f"{path}:{lineno}: expected an object with a string field {text_field!r}")
                if record[text_field].strip():
                    yield record[text_field]
        else:
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            if text_field not in pf.schema_arrow.names:
                raise DataError(f"{path}: no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)})")
            for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
                for value in batch.column(0).to_pylist():
                    if value is None:
                        continue
                    if not isinstance(value, str):
                        raise DataError(f"{path}: column {text_field!r} holds {type(value).__name__}, not text")
                    if value.strip():
                        yield value
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataError(f"{path}: cannot be read ({e})") from None


def expand_inputs(paths: Iterable[str], include: Iterable[str] = DEFAULT_INCLUDE) -> list[str]:
    """Files as given, and the files under directories that match `include` (sorted, recursive)."""
    include = tuple(include)
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for root, dirs, files in os.walk(p):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files)
                          if any(fnmatch.fnmatch(f, pat) for pat in include)]
            if not found:
                raise DataError(f"{p}: no files matching {', '.join(include)}")
            out += found
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist")
    return out


# ---- writing shards ----------------------------------------------------------------------------------------------
def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class _ShardWriter:
    """Appends documents to `{split}-NNNNN.bin`; a new shard starts once the current one holds `shard_tokens`
    (documents are never split across shards)."""

    def __init__(self, directory: str, split: str, dtype: np.dtype, shard_tokens: int):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file = None

    def append(self, ids: np.ndarray) -> None:
        if self._file is None or self.shards[-1]["tokens"] >= self.shard_tokens:
            self._roll()
        ids.astype(self.dtype, copy=False).tofile(self._file)
        self.shards[-1]["tokens"] += int(ids.size)
        self.shards[-1]["documents"] += 1

    def _roll(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._file = open(os.path.join(self.directory, name), "wb")
        self.shards.append({"file": name, "tokens": 0, "documents": 0})

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def summary(self) -> dict[str, Any]:
        return {"shards": self.shards, "tokens": sum(s["tokens"] for s in self.shards),
                "documents": sum(s["documents"] for s in self.shards)}


@dataclass
class _Doc:
    source: int
    text: str
    val: bool


def _documents(inputs: list[str], val_inputs: list[str], val_fraction: float, seed: int, text_field: str,
               separator: str | None) -> Iterator[_Doc]:
    """Every document once, in a fixed order, each assigned to train or val (by a seeded coin for `inputs`)."""
    rng = random.Random(seed)
    for i, path in enumerate(inputs):
        for text in iter_documents(path, text_field, separator):
            yield _Doc(i, text, val_fraction > 0 and rng.random() < val_fraction)
    for j, path in enumerate(val_inputs):
        for text in iter_documents(path, text_field, separator):
            yield _Doc(len(inputs) + j, text, True)


def _batched(docs: Iterator[_Doc], max_chars: int = 4_000_000) -> Iterator[list[_Doc]]:
    batch, size = [], 0
    for d in docs:
        batch.append(d)
        size += len(d.text)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _check_output(out: str, overwrite: bool) -> None:
    """`out` may be new, an empty directory, or (with overwrite) a dataset this function made; anything else is
    refused by name, so that --overwrite never deletes files it did not write."""
    if os.path.isfile(out):
        raise DataError(f"--out {out} is a file; prepare writes a directory")
    if not os.path.isdir(out) or not os.listdir(out):
        return
    if not overwrite:
        raise DataError(f"--out {out} already exists and is not empty (pass --overwrite / overwrite=True to "
                        "replace a prepared dataset)")
    try:
        with open(os.path.join(out, MANIFEST), encoding="utf-8") as f:
            ours = json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise DataError(f"refusing to overwrite {out}: it is not a dataset `hymba prepare` made (no {MANIFEST} of "
                        "its format there); remove it yourself or choose another --out")


def prepare_dataset(inputs: list[str], out: str, tokenizer: str | int, *, val_inputs: list[str] = (),
                    val_fraction: float = 0.0, seed: int = 0, shard_tokens: int = 100_000_000,
                    text_field: str = "text", separator: str | None = DOC_SEPARATOR,
                    include: Iterable[str] = DEFAULT_INCLUDE, overwrite: bool = False,
                    tokenizer_sample_chars: int = 1_000_000_000,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Tokenize `inputs` (files or directories) into `out`; return the manifest.

    tokenizer: a checkpoint/tokenizer directory, or an int to train a byte-level BPE of that vocabulary size
    on the training documents (at most `tokenizer_sample_chars` of them). val_fraction: the share of input
    documents (chosen by a seeded coin) kept for validation; when it picks none, the tail of the last
    document is used instead. val_inputs: files that go to validation whole."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise DataError(f"shard_tokens must be positive, got {shard_tokens}")
    inputs = expand_inputs(inputs, include)
    val_inputs = expand_inputs(val_inputs, include) if val_inputs else []
    _check_output(out, overwrite)
    t0 = time.time()

    if isinstance(tokenizer, int):
        log(f"training a byte-level BPE tokenizer ({tokenizer} ids) on {len(inputs)} file(s)")

        def training_texts() -> Iterator[str]:
            seen = 0
            for d in _documents(inputs, [], val_fraction, seed, text_field, separator):
                if d.val:
                    continue
                yield d.text[: tokenizer_sample_chars - seen]
                seen += len(d.text)
                if seen >= tokenizer_sample_chars:
                    return

        tok = train_bpe_tokenizer(training_texts(), tokenizer)
        tokenizer_source = f"train:{tokenizer}"
        log(f"  tokenizer trained in {time.time() - t0:.1f}s")
    else:
        tok = load_tokenizer(tokenizer)
        tokenizer_source = os.path.abspath(tokenizer)
    if tok.eos_token_id is None:
        raise DataError(f"tokenizer {tokenizer_source} has no eos_token: documents could not be separated")
    vocab = tok.vocab_size
    dtype = token_dtype(vocab)
    eos = np.array([tok.eos_token_id], dtype=np.int64)
    add_eos = not tok.add_eos_token

    sources = [{"path": os.path.abspath(p), "split": "train", "documents": 0, "characters": 0, "tokens": 0}
               for p in inputs]
    sources += [{"path": os.path.abspath(p), "split": "val", "documents": 0, "characters": 0, "tokens": 0}
                for p in val_inputs]
    with atomic_dir(out) as tmp:
        tok.save(os.path.join(tmp, "tokenizer"))
        writers = {s: _ShardWriter(tmp, s, dtype, shard_tokens) for s in ("train", "val")}
        pending: np.ndarray | None = None  # the last train document, held back in case val needs its tail
        docs_done = 0
        for batch in _batched(_documents(inputs, val_inputs, val_fraction, seed, text_field, separator)):
            encoded = tok.encode_batch([d.text for d in batch], add_special_tokens=True)
            for d, ids in zip(batch, encoded):
                arr = np.asarray(ids, dtype=np.int64)
                if add_eos:
                    arr = np.concatenate([arr, eos])
                if arr.size and int(arr.max()) >= vocab:
                    raise DataError(f"tokenizer produced id {int(arr.max())} >= its vocabulary size {vocab}")
                src = sources[d.source]
                src["documents"] += 1
                src["characters"] += len(d.text)
                src["tokens"] += int(arr.size)
                if d.val:
                    writers["val"].append(arr)
                else:
                    if pending is not None:
                        writers["train"].append(pending)
                    pending = arr
            docs_done += len(batch)
            log(f"  {docs_done:,} documents tokenized ({time.time() - t0:.0f}s)")
        if pending is None:
            raise DataError("no training documents: the inputs are empty (or every document went to validation)")
        val_tail = 0
        if val_fraction > 0 and not writers["val"].shards:
            total = sum(s["tokens"] for s in writers["train"].shards) + pending.size
            val_tail = min(max(1, round(val_fraction * total)), pending.size // 2)
            if val_tail == 0:
                raise DataError("val_fraction > 0 but the data is too small to hold out any validation tokens")
            writers["val"].append(pending[-val_tail:])
            pending = pending[:-val_tail]
            log(f"  no whole document was drawn for validation: held out the last {val_tail:,} tokens of the last one")
        writers["train"].append(pending)
        for w in writers.values():
            w.close()
        manifest = {
            "format": FORMAT, "version": FORMAT_VERSION,
            "dtype": dtype.name, "vocab_size": vocab,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
            "tokenizer": {"source": tokenizer_source, "dir": "tokenizer"},
            "documents_separated_by": "eos", "val_fraction": val_fraction, "val_tail_tokens": val_tail,
            "seed": seed, "shard_tokens": shard_tokens,
            "splits": {s: w.summary() for s, w in writers.items()},
            "sources": sources,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {out}: {manifest['splits']['train']['tokens']:,} train / {manifest['splits']['val']['tokens']:,} val "
        f"tokens ({dtype.name}) in {time.time() - t0:.1f}s")
    return manifest


# ---- reading shards ----------------------------------------------------------------------------------------------
def load_manifest(path: str) -> dict[str, Any]:
    file = os.path.join(path, MANIFEST)
    if not os.path.exists(file):
        raise DataError(f"{path} is not a prepared dataset: no {MANIFEST} (make one with `hymba prepare`)")
    with open(file, encoding="utf-8") as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{file} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise DataError(f"{file}: format {manifest.get('format')!r} v{manifest.get('version')}, expected "
                        f"{FORMAT!r} v{FORMAT_VERSION}")
    return manifest


def open_shards(path: str, split: str) -> list[np.memmap]:
    """The memmapped shards of one split, each checked against the manifest's length."""
    manifest = load_manifest(path)
    if split not in manifest["splits"]:
        raise DataError(f"{path}: no split {split!r} (has {', '.join(manifest['splits'])})")
    dtype = np.dtype(manifest["dtype"])
    arrays = []
    for shard in manifest["splits"][split]["shards"]:
        file = os.path.join(path, shard["file"])
        if not os.path.exists(file):
            raise DataError(f"{path}: shard {shard['file']} listed in {MANIFEST} is missing")
        size = os.path.getsize(file)
        if size != shard["tokens"] * dtype.itemsize:
            raise DataError(f"{file}: {size} bytes, but {MANIFEST} says {shard['tokens']} {dtype.name} tokens "
                            f"({shard['tokens'] * dtype.itemsize} bytes)")
        arrays.append(np.memmap(file, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype))
    return arrays


class PackedDataset:
    """Fixed-length windows of `seq_len + 1` tokens, stride `seq_len`, never crossing a shard boundary."""

    def __init__(self, shards: list[np.ndarray], seq_len: int):
        if seq_len < 1:
            raise DataError(f"seq_len must be positive, got {seq_len}")
        self.shards, self.seq_len = shards, seq_len
        counts = [max(0, (len(s) - 1) // seq_len) for s in shards]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @classmethod
    def from_prepared(cls, path: str, split: str, seq_len: int) -> "PackedDataset":
        return cls(open_shards(path, split), seq_len)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, first token) of window `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range [0, {len(self)})")
        shard = bisect.bisect_right(self.starts, index) - 1
        return shard, int(index - self.starts[shard]) * self.seq_len

    def __getitem__(self, index: int) -> np.ndarray:
        shard, start = self.locate(int(index))
        return np.asarray(self.shards[shard][start:start + self.seq_len + 1], dtype=np.int64)

    def batch(self, indices) -> np.ndarray:
        return np.stack([self[i] for i in indices]) if len(indices) else np.zeros((0, self.seq_len + 1), np.int64)

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.shards)


@dataclass
class BatchSchedule:
    """Which items each rank sees at each step: epochs of a seeded permutation, cut into global batches of
    `global_batch` items (an incomplete last batch is left for the next epoch's shuffle to cover), each
    split into `world_size` equal contiguous parts. The same global batches whatever the world size."""

    num_items: int
    global_batch: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    shuffle: bool = True
    epoch: int = 0
    step_in_epoch: int = 0
    _perm: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.global_batch < 1 or self.global_batch % self.world_size:
            raise DataError(f"the global batch ({self.global_batch}) must be a positive multiple of the number of "
                            f"data-parallel ranks ({self.world_size})")
        if self.num_items < self.global_batch:
            raise DataError(f"the dataset has {self.num_items} items (windows or examples), fewer than one global "
                            f"batch of {self.global_batch}: use more data, a shorter seq_len or a smaller batch")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_items // self.global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def next_indices(self) -> list[int]:
        """This rank's items for the next step (and advance)."""
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch, self.step_in_epoch, self._perm = self.epoch + 1, 0, None
        if self._perm is None:
            self._perm = self.permutation(self.epoch)
        per_rank = self.global_batch // self.world_size
        start = self.step_in_epoch * self.global_batch + self.rank * per_rank
        self.step_in_epoch += 1
        return self._perm[start:start + per_rank].tolist()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "seed": self.seed,
                "num_items": self.num_items, "global_batch": self.global_batch, "shuffle": int(self.shuffle)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("num_items", "global_batch", "seed"):
            if int(state[key]) != getattr(self, key):
                raise DataError(f"cannot resume the data position: the checkpoint was made with {key}="
                                f"{state[key]}, this run has {getattr(self, key)} (same data, batch and seed needed)")
        self.epoch, self.step_in_epoch, self._perm = int(state["epoch"]), int(state["step_in_epoch"]), None


class PackedLoader:
    """This rank's part of each global batch of packed windows, as int64 tensors [batch / world, seq_len + 1]."""

    def __init__(self, dataset: PackedDataset, global_batch: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True):
        self.dataset = dataset
        self.schedule = BatchSchedule(len(dataset), global_batch, rank, world_size, seed, shuffle)

    def next_batch(self) -> dict[str, Any]:
        return {"tokens": torch.from_numpy(self.dataset.batch(self.schedule.next_indices()))}

    def state_dict(self) -> dict[str, int]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.schedule.load_state_dict(state)


def unigram_cross_entropy(train: list[np.ndarray], val: list[np.ndarray], vocab_size: int) -> float:
    """Cross entropy (nats/token) of the val tokens under the train tokens' add-one smoothed unigram
    distribution: the loss of a model that ignores context, the bar a language model must clear."""
    counts = np.ones(vocab_size, dtype=np.float64)
    for s in train:
        counts += np.bincount(np.asarray(s), minlength=vocab_size)[:vocab_size]
    logp = np.log(counts / counts.sum())
    val_counts = np.zeros(vocab_size, dtype=np.float64)
    for s in val:
        val_counts += np.bincount(np.asarray(s), minlength=vocab_size)[:vocab_size]
    if val_counts.sum() == 0:
        raise DataError("no validation tokens to score")
    return float(-(val_counts * logp).sum() / val_counts.sum())
