"""The benchmark suite's runner (`python -m benchmarks`), end to end under --smoke: tiny shapes on the CPU,
the GPU suite's code through Triton's interpreter. Checks the files a run leaves (one JSON per benchmark with
its metadata, the summary table), that a failing benchmark is recorded while the next one runs, the time
budget, and that README.md's tables change only for a run into benchmarks/results."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `benchmarks` is a package at the repository's root, not installed
    sys.path.insert(0, ROOT)
README = os.path.join(ROOT, "benchmarks", "README.md")
FIELDS = {"name", "suite", "description", "status", "error", "date", "wall_s", "smoke", "machine", "args",
          "params", "metrics", "details", "notes", "parallel_jobs"}
MACHINE = {"host", "cpu", "cpus", "torch_threads", "torch", "triton", "transformers", "gpu", "gpu_memory_GiB",
           "commit", "dirty", "python"}


def bench(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def load(out, name):
    with open(os.path.join(out, f"{name}.json")) as f:
        return json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"{name}.json holds {c}"))


def table_rows(out, suite):
    """{benchmark: row cells} of the suite's table in summary.md."""
    with open(os.path.join(out, "summary.md")) as f:
        section = f.read().split(f"## {suite.upper()} suite")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {r.split("`")[1]: [c.strip() for c in r.strip("|").split(" | ")] for r in rows}


def check_document(doc, name, suite, status):
    assert FIELDS <= set(doc), FIELDS - set(doc)
    assert (doc["name"], doc["suite"], doc["status"], doc["smoke"]) == (name, suite, status, True)
    assert MACHINE <= set(doc["machine"]) and doc["machine"]["torch_threads"] == 1
    assert doc["date"].endswith("UTC") and doc["wall_s"] > 0 and doc["args"]["suite"] == suite
    if status == "ok":
        assert doc["error"] is None
        heads = [m for m in doc["metrics"] if m["headline"]]
        assert heads, f"{name}: no headline number"
        for m in doc["metrics"]:
            assert {"name", "value", "unit", "headline", "compare", "refs"} <= set(m)
            assert m["value"] is None or isinstance(m["value"], (int, float)), m


@pytest.fixture(scope="module")
def readme_before():
    with open(README) as f:
        return f.read()


@pytest.mark.slow
def test_cpu_suite_smoke(tmp_path, readme_before):
    from benchmarks import registry

    run = bench("run", "--suite", "cpu", "--smoke", "--out", str(tmp_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    names = [m.NAME for m in registry.select("cpu", None)]
    assert set(names) >= {"cache_size", "decode_scaling", "generate_cpu", "train_cpu"}
    for name in names:
        check_document(load(tmp_path, name), name, "cpu", "ok")
    assert load(tmp_path, "cache_size")["metrics"][0]["value"] == pytest.approx(78.60, abs=0.01)  # the paper's
    rows = table_rows(tmp_path, "cpu")
    assert list(rows) == names and all(r[3] == "ok (smoke)" and "**" in r[1] for r in rows.values())
    assert all(r[1] == "not run yet" for r in table_rows(tmp_path, "gpu").values())
    with open(README) as f:
        assert f.read() == readme_before  # only a run into benchmarks/results rewrites it


@pytest.mark.slow
def test_gpu_suite_smoke_records_a_failure_and_goes_on(tmp_path, readme_before):
    """decode_attention under Triton's interpreter, with its warm-up job in the parallel phase; chat given a
    bad setting fails (and its warm-up job too), and the run still writes everything, exit status 1."""
    run = bench("run", "--suite", "gpu", "--smoke", "--warm", "--only", "chat,decode_attention",
                "--param", "chat.batches=x", "--out", str(tmp_path))
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    ok = load(tmp_path, "decode_attention")
    check_document(ok, "decode_attention", "gpu", "ok")
    assert [j["status"] for j in ok["parallel_jobs"]] == ["ok"]
    assert {m["unit"] for m in ok["metrics"]} == {"ms"} and ok["params"]["batch"] == 2
    bad = load(tmp_path, "chat")
    check_document(bad, "chat", "gpu", "failed")
    assert "ValueError" in bad["error"] and bad["args"]["params"] == {"chat.batches": "x"}
    assert [j["status"] for j in bad["parallel_jobs"]] == ["failed"]
    rows = table_rows(tmp_path, "gpu")
    assert rows["decode_attention"][3] == "ok (smoke)" and rows["chat"][3].startswith("failed (smoke): ValueError")
    assert rows["check_gpu"][1] == "not run yet"
    with open(README) as f:
        assert f.read() == readme_before


def test_time_budget_stops_what_runs_over_it_and_skips_the_rest(tmp_path):
    """A 0.01 s budget: the first benchmark is stopped (after the 1 s a process is always given), the second
    is not started; both are skipped, not failed, and a skipped benchmark's earlier measurement stays."""
    from benchmarks.__main__ import main

    earlier = dict(name="train_cpu", suite="cpu", status="ok", error=None, smoke=False, date="2026-01-01 00:00:00 UTC",
                   metrics=[dict(name="earlier", value=1.0, unit="tok/s", headline=True, compare=None, refs={})],
                   machine={"cpu": "x", "torch_threads": 1})
    (tmp_path / "train_cpu.json").write_text(json.dumps(earlier))
    assert main(["run", "--suite", "cpu", "--smoke", "--only", "cache_size,train_cpu", "--budget-s", "0.01",
                 "--out", str(tmp_path)]) == 0
    stopped = load(tmp_path, "cache_size")
    assert stopped["status"] == "skipped" and stopped["error"].startswith("time budget (0 s): stopped after")
    assert stopped["metrics"] == []
    assert load(tmp_path, "train_cpu") == earlier
    rows = table_rows(tmp_path, "cpu")
    assert rows["cache_size"][3].startswith("skipped (smoke): time budget")
    assert rows["train_cpu"][1:4] == ["earlier: **1 tok/s**", "", "ok"] and rows["generate_cpu"][1] == "not run yet"


def test_unknown_benchmark_is_refused(tmp_path):
    from benchmarks.__main__ import main

    assert main(["run", "--suite", "cpu", "--only", "no_such_benchmark", "--out", str(tmp_path)]) == 2
    assert os.listdir(tmp_path) == []


def test_list_names_every_benchmark_once(capsys):
    from benchmarks import registry
    from benchmarks.__main__ import main

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [m.NAME for m in registry.all_benchmarks()]
    assert len(names) == len(set(names)) == len(lines)
    for line, m in zip(lines, registry.all_benchmarks()):
        assert line.split()[:3] == [m.NAME, m.SUITE, "default" if m.DEFAULT else "opt-in"]
        assert m.DESCRIPTION in line and callable(m.run) and m.EST_S > 0


def test_readme_tables_are_replaced_between_their_markers_only(tmp_path):
    from benchmarks import report

    path = tmp_path / "README.md"
    path.write_text("intro\n<!-- results:gpu:start -->\nold gpu\n<!-- results:gpu:end -->\nmiddle\n"
                    "<!-- results:cpu:start -->\nold cpu\n<!-- results:cpu:end -->\nend\n")
    report.update_readme_tables({"cpu": "| new cpu |\n"}, path=str(path))
    assert path.read_text() == ("intro\n<!-- results:gpu:start -->\nold gpu\n<!-- results:gpu:end -->\nmiddle\n"
                                "<!-- results:cpu:start -->\n| new cpu |\n<!-- results:cpu:end -->\nend\n")
    with open(README) as f:  # the real README has both pairs of markers
        text = f.read()
    for suite in ("gpu", "cpu"):
        assert text.count(f"<!-- results:{suite}:start -->") == text.count(f"<!-- results:{suite}:end -->") == 1


def test_numbers_are_formatted_for_the_table():
    from benchmarks.report import fmt

    assert [fmt(13213.4, "tok/s"), fmt(443.2, "ms"), fmt(29.49, "%"), fmt(0.2812, "ms"), fmt(None, "ms")] == [
        "13,213 tok/s", "443 ms", "29.5%", "0.281 ms", "n/a"]


def test_engine_benchmarks_smoke(tmp_path):
    """engine_chat, engine_8k and anchors end to end under --smoke (tiny models on the CPU, the engine on the
    reference kernels); serving is skipped, not failed, where the checkout has no `hymba serve`."""
    names = ["engine_chat", "engine_8k", "anchors", "serving"]
    run = bench("run", "--suite", "gpu", "--smoke", "--no-warm", "--only", ",".join(names), "--out", str(tmp_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in names[:3]:
        check_document(load(tmp_path, name), name, "gpu", "ok")
    serving = load(tmp_path, "serving")
    if serving["status"] == "skipped":
        assert "hymba.cli.serve cannot be imported" in serving["error"]
    else:
        check_document(serving, "serving", "gpu", "ok")
    first = {m["name"]: m["value"] for m in load(tmp_path, "engine_8k")["metrics"]}
    assert first["first request / warm, worst prompt length"] > 0
    assert load(tmp_path, "anchors")["params"]["transformers"]
