"""The results writer: tables from lm-eval's results dict, JSON of awkward types, plots."""

import json

import numpy as np
import torch

from hymba.evaluation.results import lm_eval_markdown, lm_eval_rows, markdown_table, plot_accuracy_vs_length, write_json

RESULTS = {  # the shape lm-eval's simple_evaluate returns (trimmed)
    "results": {
        "mmlu": {"alias": "mmlu", "acc,none": 0.25, "acc_stderr,none": 0.01},
        "mmlu_stem": {"alias": " - stem", "acc,none": 0.3, "acc_stderr,none": 0.02},
        "arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.4,
                     "acc_norm_stderr,none": 0.1, "sample_len": 10},
        "lambada_openai": {"alias": "lambada_openai", "perplexity,none": 1234.5, "perplexity_stderr,none": "N/A",
                           "acc,none": 0.0, "acc_stderr,none": 0.0},
    },
    "groups": {"mmlu": {"alias": "mmlu", "acc,none": 0.25, "acc_stderr,none": 0.01}},
    "n-samples": {"arc_easy": {"original": 2376, "effective": 10}},
    "n-shot": {"arc_easy": 0},
}


def test_lm_eval_rows():
    rows = lm_eval_rows(RESULTS)
    assert [(r["task"], r["metric"]) for r in rows] == [
        ("mmlu", "acc"), ("stem", "acc"), ("arc_easy", "acc"), ("arc_easy", "acc_norm"),
        ("lambada_openai", "perplexity"), ("lambada_openai", "acc")]
    arc = rows[3]
    assert arc == {"name": "arc_easy", "task": "arc_easy", "metric": "acc_norm", "value": 0.4, "stderr": 0.1,
                   "items": 10, "shots": 0}
    assert rows[4]["stderr"] is None  # "N/A" in lm-eval's dict
    table = lm_eval_markdown(RESULTS, chance={"arc_easy": 0.25})
    assert "| arc_easy | acc_norm | 0.4000 | 0.1000 | 10 | 0 | 0.2500 |" in table
    assert "| stem | acc | 0.3000 | 0.0200 |  |  | 0.2500 |" in table  # MMLU: 1 in 4


def test_groups_come_first_with_their_members_and_summed_items():
    results = {
        "results": {"mmlu_anatomy": {"alias": "  - anatomy", "acc,none": 0.5}, "piqa": {"alias": "piqa", "acc,none": 0.6},
                    "mmlu_virology": {"alias": "  - virology", "acc,none": 0.0}},
        "groups": {"mmlu_stem": {"alias": " - stem", "acc,none": 0.5}, "mmlu_other": {"alias": " - other", "acc,none": 0.0},
                   "mmlu": {"alias": "mmlu", "acc,none": 0.25}},
        "group_subtasks": {"mmlu_stem": ["mmlu_anatomy"], "mmlu_other": ["mmlu_virology"], "mmlu": ["mmlu_stem", "mmlu_other"]},
        "n-samples": {"mmlu_anatomy": {"effective": 3}, "mmlu_virology": {"effective": 5}, "piqa": {"effective": 7}},
        "n-shot": {"mmlu_anatomy": 5, "mmlu_virology": 5, "piqa": 0},
    }
    rows = lm_eval_rows(results)
    assert [(r["task"], r["items"], r["shots"]) for r in rows] == [
        ("mmlu", 8, 5), ("stem", 3, 5), ("anatomy", 3, 5), ("other", 5, 5), ("virology", 5, 5), ("piqa", 7, 0)]
    assert [r["task"] for r in lm_eval_rows(results, subtasks=False)] == ["mmlu", "stem", "other", "piqa"]


def test_markdown_table_formats():
    table = markdown_table([{"depth": 0.25, "accuracy": 2 / 3, "n": 3, "note": "a|b"},
                            {"depth": 1.0, "accuracy": float("nan"), "n": 0, "note": None}])
    assert table.splitlines() == ["| depth | accuracy | n | note |", "|---|---|---|---|",
                                  "| 0.25 | 0.6667 | 3 | a\\|b |", "| 1 | n/a | 0 |  |"]


def test_json_of_numpy_and_torch_values(tmp_path):
    path = tmp_path / "out" / "r.json"
    write_json(path, {"a": np.float32(0.5), "b": torch.tensor(3), "c": np.arange(3), "d": torch.float32,
                      "e": (1, 2)})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": 3, "c": [0, 1, 2], "d": "torch.float32", "e": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left behind


def test_plot_is_written(tmp_path):
    for name in ("needle.png", "needle.svg"):
        plot_accuracy_vs_length({"hymba": {64: 1.0, 128: 0.9, 256: 0.8}, "ssm": {64: 0.5, 128: 0.2, 256: 0.1}},
                                tmp_path / name)
    assert (tmp_path / "needle.png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in (tmp_path / "needle.svg").read_text()[:2000]
