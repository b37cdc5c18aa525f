"""Progress of a long command on standard error: a bar on a terminal, a plain line every few seconds
otherwise (a log file, a CI job), so that a run that takes minutes is never silent."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress(desc: str, every_s: float = 10.0, stream=None) -> Iterator[Callable[[int, int], None]]:
    """Yields update(done, total)."""
    stream = stream or sys.stderr
    start = last = time.monotonic()
    state = {"done": 0, "total": 0}
    tty = stream.isatty()

    def update(done: int, total: int) -> None:
        nonlocal last
        state.update(done=done, total=total)
        now = time.monotonic()
        if tty:
            stream.write(f"\r{desc}: {done}/{total} ({100 * done / max(total, 1):.0f}%), {now - start:.0f} s")
            stream.flush()
        elif now - last >= every_s or done == total:
            print(f"{desc}: {done}/{total} ({100 * done / max(total, 1):.0f}%), {now - start:.0f} s", file=stream,
                  flush=True)
            last = now

    yield update
    if tty and state["total"]:
        stream.write("\n")
        stream.flush()
