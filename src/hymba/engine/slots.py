"""A fixed pool of sequence slots for continuous batching: one row of static cache per running request.

Hymba's per-sequence state is bounded except the global layers' K/V, so the pool is allocated once, for
`num_slots` running sequences of up to `max_length` text tokens each, plus `num_staging` rows where new
requests are prefilled. Requests run in rows 0..n-1 (kept dense: a finished request's row is refilled by
moving the last running row into it), so a decode step for n requests runs on the first b >= n rows, a
contiguous view whose addresses never change: one CUDA graph per batch bucket b serves every step.

Unlike `HybridCache`, every row has its own write index (`length_t`, on the device), so rows that started at
different times decode together. The index space of a row is the cache's: meta tokens first, then every
token of the row (left padding of its prompt included). Window layers keep a ring of window + 1 entries
(the query's own key is in the ring), as `StaticHybridCache` does.

Two views implement the cache protocol the model calls (`begin_chunk`, `attention_kv`, `end_chunk`,
`conv_state`, `ssm_state`, `next_position`):
- `prefill_view(rows, length)`: a `HybridCache` over staging rows that share one host-side length (any
  chunk size, padding allowed; global keys are the whole buffer, so shapes depend on the chunk only);
- `decode_view(b)`: rows 0..b-1, one token each, every row writing at its own index; rows marked inactive
  (free rows inside a bucket) neither advance nor matter.
"""

from __future__ import annotations

import torch

from ..modeling.cache import HybridCache
from .cuda_graph import StaticHybridCache


class SlotPool:
    def __init__(self, model, num_slots: int, max_length: int, num_staging: int = 1):
        c = model.config
        self.config = c
        self.num_slots, self.num_staging = num_slots, num_staging
        self.rows = num_slots + num_staging
        self.max_length = max_length
        device, dtype = model.device, model.dtype
        # the allocation of a static cache (ring = window + 1); its bookkeeping is replaced per row below
        store = StaticHybridCache(c, self.rows, max_length, device=device, dtype=dtype)
        self.num_meta, self.ring, self.capacity = store.num_meta, store.ring, store.capacity
        self.k, self.v = store.k, store.v
        self.slot_positions = store.slot_positions
        self.conv_state, self.ssm_state = store.conv_state, store.ssm_state
        self.next_position = store.next_position  # [rows] position of the next token of each row
        self.length_t = torch.zeros(self.rows, dtype=torch.long, device=device)  # write index of each row
        self.active = torch.zeros(self.rows, dtype=torch.long, device=device)  # 1: the row advances in decode
        self.device, self.dtype = device, dtype
        self._prefix = model.model.meta_prefix()
        for r in range(self.rows):
            self.reset_row(r)

    @property
    def staging_rows(self) -> range:
        return range(self.num_slots, self.rows)

    def _tensors(self):
        """Every per-row tensor of the pool (row = dim 0)."""
        yield from self.k.values()
        yield from self.v.values()
        yield from self.slot_positions.values()
        yield from self.conv_state
        yield from self.ssm_state
        yield self.next_position
        yield self.length_t

    def reset_row(self, r: int) -> None:
        """Empty row r and put the shared meta-token prefix in it (K/V, conv and SSM state after the meta tokens)."""
        M, p = self.num_meta, self._prefix
        for i in self.k:
            self.k[i][r, :, :M] = p.k[i][0, :, :M]
            self.v[i][r, :, :M] = p.v[i][0, :, :M]
        for g, buf in self.slot_positions.items():
            buf[r].fill_(-1)
            buf[r, :M] = p.slot_positions[g][0, :M]
        for mine, theirs in zip(self.conv_state + self.ssm_state, p.conv_state + p.ssm_state):
            mine[r].copy_(theirs[0])
        self.next_position[r] = M
        self.length_t[r] = M

    def move_row(self, src: int, dst: int) -> None:
        """Copy row src's whole state into row dst (stream-ordered after any step in flight)."""
        if src != dst:
            for t in self._tensors():
                t[dst].copy_(t[src])

    # ---- the two views the model runs on ---------------------------------------------------------------------
    def prefill_view(self, start: int, count: int, length: int) -> HybridCache:
        """A batch-`count` HybridCache over rows start..start+count-1, which hold `length` slots of the index
        space each (meta tokens included). Advance `length` by what the model consumed: the view's `.length`."""
        view = HybridCache.__new__(HybridCache)
        rows = slice(start, start + count)
        view.config, view.batch_size = self.config, count
        view.max_length, view.num_meta, view.capacity, view.ring = (self.max_length, self.num_meta, self.capacity,
                                                                    self.ring)
        view.dtype, view.static_shapes = self.dtype, True
        view.k = {i: t[rows] for i, t in self.k.items()}
        view.v = {i: t[rows] for i, t in self.v.items()}
        view.slot_positions = {g: t[rows] for g, t in self.slot_positions.items()}
        view.conv_state = [t[rows] for t in self.conv_state]
        view.ssm_state = [t[rows] for t in self.ssm_state]
        view.next_position = self.next_position[rows]
        view.length, view._chunk = length, None
        return view

    def decode_view(self, b: int) -> "DecodeView":
        return DecodeView(self, b)


class DecodeView:
    """Rows 0..b-1 of a pool for one decode step (one token per row); each row writes at its own index, and
    only rows with `active` set advance. Every index lives on the device, so the step can be captured."""

    static_shapes = True

    def __init__(self, pool: SlotPool, b: int):
        rows = slice(0, b)
        self.config, self.batch_size, self.num_meta, self.ring = pool.config, b, pool.num_meta, pool.ring
        self.k = {i: t[rows] for i, t in pool.k.items()}
        self.v = {i: t[rows] for i, t in pool.v.items()}
        self.slot_positions = {g: t[rows] for g, t in pool.slot_positions.items()}
        self.conv_state = [t[rows] for t in pool.conv_state]
        self.ssm_state = [t[rows] for t in pool.ssm_state]
        self.next_position = pool.next_position[rows]
        self.length_t, self.active = pool.length_t[rows], pool.active[rows]
        self.arange = torch.arange(b, device=pool.device)
        self._where: tuple | None = None

    def begin_chunk(self, positions: torch.Tensor) -> dict[bool, torch.Tensor]:
        if positions.shape != (self.batch_size, 1):
            raise ValueError(f"a decode step takes one token for each of {self.batch_size} rows, "
                             f"got positions of shape {tuple(positions.shape)}")
        idx, M = self.length_t, self.num_meta
        slot = M + (idx - M) % max(self.ring, 1)  # idx >= M: the meta tokens are always in
        pos = positions[:, 0].to(torch.int32)
        if True in self.slot_positions:
            self.slot_positions[True][self.arange, idx] = pos
        if False in self.slot_positions:
            self.slot_positions[False][self.arange, slot] = pos
        self._where = (idx, slot)
        return dict(self.slot_positions)

    def attention_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        idx, slot = self._where
        where = idx if self.config.is_global(layer) else slot
        K, V = self.k[layer], self.v[layer]
        K[self.arange, :, where] = k[:, :, 0].to(K.dtype)
        V[self.arange, :, where] = v[:, :, 0].to(V.dtype)
        return K, V

    def end_chunk(self, T: int, n_valid) -> None:
        self.length_t += self.active
        self.next_position += self.active
        self._where = None
