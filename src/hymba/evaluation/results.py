"""Writing results: JSON (everything), a markdown table (what a reader compares), and a plot where comparison is
the point (accuracy vs context length). Every file is written to a temporary name and renamed."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..utils import atomic_path, atomic_write_text


def _jsonable(o: Any):
    """What json cannot encode by itself (numpy scalars, tensors, dtypes, sets, ...), as lm-eval's writer does."""
    if hasattr(o, "item") and callable(o.item):
        try:
            return o.item()
        except (ValueError, RuntimeError):
            pass
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable, ensure_ascii=False) + "\n")


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.3e}"
    return "" if value is None else str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                   headers: Mapping[str, str] | None = None, digits: int = 4,
                   formats: Mapping[str, str] | None = None) -> str:
    """A GitHub markdown table of `rows` (dicts), in the order of `columns` (default: the first row's keys).
    Floats get `digits` decimals unless `formats` gives a column its own format ("{:g}", "{:.1%}", ...)."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())
    headers = headers or {}
    formats = {"depth": "{:g}", **(formats or {})}
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(formats[c].format(r[c]) if c in formats and r.get(c) is not None
                                       else _cell(r.get(c), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"


# ---- lm-eval results ---------------------------------------------------------------------------------------------

def lm_eval_rows(results: Mapping[str, Any], subtasks: bool = True) -> list[dict[str, Any]]:
    """One row per (task or group, metric) of lm-eval's results dict: name, task (lm-eval's alias), metric,
    value, stderr, items, few-shot count.

    Groups come first, each followed by its members (depth first; leaf tasks of a group only with `subtasks`),
    then the tasks asked for on their own. A group's items are the sum of its leaf tasks'."""
    metrics_of = {**results.get("results", {}), **results.get("groups", {})}
    children = {g: list(c) for g, c in results.get("group_subtasks", {}).items()}
    n_samples = results.get("n-samples", {})
    n_shot = results.get("n-shot", {})

    def leaves(name: str) -> list[str]:
        return [x for c in children[name] for x in leaves(c)] if name in children else [name]

    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        order.append(name)
        for child in children.get(name, []):
            if child in children or subtasks:
                visit(child)

    members = {c for cs in children.values() for c in cs}
    for name in [g for g in children if g not in members] + [t for t in metrics_of if t not in members]:
        visit(name)
    rows = []
    for name in order:
        metrics = metrics_of.get(name, {})
        items = sum(n_samples.get(t, {}).get("effective", 0) for t in leaves(name)) or None
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append({"name": name, "task": str(metrics.get("alias", name)).strip(" -") or name, "metric": metric,
                         "value": float(value),
                         "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                         "items": items, "shots": n_shot.get(name, n_shot.get(leaves(name)[0]))})
    return rows


def lm_eval_markdown(results: Mapping[str, Any], chance: Mapping[str, float] | None = None,
                     subtasks: bool = True) -> str:
    rows = lm_eval_rows(results, subtasks=subtasks)
    columns = ["task", "metric", "value", "stderr", "items", "shots"]
    if chance:
        for r in rows:
            guess = chance.get(r["name"], 0.25 if r["name"].startswith("mmlu") else None)
            r["chance"] = guess if r["metric"] in ("acc", "acc_norm") else None
        columns.append("chance")
    return markdown_table(rows, columns)


# Accuracy of guessing uniformly among the choices, per task (for reading a small model's numbers).
# (MMLU and its groups and subjects: 0.25.)
CHANCE = {"arc_easy": 0.25, "arc_challenge": 0.25, "piqa": 0.5, "winogrande": 0.5, "hellaswag": 0.25,
          "boolq": 0.5, "openbookqa": 0.25, "copa": 0.5, "siqa_2way": 0.5, "lambada_openai": 0.0}


# ---- plots ---------------------------------------------------------------------------------------------------------

def plot_accuracy_vs_length(series: Mapping[str, Mapping[int, float]], path: str | os.PathLike,
                            title: str = "Needle in a haystack", xlabel: str = "context length (tokens)") -> None:
    """One line per series ({label: {context length: accuracy}}), lengths on a log2 axis, saved as PNG/SVG/PDF
    by the file extension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    lengths = sorted({x for s in series.values() for x in s})
    for label, points in series.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=label)
    if lengths and lengths[-1] > 2 * lengths[0]:
        ax.set_xscale("log", base=2)
    ax.set_xticks(lengths)
    ax.set_xticklabels([str(x) for x in lengths])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=ext)
    plt.close(fig)
