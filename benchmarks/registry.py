"""The benchmarks, in the order a suite runs them (the GPU suite: checks first, then the most important
numbers, so that a run cut short by its time budget still has them).

Each module exposes NAME, SUITE, DESCRIPTION (one line), DEFAULT (False: opt-in, run only when named by
--only), EST_S (seconds it takes once its kernels are compiled, for the time budget) and run(ctx) -> dict
({"metrics": [...], "details": {...}}). A GPU benchmark with WARM_S (the seconds its warm-up takes) also runs
once as a warm-up job in the parallel phase (runner.py); a module may instead define jobs(ctx) -> [(label,
kwargs, seconds)] and job(ctx, **kwargs)."""

from __future__ import annotations

import importlib

MODULES = [
    "benchmarks.gpu.check",
    "benchmarks.gpu.engine_chat",
    "benchmarks.gpu.anchors",
    "benchmarks.gpu.engine_8k",
    "benchmarks.gpu.serving",
    "benchmarks.gpu.decode",
    "benchmarks.gpu.prefill",
    "benchmarks.gpu.chat",
    "benchmarks.gpu.train",
    "benchmarks.gpu.scan",
    "benchmarks.gpu.decode_attention",
    "benchmarks.gpu.train_compiled",
    "benchmarks.gpu.decode_compiled",
    "benchmarks.gpu.llama",
    "benchmarks.cpu.cache_size",
    "benchmarks.cpu.decode_scaling",
    "benchmarks.cpu.generate",
    "benchmarks.cpu.train",
    "benchmarks.cpu.recall_gap",
]
SUITES = ("cpu", "gpu")


def all_benchmarks() -> list:
    return [importlib.import_module(m) for m in MODULES]


def by_name() -> dict:
    return {m.NAME: m for m in all_benchmarks()}


def select(suite: str, only: list[str] | None) -> list:
    """The suite's default benchmarks, or those named in `only` (opt-in ones included), in suite order."""
    members = [m for m in all_benchmarks() if m.SUITE == suite]
    if not only:
        return [m for m in members if m.DEFAULT]
    names = {m.NAME for m in members}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ValueError(f"not benchmarks of the {suite} suite: {', '.join(unknown)} "
                         f"(python -m benchmarks list)")
    return [m for m in members if m.NAME in only]
