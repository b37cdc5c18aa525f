"""Batched generation: on CUDA by default on the continuous-batching engine kept for the model (`shared`),
otherwise directly on a cache of the call's own (below), which also gives per-step logits.

    prompts [B, L] (left padded) -> cache = new_cache(model, B, L + max_new_tokens)   (meta prefix copied in)
        -> prefill chunk by chunk (peak activation memory bounded by the chunk, not the prompt)
        -> decode: pick a token per row, feed it back, until every row has finished

A row finishes on an end-of-sequence token, on a stop string in its generated text, or after
`max_new_tokens`. Finished rows are dropped from the cache (so they cost nothing more) and padded with
`pad_token_id` in the output, which has the shape transformers' `generate` returns: [B, L + steps taken].

On CUDA the decode steps run as one CUDA graph per step over a static cache (`cuda_graph.CUDAGraphDecoder`:
a step is hundreds of small kernels, which Python cannot launch as fast as the GPU runs them). A graph has a
fixed batch, so
there finished rows stay in it, fed padding, and their logits are ignored; tokens are the same either way.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import GenerationError, InputError
from .cache import new_cache, prefill
from .cuda_graph import CUDAGraphDecoder
from .sampling import SelectionParams, apply_repetition_penalty, select_next_tokens, suppress_tokens
from .shared import decode_on_engine
from .streaming import IncrementalDecoder, StopStringMatcher, Streamer


@dataclass
class GenerateOutput:
    """What `generate(..., return_dict=True)` returns."""

    sequences: torch.Tensor  # [B, L + steps]: prompts, then generated tokens, pad_token_id after a row finished
    finish_reasons: list[str]  # per row: "eos", "stop_string" or "length"
    num_new_tokens: list[int]  # per row, the finishing token included
    logits: torch.Tensor | None = None  # [B, steps, V] raw model logits per step (output_logits); NaN once finished
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_strings_matched: list[str | None] = field(default_factory=list)


def _check_prompts(input_ids, attention_mask, vocab_size: int, pad_token_id: int, device):
    if isinstance(input_ids, (list, tuple)) and input_ids and all(isinstance(r, (list, tuple)) for r in input_ids):
        if attention_mask is not None:
            raise InputError("pass prompts as a list of token lists without attention_mask (they are left padded "
                             "here), or as a padded tensor with its attention_mask")
        input_ids, attention_mask = _left_pad(input_ids, pad_token_id)
    if not isinstance(input_ids, torch.Tensor):
        input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2:
        raise InputError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise InputError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
    B, L = input_ids.shape
    if B == 0 or L == 0:
        raise InputError(f"input_ids is empty (shape {tuple(input_ids.shape)}): give every row at least one "
                         "token (e.g. the BOS token)")
    input_ids = input_ids.to(device=device, dtype=torch.long)
    if attention_mask is None:
        valid = torch.ones(B, L, dtype=torch.bool, device=device)
    else:
        attention_mask = torch.as_tensor(attention_mask)
        if attention_mask.dim() == 1:
            attention_mask = attention_mask[None]
        if attention_mask.shape != input_ids.shape:
            raise InputError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                             f"{tuple(input_ids.shape)} like input_ids")
        valid = attention_mask.to(device=device) != 0
        empty = (~valid.any(1)).nonzero().flatten().tolist()
        if empty:
            raise InputError(f"attention_mask rows {empty} have no tokens at all; every prompt needs at least one")
        # Left padding: once a row's tokens start, they do not stop (the mask never goes 1 -> 0).
        bad = (valid[:, :-1] & ~valid[:, 1:]).any(1).nonzero().flatten().tolist()
        if bad:
            raise InputError(
                f"attention_mask rows {bad} are not left-padded (a padding position follows a token). Generation "
                "appends after the last column, so every row's prompt must end there: pad on the left, e.g. "
                "tokenizer(texts, padding_side='left').")
    real = input_ids[valid]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= vocab_size):
        raise InputError(f"input_ids hold token ids outside the vocabulary [0, {vocab_size}): "
                         f"min {int(real.min())}, max {int(real.max())}")
    return input_ids, valid


def _left_pad(prompts, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids, mask


def _resolve_ids(eos_token_id, pad_token_id, config, tokenizer) -> tuple[list[int], int]:
    if eos_token_id is None:
        eos = list(config.eos_token_ids)
        if not eos and tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
            eos = [tokenizer.eos_token_id]
    elif isinstance(eos_token_id, int):
        eos = [eos_token_id]
    else:
        eos = [int(t) for t in eos_token_id]
    for t in eos:
        if not 0 <= t < config.vocab_size:
            raise InputError(f"eos_token_id {t} is outside the vocabulary [0, {config.vocab_size})")
    if pad_token_id is None:
        for candidate in (config.pad_token_id, getattr(tokenizer, "pad_token_id", None), *eos, 0):
            if candidate is not None:
                pad_token_id = int(candidate)
                break
    return eos, int(pad_token_id)


class _CacheSteps:
    """Eager decode steps on a HybridCache; finished rows are dropped from the cache."""

    def __init__(self, model, cache):
        self.model, self.cache = model, cache

    def drop(self, keep: torch.Tensor) -> None:
        self.cache.keep_rows(keep)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens[:, None], cache=self.cache, logits_to_keep=1).logits[:, -1]


class _StaticSteps:
    """Steps of a fixed-batch decoder (a CUDA graph): finished rows stay in the batch, fed `pad`, ignored."""

    def __init__(self, decoder, pad: int):
        self.decoder, self.pad = decoder, pad
        self.live = torch.arange(decoder.batch_size, device=decoder.cache.length_t.device)

    def drop(self, keep: torch.Tensor) -> None:
        self.live = self.live[keep]

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        feed = torch.full((self.decoder.batch_size,), self.pad, dtype=torch.long, device=tokens.device)
        feed[self.live] = tokens
        return self.decoder.step(feed)[self.live]


def _static_decoder(model, batch_size: int, max_length: int, compile_step: bool | str = False):
    if model.device.type != "cuda":
        raise InputError(f"cuda_graph=True needs the model on a CUDA device (it is on {model.device})")
    return CUDAGraphDecoder(model, batch_size, max_length, compile=compile_step)


# generate(cuda_graph=None) uses a graph on CUDA from this many new tokens (capturing costs a few steps' time)
CUDA_GRAPH_MIN_NEW_TOKENS = 16


def _emit(streamer, tokens: list[int | None]) -> None:
    if streamer is None:
        return
    if hasattr(streamer, "put"):
        streamer.put(tokens)
    else:
        streamer(tokens)


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 128,
    min_new_tokens: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    stop_strings: str | Sequence[str] | None = None,
    tokenizer=None,
    streamer: Streamer | Callable[[list[int | None]], None] | None = None,
    prefill_chunk_size: int | None = None,
    return_dict: bool = False,
    output_logits: bool = False,
    cuda_graph: bool | None = None,
    compile_step: bool | str = False,
    engine: bool | None = None,
) -> torch.Tensor | GenerateOutput:
    """Generate continuations of a batch of prompts; returns sequences [B, L + steps] (or a GenerateOutput).

    input_ids [B, L] with attention_mask [B, L] (1 = token, 0 = padding; padding must be on the left), or a
    list of token lists of any lengths (left padded here with pad_token_id).
    Greedy (argmax) unless `do_sample`; sampling applies temperature, top_k (0: off), top_p (1: off) and is
    reproducible from `seed` (or your own `generator`). `repetition_penalty` (> 1 discourages tokens already in
    the row, prompt included) applies to both. `eos_token_id` (one or several; default: the config's, [] for
    none) ends a row and is kept in the output; it is suppressed for the first `min_new_tokens` steps.
    `stop_strings` end a row as soon as its generated text (decoded with `tokenizer`) contains one; the token
    completing it is kept. `streamer`: an object with put(tokens_per_row)/end(), or a callable taking
    tokens_per_row (None for rows already finished). Prompts longer than `prefill_chunk_size` (default 512;
    the engine's own on the engine) are prefilled chunk by chunk, with the same result.

    `engine`: run the call on the continuous-batching engine kept for the model (`shared`; built at the first
    call, then no call at any batch size or prompt length compiles or captures anything). The default on CUDA,
    unless the call asks for what only the direct path gives: `output_logits`, a `generator`, `cuda_graph`
    or `compile_step` (or would run past max_position_embeddings). Its sampling draws from per-row seeds
    (`seed`, or fresh ones), so it differs from the direct path's draws; greedy output is the same.
    The direct path: `cuda_graph`: decode steps as a CUDA graph replay (default: on CUDA when max_new_tokens
    >= CUDA_GRAPH_MIN_NEW_TOKENS; falls back to eager steps, with a warning, if the capture fails).
    `compile_step`: the graph replays the step as torch.compile made it (fewer, fused kernels); needs the CUDA
    graph; True or a mode of `cuda_graph.STEP_COMPILE_MODES`. It compiles for each new batch size and total
    length (minutes for a 1.5B model), so it pays off for long generations at a size that repeats.
    """
    config = model.config
    device = model.device
    if max_new_tokens < 0 or min_new_tokens < 0:
        raise InputError(f"max_new_tokens ({max_new_tokens}) and min_new_tokens ({min_new_tokens}) must be >= 0")
    if prefill_chunk_size is not None and prefill_chunk_size < 1:
        raise InputError(f"prefill_chunk_size must be >= 1, got {prefill_chunk_size}")
    if seed is not None and generator is not None:
        raise InputError("pass seed or generator, not both")
    direct_only = [name for name, asked in (("output_logits", output_logits), ("generator", generator is not None),
                                            ("cuda_graph", cuda_graph is not None), ("compile_step", compile_step))
                   if asked]
    if engine and direct_only:
        raise InputError(f"engine=True runs on the shared engine, which does not take {', '.join(direct_only)}")
    if cuda_graph is None:
        cuda_graph = device.type == "cuda" and (max_new_tokens >= CUDA_GRAPH_MIN_NEW_TOKENS or compile_step)
    if compile_step and not cuda_graph:
        raise InputError(f"compile_step={compile_step!r} compiles the CUDA graph's step: it needs cuda_graph "
                         "(and a CUDA device)")
    params = SelectionParams(do_sample, temperature, top_k, top_p, repetition_penalty)
    if not do_sample and (temperature != 1.0 or top_k != 0 or top_p != 1.0):
        warnings.warn("temperature/top_k/top_p are ignored without do_sample=True (greedy decoding)", stacklevel=2)
    if stop_strings is not None:
        stop_strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        StopStringMatcher(stop_strings)  # validates
        if tokenizer is None:
            raise InputError("stop_strings need tokenizer= to turn the generated tokens into text")
    eos, pad_token_id = _resolve_ids(eos_token_id, pad_token_id, config, tokenizer)
    input_ids, valid = _check_prompts(input_ids, attention_mask, config.vocab_size, pad_token_id, device)
    B, L = input_ids.shape
    longest = int(valid.sum(1).max())
    limit = config.max_position_embeddings
    if longest > limit:
        raise InputError(f"a prompt of {longest} tokens is longer than the model's max_position_embeddings ({limit})")
    if longest + max_new_tokens > limit:
        warnings.warn(f"max_new_tokens={max_new_tokens} may take a {longest}-token prompt past the model's "
                      f"max_position_embeddings ({limit}): tokens beyond it are generated at positions the model "
                      "was not configured for", stacklevel=2)
    return_dict = return_dict or output_logits
    if engine is None:
        engine = device.type == "cuda" and not direct_only and longest + max_new_tokens <= limit
    elif engine and longest + max_new_tokens > limit:
        raise InputError(f"engine=True: a prompt of {longest} tokens and max_new_tokens={max_new_tokens} exceed the "
                         f"model's max_position_embeddings ({limit})")
    if engine and max_new_tokens > 0:
        prompts = [[t for t, ok in zip(row, keep) if ok] for row, keep in zip(input_ids.tolist(), valid.tolist())]
        got = decode_on_engine(
            model, prompts, eos=eos, pad_token_id=pad_token_id,
            max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=do_sample,
            temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed,
            stop_strings=stop_strings, tokenizer=tokenizer, prefill_chunk_size=prefill_chunk_size,
            emit=lambda tokens: _emit(streamer, tokens))
        if streamer is not None and hasattr(streamer, "end"):
            streamer.end()
        return _finish(input_ids, got["new"], got["reasons"], got["counts"], None, got["matched"],
                       got["prefill_seconds"], got["decode_seconds"], return_dict)
    prefill_chunk_size = prefill_chunk_size or 512
    if generator is None and seed is not None and do_sample:
        generator = torch.Generator(device=device).manual_seed(seed)

    # Columns that are padding in every row carry nothing: skip them.
    first = int(valid.any(0).nonzero()[0])
    ids, mask = input_ids[:, first:], valid[:, first:]
    has_pads = not bool(mask.all())

    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(B, config.vocab_size, dtype=torch.bool, device=device)
        row_of = torch.arange(B, device=device)[:, None].expand_as(ids)
        seen[row_of[mask], ids[mask]] = True

    t0 = time.perf_counter()
    if max_new_tokens == 0:
        if streamer is not None and hasattr(streamer, "end"):
            streamer.end()
        return _finish(input_ids, input_ids.new_empty(B, 0), ["length"] * B, [0] * B, None, [None] * B,
                       0.0, 0.0, return_dict)
    steps_fn = logits = None
    if cuda_graph:
        try:
            decoder = _static_decoder(model, B, ids.shape[1] + max_new_tokens, compile_step)
        except ValueError:
            raise
        except Exception as e:  # capture refused (a kernel bundle that syncs with the host, ...)
            warnings.warn(f"CUDA graph decoding unavailable ({type(e).__name__}: {e}); decoding eagerly",
                          stacklevel=2)
        else:
            logits = decoder.prefill(ids, mask if has_pads else None, prefill_chunk_size)
            steps_fn = _StaticSteps(decoder, pad_token_id)
    if steps_fn is None:
        cache = new_cache(model, B, ids.shape[1] + max_new_tokens)
        logits = prefill(model, cache, ids, mask if has_pads else None, prefill_chunk_size)
        steps_fn = _CacheSteps(model, cache)
    prefill_seconds = time.perf_counter() - t0

    rows = torch.arange(B, device=device)  # original row of each cache row
    generated = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    all_logits = (torch.full((B, max_new_tokens, logits.shape[-1]), float("nan"), device=device, dtype=logits.dtype)
                  if output_logits else None)
    reasons = ["length"] * B
    counts = [0] * B
    matched: list[str | None] = [None] * B
    decoders = matchers = None
    if stop_strings:
        decoders = [IncrementalDecoder(tokenizer, input_ids[b][valid[b]].tolist(), skip_special_tokens=False)
                    for b in range(B)]
        matchers = [StopStringMatcher(stop_strings) for _ in range(B)]

    t0 = time.perf_counter()
    steps = 0
    for step in range(max_new_tokens):
        finite = torch.isfinite(logits).all(-1)
        if not bool(finite.all()):
            row = int(rows[int((~finite).nonzero()[0])])
            raise GenerationError(f"the model's logits for row {row} are not finite (NaN or inf) at step {step} "
                                  "(0: after the prompt): the weights are damaged or the dtype overflows")
        if all_logits is not None:
            all_logits[rows, step] = logits
        scores = logits
        if seen is not None:
            scores = apply_repetition_penalty(scores, seen, repetition_penalty)
        if step < min_new_tokens:
            scores = suppress_tokens(scores, eos)
        next_tokens = select_next_tokens(scores, params, generator)
        generated[rows, step] = next_tokens
        steps = step + 1
        if seen is not None:
            seen[torch.arange(len(rows), device=device), next_tokens] = True

        per_row: list[int | None] = [None] * B
        done = []
        for r, t in zip(rows.tolist(), next_tokens.tolist()):
            per_row[r] = t
            counts[r] += 1
            if t in eos:
                reasons[r] = "eos"
            elif matchers is not None:
                matchers[r].feed(decoders[r].push([t]))
                if matchers[r].stopped:
                    reasons[r], matched[r] = "stop_string", matchers[r].matched
            done.append(reasons[r] != "length")
        _emit(streamer, per_row)
        if all(done) or step == max_new_tokens - 1:
            break
        if any(done):  # drop finished rows: they cost nothing from here on (a graph just ignores them)
            keep = torch.tensor([i for i, d in enumerate(done) if not d], device=device)
            steps_fn.drop(keep)
            rows, next_tokens = rows[keep], next_tokens[keep]
            if seen is not None:
                seen = seen[keep]
        logits = steps_fn(next_tokens)
    decode_seconds = time.perf_counter() - t0
    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()
    new = generated[:, :steps]
    return _finish(input_ids, new, reasons, counts, None if all_logits is None else all_logits[:, :steps],
                   matched, prefill_seconds, decode_seconds, return_dict)


def _finish(input_ids, new, reasons, counts, logits, matched, prefill_s, decode_s, return_dict):
    sequences = torch.cat([input_ids, new], dim=1)
    if not return_dict:
        return sequences
    return GenerateOutput(sequences=sequences, finish_reasons=reasons, num_new_tokens=counts, logits=logits,
                          prefill_seconds=prefill_s, decode_seconds=decode_s, stop_strings_matched=matched)
