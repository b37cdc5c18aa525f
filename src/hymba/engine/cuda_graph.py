"""Decoding as one CUDA graph per model step, over a static cache.

A decode step of a 1.5B model at large batch is a few milliseconds of GPU work split into hundreds of
kernels; launched from Python, the launches alone cost about as much. Captured once as a CUDA graph and
replayed, the step costs its GPU time only.

A graph replays fixed addresses and shapes, so the cache must not move or grow and every index it writes
must live on the device:

- `StaticHybridCache` keeps one more slot in the sliding-window ring (window + 1), so a decode step writes
  its own K/V first and then attends over the ring alone; the stock cache instead concatenates the ring with
  the new token, a copy of the whole ring per layer per step. Global layers attend over their whole buffer;
  empty slots have position -1 and are masked, as always.
- The write index of a decode step is a device tensor advanced inside the graph.

Prefill still runs eagerly (any length, padding, chunks) through the same cache. The meta-token prefix is
shared: the cache starts as a copy of `model.model.meta_prefix()`, computed once per weights version.

`compile=True` also runs the step through torch.compile before it is captured. Replayed, a graph of the eager
step still runs each of its ~1,700 kernels (hundreds are tiny elementwise ones, norms, casts, copies: a few
microseconds each however little they do); inductor fuses those. The cache's Python bookkeeping
(`begin_chunk`, `end_chunk`) stays out of the compiled graphs, so the step compiles once, however far the
cache fills; shapes are static, so another batch size or capacity compiles again.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..modeling.cache import CacheFullError, HybridCache
from .cache import prefill


class StaticHybridCache(HybridCache):
    """A HybridCache whose decode steps (one token per row, no padding) have static shapes and device-side
    indices, so a whole model step can be captured in a CUDA graph. Prefill works as in HybridCache."""

    def __init__(self, config, batch_size: int, max_length: int, device=None, dtype: torch.dtype = torch.float32):
        super().__init__(config, batch_size, max_length, device=device, dtype=dtype)
        c = config
        self.static_shapes = True
        if c.sliding_window is not None and self.ring:
            ring = min(c.sliding_window + 1, max_length)  # the query's own key sits in the ring too
            if ring != self.ring:
                self.ring = ring
                M = self.num_meta
                for i in list(self.k):
                    if not c.is_global(i):
                        self.k[i] = torch.zeros(batch_size, c.num_key_value_heads, M + ring, c.head_dim,
                                                device=device, dtype=dtype)
                        self.v[i] = torch.zeros(batch_size, c.num_key_value_heads, M + ring, c.v_head_dim,
                                                device=device, dtype=dtype)
                if False in self.slot_positions:
                    self.slot_positions[False] = torch.full((batch_size, M + ring), -1, dtype=torch.int32,
                                                            device=device)
        self.length_t = torch.zeros(1, dtype=torch.long, device=device)  # == self.length, on the device
        self._step: tuple | None = None
        _keep_bookkeeping_eager()

    # ---- the decode step: device-side indices, whole buffers ----------------------------------------------
    def begin_chunk(self, positions: torch.Tensor):
        if positions.shape[1] != 1:
            self._step = None
            return super().begin_chunk(positions)
        B = positions.shape[0]
        if B != self.batch_size:
            raise InputError(f"cache was made for batch {self.batch_size}, got a batch of {B}")
        if self.length + 1 > self.capacity:
            raise CacheFullError(f"cache holds {self.max_length} text tokens (+{self.num_meta} meta); it is full")
        pos32 = positions.to(torch.int32)
        idx = self.length_t
        M = self.num_meta
        slot = torch.where(idx < M, idx, M + (idx - M) % max(self.ring, 1))
        keys = {}
        if True in self.slot_positions:
            self.slot_positions[True].index_copy_(1, idx, pos32)
            keys[True] = self.slot_positions[True]
        if False in self.slot_positions:
            self.slot_positions[False].index_copy_(1, slot, pos32)
            keys[False] = self.slot_positions[False]
        self._step = (idx, slot)
        return keys

    def attention_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if self._step is None:
            return super().attention_kv(layer, k, v)
        idx, slot = self._step
        where = idx if self.config.is_global(layer) else slot
        K, V = self.k[layer], self.v[layer]
        K.index_copy_(2, where, k.to(K.dtype))
        V.index_copy_(2, where, v.to(V.dtype))
        return K, V

    def end_chunk(self, T: int, n_valid) -> None:
        super().end_chunk(T, n_valid)
        self.length_t += T
        self._step = None

    # ---- reuse ---------------------------------------------------------------------------------------------
    def reset(self, prefix: HybridCache) -> None:
        """Empty the cache in place (the graph keeps its addresses) and refill it from the meta prefix."""
        for buf in self.slot_positions.values():
            buf.fill_(-1)
        self.length = 0
        self.length_t.zero_()
        self.next_position.zero_()
        self._chunk = self._step = None
        self.fill_from_prefix(prefix)
        self.length_t.fill_(self.length)


def _keep_bookkeeping_eager() -> None:
    """The cache's bookkeeping runs eagerly inside a compiled step: it reads and advances Python ints, which
    torch.compile would otherwise bake into the graph and recompile for at every step. Applied to the class
    at its first use rather than as decorators, which would import torch._dynamo with the package."""
    cls = StaticHybridCache
    if not getattr(cls, "_bookkeeping_eager", False):
        cls.begin_chunk = torch.compiler.disable(cls.begin_chunk)
        cls.end_chunk = torch.compiler.disable(cls.end_chunk)
        cls._bookkeeping_eager = True


# torch.compile modes for the decode step: those that leave CUDA graphs to us (the others capture their own)
STEP_COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def _compiled(fn, compile: bool | str):
    if compile is True:
        return torch.compile(fn, dynamic=False)
    if compile not in STEP_COMPILE_MODES:
        raise InputError(f"compile={compile!r}: expected True, False or one of {STEP_COMPILE_MODES} (modes that "
                         "capture CUDA graphs themselves would capture inside the decoder's graph)")
    return torch.compile(fn, dynamic=False, mode=compile)


def _model_step(model, ids: torch.Tensor, cache) -> torch.Tensor:
    return model(ids, cache=cache, logits_to_keep=1).logits[:, -1]


class StaticDecoder:
    """Decoding over a `StaticHybridCache` for a fixed batch: eager prefill, then one model step per call.

        dec = CUDAGraphDecoder(model, batch_size=128, max_length=8192 + 256)   # or StaticDecoder (eager)
        logits = dec.prefill(input_ids, attention_mask)   # [B, V] for the last position
        for _ in range(n):
            logits = dec.step(next_tokens)                # [B, V]

    This class runs each step eagerly (any device); `CUDAGraphDecoder` replays it as a CUDA graph. `step`
    may return a view of a static buffer: copy it before the next step if you keep it. `compile`: run the
    step through torch.compile (its first call compiles: minutes for a 1.5B model); True, or
    one of STEP_COMPILE_MODES ("max-autotune-no-cudagraphs" also times Triton matmul templates against
    cuBLAS for the step's few-row matmuls: minutes more).
    """

    def __init__(self, model, batch_size: int, max_length: int, compile: bool | str = False):
        self.model = model
        # a plain function of the decoder's state, not a bound method: the decoder must not refer to itself (a
        # cycle would keep its cache, gigabytes on a GPU, alive until the cycle collector runs)
        self._run_step = _compiled(_model_step, compile) if compile else _model_step
        self.batch_size = batch_size
        self.cache = StaticHybridCache(model.config, batch_size, max_length, device=model.device, dtype=model.dtype)
        self._prefix = model.model.meta_prefix()
        self.cache.fill_from_prefix(self._prefix)
        self.cache.length_t.fill_(self.cache.length)
        self._ids = torch.zeros(batch_size, 1, dtype=torch.long, device=model.device)

    @torch.no_grad()
    def _forward_step(self) -> torch.Tensor:
        return self._run_step(self.model, self._ids, self.cache)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                chunk_size: int | None = None) -> torch.Tensor:
        """Run the prompts (left padding allowed) through the cache eagerly; logits [B, V] of the last position."""
        if input_ids.shape[0] != self.batch_size:
            raise InputError(f"this decoder was made for batch {self.batch_size}, got {input_ids.shape[0]} prompts")
        if self.cache.length != self.cache.num_meta:
            self.cache.reset(self._prefix)
        return prefill(self.model, self.cache, input_ids, attention_mask, chunk_size)

    def _check_room(self) -> None:
        if self.cache.length + 1 > self.cache.capacity:
            raise CacheFullError(f"cache holds {self.cache.max_length} text tokens; it is full")

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row ([B] or [B, 1]); logits [B, V] for it."""
        self._check_room()
        self._ids.copy_(tokens.view(self.batch_size, 1))
        return self._forward_step()

    @torch.no_grad()
    def greedy(self, first_tokens: torch.Tensor, steps: int) -> torch.Tensor:
        """`steps` greedy tokens per row after `first_tokens`; [B, steps]."""
        out = torch.empty(self.batch_size, steps, dtype=torch.long, device=self._ids.device)
        tok = first_tokens.view(self.batch_size)
        for i in range(steps):
            tok = self.step(tok).argmax(-1)
            out[:, i] = tok
        return out


class CUDAGraphDecoder(StaticDecoder):
    """`StaticDecoder` with the model step captured once as a CUDA graph and replayed for every token."""

    def __init__(self, model, batch_size: int, max_length: int, warmup: int = 2, compile: bool | str = False):
        if model.device.type != "cuda":
            raise RuntimeError("CUDA graphs need the model on a CUDA device")
        super().__init__(model, batch_size, max_length, compile=compile)
        self._graph = torch.cuda.CUDAGraph()
        self._capture(warmup)
        self.cache.reset(self._prefix)

    @torch.no_grad()
    def _capture(self, warmup: int) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up: compile kernels, create handles, settle the allocator
            for _ in range(warmup):
                self._forward_step()
        torch.cuda.current_stream().wait_stream(stream)
        length = self.cache.length
        with torch.cuda.graph(self._graph):
            self._logits = self._forward_step()
        self.cache.length = length  # capture ran the Python side once without running the kernels

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row ([B] or [B, 1]); logits [B, V] for it, from one graph replay."""
        self._check_room()
        self._ids.copy_(tokens.view(self.batch_size, 1))
        self._graph.replay()
        self.cache.length += 1
        return self._logits


__all__ = ["CUDAGraphDecoder", "StaticDecoder", "StaticHybridCache"]
