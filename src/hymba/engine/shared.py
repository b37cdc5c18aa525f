"""`generate()` on the continuous-batching engine: one engine kept per model and reused by every call, so a
call at a new batch size or prompt length captures and compiles nothing (the engine did that at its start).

The engine is built on the first call (its decode graphs captured and every prefill shape run, on CUDA) with
room for the call's batch (at least 8 rows, a power of two, at most `MAX_ROWS`; more prompts wait for a free
row) and prompts up to the model's max_position_embeddings, and rebuilt (never with fewer rows) only when a
call needs more rows, other end-of-sequence ids or another prefill chunk, or the weights changed.
`release_engine(model)` frees it.
"""

from __future__ import annotations

import threading
import time

import torch

from ..errors import GenerationError
from ..modeling.model import _weights_version
from .core import Engine, round_chunk
from .params import MAX_SEED, SamplingParams

MAX_ROWS = 128
_LOCK = threading.Lock()  # calls from several threads take turns on the engines


def _rows_for(batch: int) -> int:
    rows = 8
    while rows < min(batch, MAX_ROWS):
        rows *= 2
    return rows


def shared_engine(model, batch: int, eos: list[int], prefill_chunk_size: int | None) -> Engine:
    """The model's engine for a call of `batch` prompts (built, or rebuilt, when it cannot serve the call)."""
    chunk = round_chunk(prefill_chunk_size) if prefill_chunk_size is not None else None
    key = (model.device, model.dtype, _weights_version(model), tuple(sorted(set(eos))), chunk)
    held = model.__dict__.get("_generate_engine")
    if held is not None and held[0] == key and held[1].pool.num_slots >= min(batch, MAX_ROWS):
        return held[1]
    rows = max(_rows_for(batch), held[1].pool.num_slots if held is not None else 0)  # (rows only grow)
    release_engine(model)
    engine = Engine(model, max_num_seqs=rows, prefill_chunk_size=chunk, eos_token_id=eos)
    if model.device.type == "cuda":
        engine.warm_up()
    model.__dict__["_generate_engine"] = (key, engine)
    return engine


def release_engine(model) -> None:
    """Free the engine `generate()` keeps for `model` (its slot pool and CUDA graphs)."""
    held = model.__dict__.pop("_generate_engine", None)
    if held is not None and model.device.type == "cuda":
        del held
        torch.cuda.empty_cache()


def decode_on_engine(model, prompts: list[list[int]], *, eos: list[int], pad_token_id: int, max_new_tokens: int,
                     min_new_tokens: int, do_sample: bool, temperature: float, top_k: int, top_p: float,
                     repetition_penalty: float, seed: int | None, stop_strings: list[str] | None, tokenizer,
                     prefill_chunk_size: int | None, emit) -> dict:
    """Run every prompt on the shared engine; `emit(tokens_per_row)` is called once per step in lock step, as
    the direct path does (None for a row that has finished). Returns the new tokens [B, steps] padded with
    `pad_token_id`, and per row the finish reason ("eos", "stop_string", "length"), token count and the stop
    string matched, with the seconds until every row had its first token and after."""
    with _LOCK:  # one call at a time steps the engine
        engine = shared_engine(model, len(prompts), eos, prefill_chunk_size)
        engine.tokenizer = tokenizer if stop_strings else None  # (text only to match stop strings on)
        t0 = time.monotonic()  # (the requests' clock)
        emitted = 0

        def emit_ready() -> None:
            nonlocal emitted
            while True:  # step `emitted` is complete once every row has its token or has finished before it
                rows = [r.output_ids for r in requests]
                if not any(len(o) > emitted for o in rows):
                    return
                if any(len(o) <= emitted and not r.finished for r, o in zip(requests, rows)):
                    return
                emit([o[emitted] if len(o) > emitted else None for o in rows])
                emitted += 1

        requests = []
        try:
            for b, ids in enumerate(prompts):
                row_seed = None if seed is None else (seed + b * 1_000_003) % (MAX_SEED + 1)
                params = SamplingParams(max_tokens=max_new_tokens, min_tokens=min_new_tokens,
                                        temperature=temperature if do_sample else 0.0,
                                        top_k=top_k if do_sample else 0, top_p=top_p if do_sample else 1.0,
                                        repetition_penalty=repetition_penalty, seed=row_seed, stop=stop_strings,
                                        skip_special_tokens=False)
                requests.append(engine.add_request(ids, params))
            while not all(r.finished for r in requests):
                engine.step()
                emit_ready()
            while engine.has_work():
                engine.step()
        except BaseException:
            engine.cancel(requests)
            raise
        emit_ready()
        first = max(r.first_token_time for r in requests)
        counts = [len(r.output_ids) for r in requests]
        new = torch.full((len(prompts), max(counts)), pad_token_id, dtype=torch.long)
        reasons, matched = [], []
        for b, r in enumerate(requests):
            new[b, :counts[b]] = torch.tensor(r.output_ids, dtype=torch.long)
            if r.finish_reason == "stop":
                stop_string = isinstance(r.stop_reason, str)
                reasons.append("stop_string" if stop_string else "eos")
                matched.append(r.stop_reason if stop_string else None)
            elif r.finish_reason == "length":
                reasons.append("length")
                matched.append(None)
            else:
                raise GenerationError(f"row {b} ended with {r.finish_reason!r} on the engine")
        return dict(new=new.to(model.device), reasons=reasons, counts=counts, matched=matched,
                    prefill_seconds=first - t0, decode_seconds=time.monotonic() - first)
