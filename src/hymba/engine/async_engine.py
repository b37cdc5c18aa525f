"""The engine on a background thread, for asyncio servers: `generate()` is an async iterator of deltas.

The thread steps the engine while it has work and sleeps otherwise; requests and aborts cross threads
through the engine's own lock, and outputs come back through each request's asyncio queue
(`loop.call_soon_threadsafe`). A consumer that stops iterating (its client went away) aborts its request,
which frees its slot at the next step. `shutdown(drain=True)` refuses new requests, lets the running ones
finish, then stops the thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..errors import HymbaError
from .core import Engine, Request
from .params import SamplingParams


class EngineBusyError(HymbaError):
    """The waiting queue is full (the server answers 429)."""


class EngineStoppedError(HymbaError):
    """The engine is shutting down or has failed (the server answers 503)."""


@dataclass
class Delta:
    """What a request produced since its previous delta."""

    request_id: str
    text: str  # new text (empty without a tokenizer)
    token_ids: list[int]  # new tokens
    num_prompt_tokens: int
    num_output_tokens: int  # all so far
    finished: bool
    finish_reason: str | None
    stop_reason: int | str | None
    first_token_time: float | None
    arrival: float


def _post(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, item) -> bool:
    """Hand item to a consumer's loop from the engine thread; False when that loop is closed (its client and
    event loop are gone), which must not kill the engine thread."""
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
        return True
    except RuntimeError:
        return False


class AsyncEngine:
    def __init__(self, engine: Engine, max_waiting: int = 256):
        self.engine = engine
        self.max_waiting = max_waiting
        self.error: BaseException | None = None
        self._accepting = True
        self._stop = False
        self._wake = threading.Event()
        self._sent: dict[str, tuple[int, int]] = {}
        self._failures: dict = {}  # request id -> how to hand that request an engine failure
        self._thread = threading.Thread(target=self._run, name="hymba-engine", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        return self.error is None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop:
                if self.engine.has_work():
                    self.engine.step()
                else:
                    self._wake.wait(0.05)
                    self._wake.clear()
        except BaseException as e:  # a failed step: every waiting client gets an error, not a hang
            self.error = e
            self._accepting = False
            for fail in list(self._failures.values()):
                fail(e)

    async def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None,
                       prompt: str | None = None) -> AsyncIterator[Delta]:
        """Submit a request and yield its deltas until it finishes. Raises EngineBusyError when the queue is
        full, EngineStoppedError when shutting down or failed, InputError for a bad request."""
        if not self._accepting:
            raise EngineStoppedError("the engine is shutting down" if self.error is None
                                     else f"the engine failed: {self.error!r}")
        if self.engine.num_waiting >= self.max_waiting:
            raise EngineBusyError(f"{self.engine.num_waiting} requests are waiting (the limit is "
                                  f"{self.max_waiting}); retry later")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_update(req: Request) -> None:
            if not _post(loop, queue, self._delta(req)):
                self.engine.abort(req.request_id)  # nobody is listening any more: free the slot

        req = self.engine.add_request(prompt_ids, params, request_id=request_id, prompt=prompt, on_update=on_update)
        self._failures[req.request_id] = lambda e: _post(loop, queue, e)
        self._wake.set()
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise EngineStoppedError(f"the engine failed: {item!r}") from item
                finished = item.finished
                yield item
        finally:
            self._failures.pop(req.request_id, None)
            if not finished:
                self.engine.abort(req.request_id)
                self._wake.set()

    def _delta(self, req: Request) -> Delta:
        """On the engine thread: the part of req's output not yet sent."""
        n_tok, n_text = self._sent.get(req.request_id, (0, 0))
        tokens, text = req.output_ids[n_tok:], req.text[n_text:]
        if req.finished:
            self._sent.pop(req.request_id, None)
        else:
            self._sent[req.request_id] = (len(req.output_ids), len(req.text))
        return Delta(req.request_id, text, tokens, len(req.prompt_ids), len(req.output_ids), req.finished,
                     req.finish_reason, req.stop_reason, req.first_token_time, req.arrival)

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; with `drain`, wait (up to `timeout` s) for the running ones; stop the thread."""
        self._accepting = False
        deadline = None if timeout is None else time.monotonic() + timeout
        while drain and self.healthy and self.engine.has_work():
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)
