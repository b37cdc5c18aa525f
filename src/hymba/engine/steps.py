"""The decode step of a slot pool: one token for each of its first b rows, eagerly or as CUDA graphs.

On CUDA a step of a 1.5B model is hundreds of small kernels, which Python cannot launch as fast as the GPU
runs them, so the step is captured once per batch bucket (1, 2, 4, ... up to the pool's size) when the
engine starts and replayed ever after: a batch of n running requests replays the smallest bucket >= n (the
rows past n are free rows, marked inactive). The graphs share one memory pool and are captured largest
first, so the smaller ones reuse its memory.
"""

from __future__ import annotations

import torch

from ..ops.dynamo import allow_recompiles
from .slots import SlotPool


def decode_buckets(max_rows: int) -> list[int]:
    """1, 2, 4, ... and `max_rows` itself."""
    out, b = [], 1
    while b < max_rows:
        out.append(b)
        b *= 2
    return out + [max_rows]


class DecodeSteps:
    """`run(b)` -> logits [b, V] of rows 0..b-1 for the tokens in `tokens[:b]` (the view is a static buffer
    under CUDA graphs: read it before the next step)."""

    def __init__(self, model, pool: SlotPool, tokens: torch.Tensor, cuda_graphs: bool, compile: bool = False):
        self.model, self.pool, self.tokens = model, pool, tokens
        self.buckets = decode_buckets(pool.num_slots)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._views = {b: pool.decode_view(b) for b in self.buckets}
        self._step = _step
        if compile:  # one compiled variant per bucket
            allow_recompiles(2 * len(self.buckets) + 8)
            self._step = torch.compile(_step, dynamic=False)
        if cuda_graphs:
            self._capture()

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    @torch.no_grad()
    def run(self, n: int) -> torch.Tensor:
        if self.graphs:
            b = self.bucket(n)
            graph, logits = self.graphs[b]
            graph.replay()
            return logits
        view = self.pool.decode_view(n)  # eager: exactly the running rows
        return self._step(self.model, self.tokens[:n, None], view)

    @torch.no_grad()
    def _capture(self) -> None:
        pool_handle = torch.cuda.graph_pool_handle()
        for b in sorted(self.buckets, reverse=True):
            view, ids = self._views[b], self.tokens[:b, None]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up: kernels compiled, handles created, allocator settled
                for _ in range(2):
                    self._step(self.model, ids, view)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool_handle):
                logits = self._step(self.model, ids, view)
            self.graphs[b] = (graph, logits)
        for graph, _ in self.graphs.values():  # the first launch of a graph uploads it: not on a request's time
            graph.replay()
        torch.cuda.synchronize()


def _step(model, ids: torch.Tensor, view) -> torch.Tensor:
    return model(ids, cache=view, logits_to_keep=1).logits[:, -1]
