"""The engine: continuous batching of requests over a fixed pool of sequence slots.

    add_request -> waiting -> prefill (in staging rows, chunk by chunk, a few requests together)
                -> a slot of the pool -> one token per decode step -> finished: slot freed

Each `step()` launches one decode step for every running request, then reads the tokens of the step before
(so the host's bookkeeping overlaps the GPU's work instead of stalling it), then runs one prefill chunk
of the requests being admitted: a long prompt is spread over several steps instead of stalling the running
requests. Prompts are left-padded so that every prefill chunk has a width from a small set of buckets and
the decode step runs as one CUDA graph per batch bucket: after `warm_up()`, no request compiles anything.

Greedy output of a request does not depend on what runs beside it: rows never mix (every kernel is
row-wise), each row has its own write index and positions, and sampling draws from a counter-based RNG
seeded per request (`sampler`).
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import torch

from ..errors import InputError
from .params import CompletionOutput, RequestOutput, SamplingParams
from .sampler import BatchMode, RowParams, select, token_hashes
from .slots import SlotPool
from .steps import DecodeSteps
from .streaming import IncrementalDecoder, StopStringMatcher

MIN_BUCKET = 16


def round_chunk(size: int) -> int:
    """A prefill chunk size as the engine takes it: the largest power of two not above `size`, at least
    MIN_BUCKET (for callers that accept any size: the CLI, `generate`)."""
    return max(MIN_BUCKET, 1 << (max(int(size), 1).bit_length() - 1))


def prefill_buckets(chunk: int) -> list[int]:
    """The widths a prefill chunk may have: powers of two from MIN_BUCKET up to `chunk`, and `chunk`."""
    out, w = [], MIN_BUCKET
    while w < chunk:
        out.append(w)
        w *= 2
    return out + [chunk]


class Request:
    """One prompt's journey through the engine; `output()` is what its caller sees."""

    def __init__(self, request_id: str, prompt_ids: list[int], params: SamplingParams, seed: int,
                 eos: set[int], tokenizer=None, prompt: str | None = None,
                 on_update: Callable[["Request"], None] | None = None):
        self.request_id, self.prompt_ids, self.params, self.seed = request_id, prompt_ids, params, seed
        self.prompt, self.on_update = prompt, on_update
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else eos)
        self.output_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.row: int | None = None
        self.launched = 0  # tokens computed or in flight on the device
        self.arrival = time.monotonic()
        self.first_token_time: float | None = None
        self.finish_time: float | None = None
        self._decoder = self._matcher = None
        if tokenizer is not None:
            self._decoder = IncrementalDecoder(tokenizer, prompt_ids, params.skip_special_tokens)
            if params.stop:
                self._matcher = StopStringMatcher(params.stop)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add_token(self, token: int) -> None:
        if self.finished:
            return
        self.output_ids.append(token)
        if self.first_token_time is None:
            self.first_token_time = time.monotonic()
        n = len(self.output_ids)
        if self._decoder is not None:
            piece = self._decoder.push([token])
            if self._matcher is not None:
                piece = self._matcher.feed(piece)
            self.text += piece
            if self._matcher is not None and self._matcher.stopped:
                if self.params.include_stop_str_in_output:
                    self.text += self._matcher.matched
                return self._finish("stop", self._matcher.matched)
        if token in self.stop_ids and n > self.params.min_tokens:
            self._finish("stop", token)
        elif n >= self.params.max_tokens:
            self._finish("length", None)

    def _finish(self, reason: str, stop_reason) -> None:
        if self._decoder is not None and reason != "abort" and not (self._matcher and self._matcher.stopped):
            tail = self._decoder.flush()
            self.text += (self._matcher.feed(tail) + self._matcher.flush()) if self._matcher else tail
        self.finish_reason, self.stop_reason = reason, stop_reason
        self.finish_time = time.monotonic()

    def output(self) -> RequestOutput:
        done = CompletionOutput(0, self.text, list(self.output_ids), self.finish_reason, self.stop_reason)
        metrics = dict(arrival=self.arrival, first_token=self.first_token_time, finished=self.finish_time)
        return RequestOutput(self.request_id, self.prompt, list(self.prompt_ids), [done], self.finished, metrics)


class _Prefill:
    """Requests being prefilled together in the staging rows: their prompts left-padded to one width."""

    def __init__(self, requests: list[Request], widths: list[int], ids: torch.Tensor, mask: torch.Tensor,
                 num_meta: int):
        self.requests, self.widths, self.ids, self.mask = requests, widths, ids, mask
        self.pads = int(ids.shape[1] - min(len(r.prompt_ids) for r in requests))  # columns with any padding
        self.done = 0  # columns prefilled
        self.chunk = 0
        self.length = num_meta  # the staging rows' index space used so far


class Engine:
    """Continuous batching for one model. Thread-safe submission (`add_request`, `abort`); `step()` from one
    thread (the caller's in `LLM.generate`, a background thread in the server's `AsyncEngine`).

    max_num_seqs: requests decoding at once (the pool's slots). max_model_len: prompt + new tokens of one
    request (default: the model's max_position_embeddings). prefill_chunk_size: tokens of prompt per
    prefill forward (default 2048 on CUDA, 512 elsewhere), the bound on how long running requests wait
    for an admission. cuda_graphs: decode steps as CUDA graphs (default: on CUDA). compile_decode: run the
    decode step through torch.compile before capturing it (fewer kernels; minutes of start-up)."""

    def __init__(self, model, tokenizer=None, *, max_num_seqs: int = 8, max_model_len: int | None = None,
                 prefill_chunk_size: int | None = None, max_prefill_batch: int = 8, cuda_graphs: bool | None = None,
                 compile_decode: bool = False, eos_token_id: int | Sequence[int] | None = None):
        config = model.config
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, config
        device = model.device
        self.device = device
        if max_num_seqs < 1:
            raise InputError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        self.max_model_len = max_model_len or config.max_position_embeddings
        if not 1 <= self.max_model_len <= config.max_position_embeddings:
            raise InputError(f"max_model_len must be in [1, {config.max_position_embeddings}] (the model's "
                             f"max_position_embeddings), got {self.max_model_len}")
        chunk = prefill_chunk_size or (2048 if device.type == "cuda" else 512)
        if chunk < MIN_BUCKET or chunk & (chunk - 1):
            raise InputError(f"prefill_chunk_size must be a power of two >= {MIN_BUCKET}, got {chunk}")
        self.prefill_chunk_size = chunk
        self.buckets = prefill_buckets(chunk)
        staging = 1
        while staging * 2 <= min(max_prefill_batch, max_num_seqs):
            staging *= 2
        self.max_prefill_batch = staging
        if eos_token_id is None:
            eos = list(config.eos_token_ids)
            if not eos and tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
                eos = [tokenizer.eos_token_id]
        else:
            eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        self.eos = set(int(t) for t in eos)
        self.eos_t = torch.tensor(sorted(self.eos), dtype=torch.long, device=device)
        pad = config.pad_token_id
        self.pad_id = pad if pad is not None and 0 <= pad < config.vocab_size else 0

        # capacity: the longest request, the first chunk's left padding, and one step past the end (a finished
        # request is still computed once while its tokens are read back)
        self.pool = SlotPool(model, max_num_seqs, self.max_model_len + chunk + 1, num_staging=staging)
        self.params = RowParams.allocate(self.pool.rows, config.vocab_size, device)
        self.tokens = torch.zeros(self.pool.rows, dtype=torch.long, device=device)  # next input of each row
        self.token_hash = token_hashes(config.vocab_size, device)
        if cuda_graphs is None:
            cuda_graphs = device.type == "cuda"
        if cuda_graphs and device.type != "cuda":
            raise InputError(f"cuda_graphs=True needs the model on a CUDA device (it is on {device})")
        self._cuda = device.type == "cuda"
        t0 = time.perf_counter()
        self.steps = DecodeSteps(model, self.pool, self.tokens, cuda_graphs, compile=compile_decode)
        self.startup_seconds = time.perf_counter() - t0

        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # running[i] occupies pool row i
        self._prefill: _Prefill | None = None
        self._inflight = None  # (requests by row, host tokens, event) of the decode step launched last
        self._host = [torch.zeros(self.pool.rows, dtype=torch.long, pin_memory=self._cuda) for _ in range(2)]
        self._flip = 0
        self._lock = threading.Lock()
        self._inbox: list[Request] = []
        self._aborts: set[str] = set()
        self._counter = 0
        self.stats = dict(prompt_tokens=0, generation_tokens=0, steps=0, prefill_chunks=0)

    # ---- submission (any thread) -----------------------------------------------------------------------------
    def add_request(self, prompt_ids: Sequence[int], params: SamplingParams | None = None, *,
                    request_id: str | None = None, prompt: str | None = None,
                    on_update: Callable[[Request], None] | None = None) -> Request:
        """Queue a prompt (token ids); returns its Request, which `step()` advances."""
        params = params or SamplingParams()
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise InputError("the prompt is empty: give at least one token (e.g. the BOS token)")
        V = self.config.vocab_size
        bad = [t for t in ids if not 0 <= t < V]
        if bad:
            raise InputError(f"the prompt holds token ids outside the vocabulary [0, {V}): {bad[:5]}")
        if len(ids) + params.max_tokens > self.max_model_len:
            raise InputError(f"the prompt has {len(ids)} tokens and max_tokens is {params.max_tokens}: "
                             f"{len(ids) + params.max_tokens} is more than the engine's max_model_len "
                             f"({self.max_model_len})")
        if params.stop and self.tokenizer is None:
            raise InputError("stop strings need the engine to have a tokenizer")
        for t in params.stop_token_ids:
            if not 0 <= t < V:
                raise InputError(f"stop_token_ids holds {t}, outside the vocabulary [0, {V})")
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        with self._lock:
            if request_id is None:
                self._counter += 1
                request_id = f"req-{self._counter}"
            req = Request(request_id, ids, params, seed, self.eos, self.tokenizer, prompt, on_update)
            self._inbox.append(req)
        return req

    def abort(self, request_id: str) -> None:
        """Stop a request (its client went away): it leaves the queue or frees its slot at the next step."""
        with self._lock:
            self._aborts.add(request_id)

    def run(self, requests: Sequence[Request]) -> None:
        """For a caller that owns the engine: step until every one of `requests` has finished and the engine has
        settled (tokens are read back one step late). Interrupted (an error, Ctrl-C), it cancels them first."""
        try:
            while not all(r.finished for r in requests):
                self.step()
            while self.has_work():
                self.step()
        except BaseException:
            self.cancel(requests)
            raise

    def cancel(self, requests: Iterable[Request]) -> None:
        """Abort `requests` and step until the engine has let them go, so none is left for the next caller."""
        for r in requests:
            self.abort(r.request_id)
        while self.has_work():
            self.step()

    # ---- state ----------------------------------------------------------------------------------------------
    def has_work(self) -> bool:
        with self._lock:
            pending = bool(self._inbox or self._aborts)
        return pending or bool(self.waiting or self.running or self._prefill or self._inflight)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + len(self._inbox)

    @property
    def num_running(self) -> int:
        return len(self.running) + (len(self._prefill.requests) if self._prefill else 0)

    # ---- one iteration --------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> list[Request]:
        """Launch a decode step, read the previous one's tokens, run one prefill chunk; returns the requests
        that got tokens or finished."""
        updated: dict[str, Request] = {}
        self._drain_inbox(updated)
        launched = self._launch() if any(r.launched < r.params.max_tokens for r in self.running) else None
        if self._inflight is not None:
            self._collect(self._inflight, updated)
        self._inflight = launched
        if self._prefill is None:
            self._admit()
        if self._prefill is not None:
            self._prefill_chunk(updated)
        for req in updated.values():
            if req.on_update is not None:
                req.on_update(req)
        return list(updated.values())

    def _drain_inbox(self, updated: dict) -> None:
        with self._lock:
            new, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, set()
        self.waiting.extend(new)
        if not aborts:
            return
        for req in [r for r in self.waiting if r.request_id in aborts]:
            self.waiting.remove(req)
            req._finish("abort", None)
            updated[req.request_id] = req
        for req in [r for r in self.running if r.request_id in aborts]:
            req._finish("abort", None)
            self._free(req)
            updated[req.request_id] = req
        if self._prefill is not None:  # finished when its prefill completes (its rows are mid-chunk)
            for req in self._prefill.requests:
                if req.request_id in aborts:
                    req._finish("abort", None)
                    updated[req.request_id] = req

    def _launch(self):
        """Enqueue one decode step for the running rows and the copy of its tokens to the host."""
        n = len(self.running)
        logits = self.steps.run(n)[:n]
        mode = self._mode(self.running)
        tokens = select(logits, slice(0, n), self.params, mode, self.eos_t, self.token_hash)
        self.tokens[:n] = tokens
        host = self._host[self._flip]
        self._flip ^= 1
        host[:n].copy_(tokens, non_blocking=self._cuda)
        event = None
        if self._cuda:
            event = torch.cuda.Event()
            event.record()
        for r in self.running:
            r.launched += 1
        self.stats["steps"] += 1
        return list(self.running), host, event

    def _collect(self, inflight, updated: dict) -> None:
        """Hand the tokens of a launched step to their requests; free the rows of those that finished."""
        requests, host, event = inflight
        if event is not None:
            event.synchronize()
        tokens = host[:len(requests)].tolist()
        for req, token in zip(requests, tokens):
            if req.finished:
                continue
            req.add_token(token)
            self.stats["generation_tokens"] += 1
            updated[req.request_id] = req
            if req.finished:
                self._free(req)

    def _mode(self, requests: list[Request]) -> BatchMode:
        sample = any(not r.params.greedy for r in requests)
        return BatchMode(
            sample=sample,
            filter=any(not r.params.greedy and (r.params.top_k > 0 or r.params.top_p < 1) for r in requests),
            penalty=any(r.params.repetition_penalty != 1.0 for r in requests),
            min_tokens=any(r.launched < r.params.min_tokens for r in requests))

    def _free(self, req: Request) -> None:
        """Give req's row back: the last running row moves into it, so the running rows stay 0..n-1."""
        r, last = req.row, len(self.running) - 1
        req.row = None
        if r is None:
            return
        if r != last:
            mover = self.running[last]
            self.pool.move_row(last, r)
            self.params.move_row(last, r)
            self.tokens[r] = self.tokens[last]
            self.running[r], mover.row = mover, r
        self.running.pop()
        self.pool.active[last] = 0

    # ---- admission and prefill ------------------------------------------------------------------------------
    def _admit(self) -> None:
        free = self.pool.num_slots - len(self.running)
        n = min(len(self.waiting), free, self.max_prefill_batch)
        if n <= 0:
            return
        k = 1
        while k * 2 <= n:
            k *= 2
        requests = [self.waiting.popleft() for _ in range(k)]
        width = max(MIN_BUCKET, self.prefill_chunk_size // k)  # a chunk's tokens stay within the budget
        width = self.buckets[max(i for i, b in enumerate(self.buckets) if b <= width)]
        longest = max(len(r.prompt_ids) for r in requests)
        n_full = (longest - 1) // width
        first = next(b for b in self.buckets if b >= longest - n_full * width)
        widths = [first] + [width] * n_full
        W = sum(widths)
        ids = torch.full((k, W), self.pad_id, dtype=torch.long)
        mask = torch.zeros((k, W), dtype=torch.bool)
        for j, r in enumerate(requests):
            ids[j, W - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[j, W - len(r.prompt_ids):] = True
        for row in range(self.pool.num_slots, self.pool.num_slots + k):
            self.pool.reset_row(row)
        self._prefill = _Prefill(requests, widths, ids.to(self.device), mask.to(self.device), self.pool.num_meta)

    def _prefill_chunk(self, updated: dict) -> None:
        p = self._prefill
        k, S = len(p.requests), self.pool.num_slots
        w = p.widths[p.chunk]
        start = p.done
        view = self.pool.prefill_view(S, k, p.length)
        mask = p.mask[:, start:start + w] if start < p.pads else None
        logits = self.model(p.ids[:, start:start + w], attention_mask=mask, cache=view, logits_to_keep=1).logits[:, -1]
        p.length, p.done, p.chunk = view.length, start + w, p.chunk + 1
        self.stats["prefill_chunks"] += 1
        if p.chunk < len(p.widths):
            return
        # the prompts are in: each request takes the next free row of the pool
        self._prefill = None
        self.pool.length_t[S:S + k] = p.length
        n0 = len(self.running)
        for j, req in enumerate(p.requests):
            row = n0 + j
            self.pool.move_row(S + j, row)
            prm = req.params
            self.params.set_row(row, temperature=float(prm.temperature), top_k=prm.top_k, top_p=float(prm.top_p),
                                penalty=float(prm.repetition_penalty), min_tokens=prm.min_tokens, seed=req.seed,
                                prompt=torch.tensor(req.prompt_ids, device=self.device))
            req.row = row
            self.running.append(req)
        rows = slice(n0, n0 + k)
        first = select(logits, rows, self.params, self._mode(p.requests), self.eos_t, self.token_hash)
        self.tokens[rows] = first
        self.pool.active[rows] = 1
        self.stats["prompt_tokens"] += sum(len(r.prompt_ids) for r in p.requests)
        for req, token in zip(p.requests, first.tolist()):
            req.launched = 1
            if req.finished:  # aborted while its prompt was being prefilled
                self._free(req)
                continue
            req.add_token(token)
            self.stats["generation_tokens"] += 1
            updated[req.request_id] = req
            if req.finished:
                self._free(req)

    # ---- start-up -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def warm_up(self) -> float:
        """Run every prefill shape once (prompt widths x group sizes) and the sampler in every mode, so that no
        request compiles, autotunes or loads anything; returns the seconds it took. The decode graphs were
        captured at construction."""
        t0 = time.perf_counter()
        S = self.pool.num_slots
        k = 1
        while k <= self.max_prefill_batch:
            width = max(MIN_BUCKET, self.prefill_chunk_size // k)
            for w in self.buckets:
                if w > width:
                    break
                for row in range(S, S + k):
                    self.pool.reset_row(row)
                ids = torch.full((k, w), self.pad_id, dtype=torch.long, device=self.device)
                mask = torch.ones((k, w), dtype=torch.bool, device=self.device)
                mask[:, : w // 2] = False  # the padded variant (first chunks) ...
                view = self.pool.prefill_view(S, k, self.pool.num_meta)
                self.model(ids, attention_mask=mask, cache=view, logits_to_keep=1)
                for row in range(S, S + k):  # ... and the unpadded one (the kernels see the same shapes at
                    self.pool.reset_row(row)  # any fill, and two chunks may not fit a short max_model_len)
                self.model(ids, cache=self.pool.prefill_view(S, k, self.pool.num_meta), logits_to_keep=1)
            k *= 2
        # the sampler's kernels once in every mode (CUDA loads a kernel at its first launch): on a staging row,
        # whose settings no request reads (a new request's settings go to the row it decodes in)
        logits = torch.zeros(1, self.config.vocab_size, device=self.device)
        for mode in (BatchMode(), BatchMode(sample=True, filter=True, penalty=True, min_tokens=True)):
            select(logits, slice(S, S + 1), self.params, mode, self.eos_t, self.token_hash)
        if self._cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0
