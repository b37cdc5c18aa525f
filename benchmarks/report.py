"""The results tables: one row per benchmark, from its JSON (whichever run wrote it), into
results/summary.md and between the marker comments of benchmarks/README.md (one table per suite, so
running one suite leaves the other's rows as they were)."""

from __future__ import annotations

import json
import os
import re

from . import registry
from .common import ROOT

SUMMARY = "summary.md"
README = os.path.join(ROOT, "benchmarks", "README.md")
STATUSES = ("ok", "failed", "skipped")


def fmt(value, unit: str = "") -> str:
    """A number as a table shows it: thousands separated, three significant digits below 100."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value} {unit}".strip()
    if unit == "%":
        return f"{value:.1f}%"
    a = abs(value)
    text = (f"{value:,.0f}" if a >= 100 or (isinstance(value, int) and a >= 10) else
            f"{value:.1f}" if a >= 10 else f"{value:.3g}")
    return f"{text} {unit}".strip()


def load(out: str) -> dict[str, dict]:
    docs = {}
    for name in registry.by_name():
        path = os.path.join(out, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                docs[name] = json.load(f)
    return docs


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _status(doc: dict) -> str:
    s = doc["status"] + (" (smoke)" if doc.get("smoke") else "")
    if doc.get("error"):
        s += ": " + doc["error"].strip().splitlines()[-1][:160]
    return s


def _machine(doc: dict) -> str:
    m = doc.get("machine") or {}
    commit = (m.get("commit") or "")[:7]
    if doc["suite"] == "gpu" and m.get("gpu"):
        where = f"{m['gpu']} ({m.get('gpu_memory_GiB')} GiB)"
    else:
        n = m.get("torch_threads", "?")
        where = f"{m.get('cpu', '?')}, {n} torch thread{'' if n == 1 else 's'}"
    return f"{where}, {doc.get('date', '?')[:10]}" + (f", `{commit}`" if commit else "")


def table(suite: str, docs: dict[str, dict]) -> str:
    lines = ["| benchmark | result | compared with | status | run on |", "|---|---|---|---|---|"]
    for m in registry.all_benchmarks():
        if m.SUITE != suite or (not m.DEFAULT and m.NAME not in docs):
            continue
        doc = docs.get(m.NAME)
        if doc is None:
            lines.append(f"| `{m.NAME}` | not run yet | | | |")
            continue
        heads = [x for x in doc.get("metrics", []) if x.get("headline")]
        result = "<br>".join(_cell(f"{x['name']}: **{fmt(x['value'], x['unit'])}**") for x in heads)
        compare = "<br>".join(_cell(x.get("compare") or "") for x in heads)
        lines.append(f"| `{m.NAME}` | {result or '-'} | {compare} | {_cell(_status(doc))} | {_cell(_machine(doc))} |")
    return "\n".join(lines) + "\n"


def write(out: str, update_readme: bool = False) -> None:
    """summary.md in `out` from the JSONs there; with update_readme, README.md's tables too."""
    docs = load(out)
    tables = {suite: table(suite, docs) for suite in registry.SUITES}
    text = "# Benchmark results\n\nOne row per benchmark, from `<name>.json` beside this file (written by " \
           "`python -m benchmarks run`; rebuilt by `python -m benchmarks report`).\n"
    for suite in ("gpu", "cpu"):
        text += f"\n## {suite.upper()} suite\n\n{tables[suite]}"
    with open(os.path.join(out, SUMMARY), "w") as f:
        f.write(text)
    if update_readme:
        update_readme_tables(tables)


def update_readme_tables(tables: dict[str, str], path: str = README) -> None:
    """Replace what lies between `<!-- results:SUITE:start -->` and `<!-- results:SUITE:end -->`."""
    with open(path) as f:
        text = f.read()
    for suite, body in tables.items():
        pattern = re.compile(rf"(<!-- results:{suite}:start -->\n).*?(<!-- results:{suite}:end -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"{path} has no <!-- results:{suite}:start/end --> markers")
        text = pattern.sub(lambda m: m.group(1) + body + m.group(2), text)
    with open(path, "w") as f:
        f.write(text)
