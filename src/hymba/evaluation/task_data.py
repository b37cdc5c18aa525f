"""Local evaluation files -> the documents lm-evaluation-harness's standard task definitions expect.

The files in the shared evaluation folder (see its README) come in llm-foundry's layout (`query`, `choices`,
`gold`), which already bakes part of each prompt into the text. Each converter here undoes that, giving back
the fields of the upstream dataset (ARC's `question`/`choices`/`answerKey`, PIQA's `goal`/`sol1`/`sol2`, ...),
so the task YAMLs in `tasks/` can state the standard lm-eval prompt and scoring unchanged. The YAMLs name
these functions as `custom_dataset`; lm-eval calls them with the task's `dataset_kwargs` and its metadata,
where `data_dir` arrives (`hymba eval --data-dir`, or `TaskManager(metadata={"data_dir": ...})`).

Nothing is downloaded: the documents are built in memory with `datasets.Dataset.from_list`.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import re
from collections.abc import Callable
from typing import Any

from ..errors import HymbaError

DATA_DIR_ENV = "HYMBA_EVAL_DATA"


class TaskDataError(HymbaError, ValueError):
    """A local evaluation file is missing or does not have the expected layout."""


# ---- reading --------------------------------------------------------------------------------------------------

def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if not data_dir:
        raise TaskDataError(
            "the hymba evaluation tasks read local files: pass the folder holding piqa.jsonl, arc_easy.jsonl, ... "
            f"as --data-dir (hymba eval), as metadata={{'data_dir': ...}} (lm-eval), or set ${DATA_DIR_ENV}")
    data_dir = os.path.abspath(os.fspath(data_dir))
    if not os.path.isdir(data_dir):
        raise TaskDataError(f"evaluation data folder {data_dir} does not exist")
    return data_dir


@functools.lru_cache(maxsize=16)
def read_jsonl(path: str) -> tuple[dict, ...]:
    """Every line of a .jsonl (or .jsonl.gz) file as a dict; cached, since the MMLU subjects share one file."""
    if not os.path.exists(path):
        raise TaskDataError(f"evaluation file {path} not found")
    opener = gzip.open if path.endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise TaskDataError(f"{path}, line {n}: not valid JSON ({e})") from None
    return tuple(rows)


def _need(cond: bool, path: str, n: int, msg: str) -> None:
    if not cond:
        raise TaskDataError(f"{path}, item {n}: {msg}")


def _fields(row: dict, names: tuple[str, ...], path: str, n: int) -> None:
    missing = [k for k in names if k not in row]
    _need(not missing, path, n, f"missing field(s) {missing}; found {sorted(row)}")


def _strip_prefix(text: str, prefix: str, path: str, n: int) -> str:
    _need(text.startswith(prefix), path, n, f"expected text starting with {prefix!r}, got {text[:60]!r}")
    return text[len(prefix):]


def _gold(row: dict, key: str, num: int, path: str, n: int) -> int:
    g = row[key]
    _need(isinstance(g, int) and 0 <= g < num, path, n, f"{key}={g!r} is not an index into {num} choices")
    return g


# ---- converters: one local row -> one upstream-style document -------------------------------------------------
# Each takes (row, path, item number) and returns the document the lm-eval task definition reads.

LETTERS = "ABCDEFGHIJ"


def _arc(row: dict, path: str, n: int) -> dict:
    """{query: "Question: Q", choices, gold} -> ARC's {question, choices: {text, label}, answerKey}."""
    _fields(row, ("query", "choices", "gold"), path, n)
    labels = list(LETTERS[:len(row["choices"])])
    return {"question": _strip_prefix(row["query"], "Question: ", path, n),
            "choices": {"text": list(row["choices"]), "label": labels},
            "answerKey": labels[_gold(row, "gold", len(labels), path, n)]}


def _openbookqa(row: dict, path: str, n: int) -> dict:
    """{query: stem, choices, gold} -> OpenBookQA's {question_stem, choices: {text, label}, answerKey}."""
    _fields(row, ("query", "choices", "gold"), path, n)
    labels = list(LETTERS[:len(row["choices"])])
    return {"question_stem": row["query"], "choices": {"text": list(row["choices"]), "label": labels},
            "answerKey": labels[_gold(row, "gold", len(labels), path, n)]}


def _piqa(row: dict, path: str, n: int) -> dict:
    """{query: "Question: goal\\n", choices: [sol1, sol2], gold} -> PIQA's {goal, sol1, sol2, label}."""
    _fields(row, ("query", "choices", "gold"), path, n)
    _need(len(row["choices"]) == 2, path, n, f"PIQA has 2 solutions, got {len(row['choices'])}")
    goal = _strip_prefix(row["query"], "Question: ", path, n)
    _need(goal.endswith("\n"), path, n, "PIQA query should end in a newline")
    return {"goal": goal[:-1], "sol1": row["choices"][0], "sol2": row["choices"][1],
            "label": _gold(row, "gold", 2, path, n)}


def _boolq(row: dict, path: str, n: int) -> dict:
    """{query: "Passage: P\\nQuestion: q?", gold} -> BoolQ's {passage, question (no "?"), label}."""
    _fields(row, ("query", "gold"), path, n)
    body = _strip_prefix(row["query"], "Passage: ", path, n)
    passage, sep, question = body.rpartition("\nQuestion: ")
    _need(bool(sep) and question.endswith("?"), path, n, "expected 'Passage: ...\\nQuestion: ...?'")
    return {"passage": passage, "question": question[:-1], "label": _gold(row, "gold", 2, path, n)}


def _copa(row: dict, path: str, n: int) -> dict:
    """{query: "premise, therefore|because", choices, gold} -> COPA's {premise, question, choice1, choice2, label}.

    llm-foundry replaced the premise's final period with the connective; lm-eval drops that period itself, so
    the premise is rebuilt with one."""
    _fields(row, ("query", "choices", "gold"), path, n)
    for connective, question in ((", therefore", "effect"), (", because", "cause")):
        if row["query"].endswith(connective):
            premise = row["query"][:-len(connective)] + "."
            break
    else:
        raise TaskDataError(f"{path}, item {n}: COPA query should end in ', therefore' or ', because'")
    _need(len(row["choices"]) == 2, path, n, "COPA has 2 choices")
    return {"premise": premise, "question": question, "choice1": row["choices"][0],
            "choice2": row["choices"][1], "label": _gold(row, "gold", 2, path, n)}


def _winogrande(row: dict, path: str, n: int) -> dict:
    """Kept in the partial-scoring layout: the sentence up to the blank filled with each option (contexts), and the
    rest of the sentence (the one continuation scored under each context), as lm-eval's winogrande builds."""
    _fields(row, ("context_options", "continuation", "gold"), path, n)
    _need(len(row["context_options"]) == 2, path, n, "WinoGrande has 2 options")
    return {"context_options": list(row["context_options"]), "continuation": row["continuation"].strip(),
            "label": _gold(row, "gold", 2, path, n)}


def _lambada(row: dict, path: str, n: int) -> dict:
    """{context, continuation} -> LAMBADA's {text}: the passage, whose last space-separated word is the target."""
    _fields(row, ("context", "continuation"), path, n)
    word = row["continuation"]
    _need(bool(word) and " " not in word and not row["context"].endswith(" "), path, n,
          f"expected a single target word after the context, got {word!r}")
    return {"text": row["context"] + " " + word}


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleaning: WikiHow bracket markers out, ` [title]` -> `. `, double spaces collapsed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


_LAST_SENTENCE = re.compile(r"(?<=[.!?]) (?=\S)")


def _hellaswag(row: dict, path: str, n: int) -> dict:
    """{ctx: "label: ctx_a ctx_b", endings, label} -> lm-eval's processed {query, choices, gold}.

    lm-eval builds `activity_label + ": " + ctx_a + " " + ctx_b.capitalize()`. The local file keeps ctx_a and
    ctx_b joined, so ctx_b is taken to be the fragment after the last sentence end, capitalised when it starts
    in lower case (ActivityNet items, where ctx_b is the lower-case start of the last sentence). A ctx_b that
    spans a sentence end, or starts upper case with later capitals, gives a text that differs from lm-eval's."""
    _fields(row, ("ctx", "endings", "label"), path, n)
    label, sep, ctx = row["ctx"].partition(": ")
    if not sep:
        label, ctx = "", row["ctx"]
    parts = _LAST_SENTENCE.split(ctx)
    if len(parts) > 1 and parts[-1][:1].islower():
        ctx = " ".join(parts[:-1] + [parts[-1].capitalize()])
    head = label + sep
    return {"query": hellaswag_preprocess(head + ctx), "choices": [hellaswag_preprocess(e) for e in row["endings"]],
            "gold": _gold(row, "label", len(row["endings"]), path, n)}


def _mmlu(row: dict, path: str, n: int) -> dict:
    _fields(row, ("subject", "question", "choices", "answer"), path, n)
    _need(len(row["choices"]) == 4, path, n, f"MMLU items have 4 choices, got {len(row['choices'])}")
    return {"subject": row["subject"], "question": row["question"], "choices": list(row["choices"]),
            "answer": _gold(row, "answer", 4, path, n)}


def _siqa_2way(row: dict, path: str, n: int) -> dict:
    _fields(row, ("query", "choices", "gold"), path, n)
    return {"query": row["query"], "choices": list(row["choices"]),
            "gold": _gold(row, "gold", len(row["choices"]), path, n)}


CONVERTERS: dict[str, Callable[[dict, str, int], dict]] = {
    "arc": _arc, "openbookqa": _openbookqa, "piqa": _piqa, "boolq": _boolq, "copa": _copa,
    "winogrande": _winogrande, "lambada": _lambada, "hellaswag": _hellaswag, "mmlu": _mmlu,
    "siqa_2way": _siqa_2way,
}


def convert_file(layout: str, path: str, subject: str | None = None) -> list[dict]:
    """The documents of one local file (optionally one MMLU subject), converted and validated once per file."""
    docs = _converted(layout, path)
    if subject is None:
        return list(docs)
    chosen = [d for d in docs if d.get("subject") == subject]
    if not chosen:
        raise TaskDataError(f"{path} has no items of subject {subject!r}")
    return chosen


@functools.lru_cache(maxsize=16)
def _converted(layout: str, path: str) -> tuple[dict, ...]:
    if layout not in CONVERTERS:
        raise TaskDataError(f"unknown local task layout {layout!r}; known: {sorted(CONVERTERS)}")
    convert = CONVERTERS[layout]
    return tuple(convert(row, path, n) for n, row in enumerate(read_jsonl(path), start=1))


# ---- the entry point named by the task YAMLs ------------------------------------------------------------------

def local_dataset(data_dir: str | None = None, layout: str | None = None, splits: dict[str, str] | None = None,
                  subject: str | None = None, **_: Any):
    """A `datasets.DatasetDict` with one split per entry of `splits` ({split name: file name in data_dir}).

    Called by lm-eval as the task's `custom_dataset` with the YAML's `dataset_kwargs` (layout, splits,
    subject) and the run's metadata (data_dir); other metadata keys are ignored."""
    import datasets

    if not layout or not splits:
        raise TaskDataError("a hymba local task needs dataset_kwargs 'layout' and 'splits' in its YAML")
    root = resolve_data_dir(data_dir)
    return datasets.DatasetDict({
        split: datasets.Dataset.from_list(convert_file(layout, os.path.join(root, name), subject))
        for split, name in splits.items()})
