"""Choosing the number of CPU threads while training on a machine shared with other work.

With more OpenMP threads than free cores, every parallel op waits for its slowest thread: on a busy 2-core
machine two threads can run several times slower than one, and the load changes as other jobs start and
stop. `ThreadTuner` times a few steps at each candidate thread count, keeps the fastest, and checks again
every `period` steps. (Thread counts can change float rounding: runs that must be bit-reproducible keep a
fixed `train.threads`.)
"""

from __future__ import annotations

import statistics

import torch


class ThreadTuner:
    def __init__(self, candidates: tuple[int, ...] | None = None, period: int = 40, probe_steps: int = 3):
        """candidates: default 1 and torch's default (the physical cores); each is timed over probe_steps steps
        (the median is kept, so one slow step does not decide)."""
        self.candidates = sorted(set(candidates or (1, torch.get_num_threads())))
        self.period, self.probe_steps = period, probe_steps
        self.best = torch.get_num_threads()
        self._queue: list[int] = []  # thread counts still to time in this round, each probe_steps times
        self._times: dict[int, list[float]] = {}
        self._until_probe = 0  # steps to run at `best` before the next round

    @property
    def active(self) -> bool:
        return len(self.candidates) > 1

    def before_step(self) -> None:
        if not self.active:
            return
        if not self._queue and self._until_probe == 0:
            self._queue = [c for c in self.candidates for _ in range(self.probe_steps)]
            self._times = {}
        torch.set_num_threads(self._queue[0] if self._queue else self.best)

    def after_step(self, seconds: float) -> str | None:
        """Record the step's duration; returns a message when a round of timing has chosen a count."""
        if not self.active:
            return None
        if not self._queue:
            self._until_probe -= 1
            return None
        self._times.setdefault(self._queue.pop(0), []).append(seconds)
        if self._queue:
            return None
        medians = {c: statistics.median(t) for c, t in self._times.items()}
        previous, self.best = self.best, min(medians, key=medians.get)
        self._until_probe = self.period
        torch.set_num_threads(self.best)
        timings = ", ".join(f"{c}: {s:.2f}s" for c, s in sorted(medians.items()))
        return f"CPU threads: {self.best} ({timings} per step)" + ("" if previous == self.best else
                                                                  f", was {previous}")
