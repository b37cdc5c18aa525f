"""Recall tasks that need no downloaded data, and the key-value retrieval sets of the evaluation folder.

Every task is a list of `RecallSample`s: a token sequence and the spans of answer tokens in it. A span counts as
recalled when each of its tokens is the model's argmax given everything before it (teacher forcing), which is
exactly "greedy decoding would produce the answer"; one forward pass scores all spans of a sample.

Two families, generated from a seed:
- token level, for any vocabulary and no tokenizer (training data for small models, and their evaluation):
  `mqar_samples` (multi-query associative recall: key-value pairs, then queries, each key followed by its
  value) and `needle_token_samples` (one key-value pair hidden at a depth of a haystack of filler tokens or of
  other pairs, queried at the end);
- text, for any checkpoint with its tokenizer: `mqar_text_samples`, `needle_text_samples` (a sentence with a
  number hidden in filler prose, asked for at the end) and `kv_pairs_samples` (the JSON key-value sets).

Token ids of the token-level tasks: [first_id, first_id + num_filler) are filler, the rest of the vocabulary is
split in two halves, keys then values. Ids below first_id (pad/BOS/EOS of a real vocabulary) are never used.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..utils import atomic_write_text
from .scoring import encode_pair, score_targets
from .task_data import read_jsonl, resolve_data_dir


@dataclass
class RecallSample:
    tokens: list[int]
    spans: list[tuple[int, int]]  # answer tokens tokens[start:end], each start >= 1
    info: dict[str, Any] = field(default_factory=dict)  # what the sample varies: context_length, depth, ...


# ---- token level ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenLayout:
    """Which ids are filler, keys and values in a vocabulary of `vocab_size`."""

    vocab_size: int
    first_id: int = 4
    num_filler: int = 16

    def __post_init__(self):
        if self.first_id < 0 or self.num_filler < 1:
            raise ValueError(f"first_id must be >= 0 and num_filler >= 1, got {self.first_id}, {self.num_filler}")
        if self.num_keys < 2:
            raise ValueError(f"vocab_size={self.vocab_size} leaves {2 * self.num_keys} ids for keys and values after "
                             f"first_id={self.first_id} and num_filler={self.num_filler}; need at least 4")

    @property
    def num_keys(self) -> int:
        return (self.vocab_size - self.first_id - self.num_filler) // 2

    @property
    def filler_ids(self) -> np.ndarray:
        return np.arange(self.first_id, self.first_id + self.num_filler)

    @property
    def key_ids(self) -> np.ndarray:
        start = self.first_id + self.num_filler
        return np.arange(start, start + self.num_keys)

    @property
    def value_ids(self) -> np.ndarray:
        start = self.first_id + self.num_filler + self.num_keys
        return np.arange(start, start + self.num_keys)


def _draw_pairs(rng: np.random.Generator, layout: TokenLayout, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n distinct keys, and a value for each (distinct too when the vocabulary allows)."""
    if n > layout.num_keys:
        raise ValueError(f"{n} key-value pairs need {n} distinct keys; the layout has {layout.num_keys} "
                         f"(vocab_size={layout.vocab_size})")
    keys = rng.choice(layout.key_ids, size=n, replace=False)
    values = rng.choice(layout.value_ids, size=n, replace=False)
    return keys, values


def _split_gaps(rng: np.random.Generator, total: int, parts: int) -> np.ndarray:
    """`total` filler tokens spread over `parts` gaps, every split equally likely (stars and bars)."""
    if parts == 1:
        return np.array([total])
    cuts = np.sort(rng.choice(total + parts - 1, size=parts - 1, replace=False))
    bounds = np.concatenate([[-1], cuts, [total + parts - 1]])
    return np.diff(bounds) - 1


def mqar_samples(num_samples: int, *, vocab_size: int, num_pairs: int, num_queries: int | None = None,
                 seq_len: int | None = None, seed: int = 0, first_id: int = 4,
                 num_filler: int = 16) -> list[RecallSample]:
    """Multi-query associative recall: `k1 v1 k2 v2 ... kN vN`, then `num_queries` of the keys (default: all, in
    a random order), each followed by its value, which is scored. With `seq_len` longer than the minimum
    (2 * pairs + 2 * queries), random filler tokens fill random gaps between the pairs and the queries."""
    layout = TokenLayout(vocab_size, first_id, num_filler)
    q = num_pairs if num_queries is None else num_queries
    if not 1 <= q <= num_pairs:
        raise ValueError(f"num_queries must be in [1, num_pairs={num_pairs}], got {num_queries}")
    minimum = 2 * num_pairs + 2 * q
    seq_len = minimum if seq_len is None else seq_len
    if seq_len < minimum:
        raise ValueError(f"seq_len={seq_len} is shorter than the {minimum} tokens of {num_pairs} pairs and {q} queries")
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(num_samples):
        keys, values = _draw_pairs(rng, layout, num_pairs)
        asked = rng.choice(num_pairs, size=q, replace=False)
        gaps = _split_gaps(rng, seq_len - minimum, q + 1)  # before each query, and at the end
        tokens = np.empty(seq_len, dtype=np.int64)
        tokens[0:2 * num_pairs:2], tokens[1:2 * num_pairs:2] = keys, values
        pos, spans = 2 * num_pairs, []
        for j, i in enumerate(asked):
            tokens[pos:pos + gaps[j]] = rng.choice(layout.filler_ids, size=gaps[j])
            pos += gaps[j]
            tokens[pos], tokens[pos + 1] = keys[i], values[i]
            spans.append((pos + 1, pos + 2))
            pos += 2
        tokens[pos:] = rng.choice(layout.filler_ids, size=seq_len - pos)
        samples.append(RecallSample(tokens.tolist(), spans, {"num_pairs": num_pairs, "seq_len": seq_len}))
    return samples


def needle_token_samples(*, vocab_size: int, context_lengths: Sequence[int], depths: Sequence[float],
                         samples_per_cell: int = 10, haystack: str = "filler", seed: int = 0, first_id: int = 4,
                         num_filler: int = 16) -> list[RecallSample]:
    """One key-value pair (the needle) at relative `depth` of a context of `context_length` tokens, the key asked
    at the end: `... k v ... k` -> `v`. The haystack is random filler tokens ("filler") or other key-value pairs
    ("pairs": the needle is one pair among many, the harder test of what a fixed-size state can hold)."""
    if haystack not in ("filler", "pairs"):
        raise ValueError(f"haystack must be 'filler' or 'pairs', got {haystack!r}")
    layout = TokenLayout(vocab_size, first_id, num_filler)
    rng = np.random.default_rng(seed)
    samples = []
    for length in context_lengths:
        if length < 4:
            raise ValueError(f"context length {length} is too short for a needle and its query (>= 4 tokens)")
        body = length - 2  # haystack + needle; then the query key and the answer
        for depth in depths:
            if not 0.0 <= depth <= 1.0:
                raise ValueError(f"depths are fractions in [0, 1], got {depth}")
            for _ in range(samples_per_cell):
                if haystack == "filler":
                    keys, values = _draw_pairs(rng, layout, 1)
                    hay = rng.choice(layout.filler_ids, size=body - 2).tolist()
                    at = int(round(depth * (body - 2)))
                else:
                    n = body // 2
                    keys, values = _draw_pairs(rng, layout, n)
                    hay = np.stack([keys[1:], values[1:]], 1).reshape(-1).tolist()
                    hay += rng.choice(layout.filler_ids, size=body - 2 * n).tolist()  # an odd body: one filler
                    at = 2 * int(round(depth * (n - 1)))
                tokens = hay[:at] + [int(keys[0]), int(values[0])] + hay[at:] + [int(keys[0]), int(values[0])]
                samples.append(RecallSample(tokens, [(length - 1, length)],
                                            {"context_length": length, "depth": depth, "haystack": haystack}))
    return samples


def training_batch(samples: Sequence[RecallSample], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and labels (the answer tokens; -100 elsewhere) for next-token training, right
    padded; labels follow the HF convention (aligned with input_ids, shifted inside the loss)."""
    width = max(len(s.tokens) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    labels = torch.full((len(samples), width), -100, dtype=torch.long)
    for row, s in enumerate(samples):
        ids[row, :len(s.tokens)] = torch.tensor(s.tokens)
        mask[row, :len(s.tokens)] = 1
        for a, b in s.spans:
            labels[row, a:b] = ids[row, a:b]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class MQARDataset(torch.utils.data.Dataset):
    """`num_samples` MQAR sequences, sample i generated from (seed, i) on demand: a training set of any size
    that costs no memory, the same on every run. Items are dicts of input_ids and labels (1-D tensors)."""

    def __init__(self, num_samples: int, seed: int = 0, **mqar_kwargs: Any):
        self.num_samples, self.seed, self.kwargs = num_samples, seed, mqar_kwargs
        mqar_samples(1, seed=seed, **mqar_kwargs)  # validate the arguments now

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.num_samples:
            raise IndexError(i)
        sample = mqar_samples(1, seed=[self.seed, i], **self.kwargs)[0]
        batch = training_batch([sample])
        return {"input_ids": batch["input_ids"][0], "labels": batch["labels"][0]}


# ---- text, for checkpoints with a tokenizer -------------------------------------------------------------------

def _encode_spans(tokenizer, pieces: Sequence[tuple[str, bool]]) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the concatenated text pieces (BOS first) and the token span of each piece marked as an
    answer. Spans come from encoding the text up to each answer's start and end; an answer whose tokens do not
    line up with the encoding of the whole text is an error (it could not be scored fairly)."""
    text, marks = "", []
    for piece, is_answer in pieces:
        if is_answer:
            marks.append((len(text), len(text) + len(piece)))
        text += piece
    tokens = tokenizer.encode(text)
    spans = []
    for a, b in marks:
        before, upto = tokenizer.encode(text[:a]), tokenizer.encode(text[:b])
        if tokens[:len(upto)] != upto or upto[:len(before)] != before or len(upto) == len(before):
            raise ValueError(f"the answer {text[a:b]!r} does not fall on token boundaries of the full text; "
                             "change the separators around it")
        spans.append((len(before), len(upto)))
    return tokens, spans


_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"


def _random_word(rng: np.random.Generator, syllables: int = 2) -> str:
    return "".join(rng.choice(list(_CONSONANTS)) + rng.choice(list(_VOWELS)) for _ in range(syllables))


def mqar_text_samples(tokenizer, num_samples: int, *, num_pairs: int = 16, num_queries: int | None = None,
                      seed: int = 0) -> list[RecallSample]:
    """MQAR in words: made-up keys ("tamo") with 4-digit values, listed as `key: value` lines, then the keys
    asked again in a random order, each value scored (the earlier answers given, as in token-level MQAR)."""
    q = num_pairs if num_queries is None else num_queries
    if not 1 <= q <= num_pairs:
        raise ValueError(f"num_queries must be in [1, num_pairs={num_pairs}], got {num_queries}")
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(num_samples):
        keys: list[str] = []
        while len(keys) < num_pairs:
            w = _random_word(rng)
            if w not in keys:
                keys.append(w)
        values = [str(v) for v in rng.choice(np.arange(1000, 10000), size=num_pairs, replace=False)]
        pieces: list[tuple[str, bool]] = [("Remember each word's number.\n", False)]
        pieces += [(f"{k}: {v}\n", False) for k, v in zip(keys, values)]
        pieces.append(("Now recall them.\n", False))
        for i in rng.choice(num_pairs, size=q, replace=False):
            pieces += [(f"{keys[i]}:", False), (f" {values[i]}", True), ("\n", False)]
        tokens, spans = _encode_spans(tokenizer, pieces)
        samples.append(RecallSample(tokens, spans, {"num_pairs": num_pairs, "context_length": len(tokens)}))
    return samples


# Neutral filler prose for the haystack (written for this package).
FILLER_SENTENCES = [
    "The morning train left the station a few minutes late.",
    "A light rain fell over the hills until the afternoon.",
    "The library keeps its oldest maps in a cool, dry room.",
    "Farmers in the valley plant barley before the first frost.",
    "The bridge was painted green when the town rebuilt it.",
    "Children played near the river while their parents talked.",
    "The bakery on the corner opens before sunrise every day.",
    "Most of the letters arrived after the holidays were over.",
    "The old clock in the hall still chimes every hour.",
    "A small boat drifted slowly past the lighthouse.",
    "The museum added a new wing for modern sculpture.",
    "Snow covered the mountain roads for most of the winter.",
]


def needle_text_samples(tokenizer, *, context_lengths: Sequence[int], depths: Sequence[float],
                        samples_per_cell: int = 5, seed: int = 0,
                        haystack_sentences: Sequence[str] | None = None) -> list[RecallSample]:
    """A sentence "The secret number is NNNNNN." hidden at relative `depth` (at a sentence boundary) of filler
    prose, then "What is the secret number? The secret number is" and the number, scored; the whole sample is
    as close to `context_length` tokens as whole sentences allow (never longer). Filler sentences are drawn at
    random from `haystack_sentences` (default: built-in prose)."""
    sentences = [s.strip() for s in (haystack_sentences or FILLER_SENTENCES) if s.strip()]
    if not sentences:
        raise ValueError("haystack_sentences is empty")
    rng = np.random.default_rng(seed)
    question = "\nWhat is the secret number? The secret number is"
    # A sentence's tokens where it sits (after a sentence end and a space), to fill most of a context quickly.
    base = len(tokenizer.encode("x.", add_special_tokens=False))
    cost = [len(tokenizer.encode("x. " + s, add_special_tokens=False)) - base for s in sentences]

    def build(hay: list[int], depth: float, number: str) -> tuple[list[int], list[tuple[int, int]]]:
        at = int(round(depth * len(hay)))
        parts = [sentences[i] for i in hay[:at]] + [f"The secret number is {number}."] + [sentences[i] for i in hay[at:]]
        return _encode_spans(tokenizer, [(" ".join(parts) + question, False), (" " + number, True)])

    samples = []
    for length in context_lengths:
        for depth in depths:
            if not 0.0 <= depth <= 1.0:
                raise ValueError(f"depths are fractions in [0, 1], got {depth}")
            for _ in range(samples_per_cell):
                number = str(int(rng.integers(100000, 1000000)))
                tokens, _ = build([], depth, number)
                if len(tokens) > length:
                    raise ValueError(f"context length {length} is shorter than the needle and question alone "
                                     f"({len(tokens)} tokens)")
                hay, estimate = [], len(tokens)
                while True:  # fast: estimated costs, up to a margin below the target
                    i = int(rng.integers(len(sentences)))
                    if estimate + cost[i] > length - 2 * max(cost):
                        break
                    hay.append(i)
                    estimate += cost[i]
                while True:  # exact: add any sentence that still fits
                    for i in rng.permutation(len(sentences)):
                        if len(build(hay + [int(i)], depth, number)[0]) <= length:
                            hay.append(int(i))
                            break
                    else:
                        break
                tokens, spans = build(hay, depth, number)
                samples.append(RecallSample(tokens, spans, {"context_length": length, "depth": depth,
                                                            "tokens": len(tokens)}))
    return samples


KV_PAIRS_FILES = {"beginning": "kv_pairs_beginning_len_2048.jsonl", "middle": "kv_pairs_middle_len_2048.jsonl",
                  "end": "kv_pairs_end_len_2048.jsonl"}


def kv_pairs_samples(tokenizer, data_dir: str, positions: Sequence[str] = ("beginning", "middle", "end"),
                     limit: int | None = None) -> list[RecallSample]:
    """The key-value retrieval sets (JSON of 38 UUID pairs; the asked key at the beginning, middle or end):
    the UUID answer after "Corresponding Value: " is scored (context and answer split as lm-eval does)."""
    root = resolve_data_dir(data_dir)
    samples = []
    for where in positions:
        if where not in KV_PAIRS_FILES:
            raise ValueError(f"unknown kv-pairs position {where!r}; expected one of {sorted(KV_PAIRS_FILES)}")
        path = os.path.join(root, KV_PAIRS_FILES[where])
        rows = read_jsonl(path)
        for n, row in enumerate(rows[:limit] if limit else rows, start=1):
            if "context" not in row or "answer" not in row:
                raise ValueError(f"{path}, item {n}: expected fields 'context' and 'answer', found {sorted(row)}")
            ctx, cont = encode_pair(tokenizer, row["context"], row["answer"])
            samples.append(RecallSample(ctx + cont, [(len(ctx), len(ctx) + len(cont))],
                                        {"position": where, "answer_location": row.get("answer_location"),
                                         "context_length": len(ctx)}))
    return samples


# ---- scoring ----------------------------------------------------------------------------------------------------

def score_samples(model, samples: Sequence[RecallSample], batch_size: int = 8,
                  progress=None) -> list[list[bool]]:
    """For each sample, whether each answer span is recalled (greedy, teacher forced)."""
    for n, s in enumerate(samples):
        if not s.spans or min(a for a, _ in s.spans) < 1:
            raise ValueError(f"sample {n} has no answer span, or one at position 0 (nothing to predict it from)")
    first = [min(a for a, _ in s.spans) for s in samples]
    scores = score_targets(model, [(s.tokens, f) for s, f in zip(samples, first)], batch_size=batch_size,
                           progress=progress)
    out = []
    for s, f, sc in zip(samples, first, scores):
        out.append([bool(sc.greedy[a - f:b - f].all()) for a, b in s.spans])
    return out


def accuracy_table(samples: Sequence[RecallSample], correct: Sequence[Sequence[bool]],
                   by: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Accuracy over answer spans, grouped by the `info` keys in `by` (one row per group, sorted); with no keys,
    one row for everything. Rows: the group's key values, `accuracy`, `answers`, `samples`."""
    groups: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
    for s, c in zip(samples, correct):
        g = groups[tuple(s.info.get(k) for k in by)]
        g[0] += sum(c)
        g[1] += len(c)
        g[2] += 1
    rows = []
    for key in sorted(groups, key=lambda k: tuple((v is None, v) for v in k)):
        hit, total, n = groups[key]
        rows.append({**dict(zip(by, key)), "accuracy": hit / total if total else math.nan, "answers": total,
                     "samples": n})
    return rows


def describe(samples: Sequence[RecallSample]) -> dict[str, Any]:
    """Lengths of a sample set, for reports."""
    lengths = [len(s.tokens) for s in samples]
    return {"samples": len(samples), "answers": sum(len(s.spans) for s in samples),
            "min_tokens": min(lengths), "max_tokens": max(lengths)}


def save_samples(samples: Sequence[RecallSample], path: str) -> None:
    """JSON lines (tokens, spans, info), written atomically: a recall set to train or evaluate on elsewhere."""
    atomic_write_text(path, "".join(json.dumps({"tokens": s.tokens, "spans": s.spans, "info": s.info}) + "\n"
                                    for s in samples))


def evaluate_recall(model, samples: Sequence[RecallSample], by: Sequence[str] = (), batch_size: int = 8,
                    progress=None) -> dict[str, Any]:
    """Score `samples` and summarise: overall accuracy, the table grouped by `by`, and the sample set's sizes."""
    correct = score_samples(model, samples, batch_size=batch_size, progress=progress)
    overall = accuracy_table(samples, correct)[0]
    return {"accuracy": overall["accuracy"], "answers": overall["answers"], **describe(samples),
            "by": list(by), "table": accuracy_table(samples, correct, by) if by else [overall]}
