"""Choosing the number of CPU threads while training on a machine shared with other work.

With more OpenMP threads than free cores, every parallel op waits for its slowest thread: on a busy 2-core
machine two threads can run ten times slower than one, and the load changes as other jobs start and stop.
`ThreadTuner` times a few steps at each candidate thread count, keeps the fastest, and times them again every
`period` steps, or at once when a step takes `slowdown` times longer than it did. A candidate that is already
`slowdown` times slower than the best of the round is dropped after one step. (Thread counts can change float
rounding: runs that must be bit-reproducible keep a fixed `train.threads`.)
"""

from __future__ import annotations

import math
import statistics

import torch


class ThreadTuner:
    def __init__(self, candidates: tuple[int, ...] | None = None, period: int = 40, probe_steps: int = 3,
                 slowdown: float = 2.0):
        """candidates: default 1 and torch's default (the physical cores); each is timed over probe_steps steps
        (the median is kept, so one slow step, like the very first, does not decide)."""
        self.candidates = sorted(set(candidates or (1, torch.get_num_threads())))
        self.period, self.probe_steps, self.slowdown = period, probe_steps, slowdown
        self.best = torch.get_num_threads()
        self.best_time = math.inf  # median step time of `best` in the last round
        self._queue: list[int] = []  # candidates still to time in this round
        self._samples: list[float] = []  # step times of the candidate being timed
        self._round: dict[int, float] = {}  # candidate -> median step time, this round
        self._until_round = 0  # steps to run at `best` before the next round

    @property
    def active(self) -> bool:
        return len(self.candidates) > 1

    def before_step(self) -> None:
        if not self.active:
            return
        if not self._queue and self._until_round <= 0:
            self._queue, self._samples, self._round = list(self.candidates), [], {}
        torch.set_num_threads(self._queue[0] if self._queue else self.best)

    def after_step(self, seconds: float) -> str | None:
        """Record the step's duration; returns a message when timing first chooses a count or changes it."""
        if not self.active:
            return None
        if not self._queue:  # running at the best count
            self._until_round -= 1
            if seconds > self.slowdown * self.best_time:  # the machine got busier: time again now
                self._until_round = 0
            return None
        self._samples.append(seconds)
        fastest = min(self._round.values(), default=math.inf)
        if len(self._samples) >= self.probe_steps or seconds > self.slowdown * fastest:
            self._round[self._queue.pop(0)] = statistics.median(self._samples)
            self._samples = []
        if self._queue:
            return None
        previous, first = self.best, math.isinf(self.best_time)
        self.best = min(self._round, key=self._round.get)
        self.best_time = self._round[self.best]
        self._until_round = self.period
        torch.set_num_threads(self.best)
        if previous == self.best and not first:
            return None
        timings = ", ".join(f"{c}: {s:.2f}s" for c, s in sorted(self._round.items()))
        return f"CPU threads: {self.best} ({timings} per step)" + ("" if first else f", was {previous}")
