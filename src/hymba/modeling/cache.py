"""The decoding state of a batch of sequences: exactly what each layer must keep (format document, section 6),
preallocated. The model defines this layout and threads it through its layers; the engine decides how many
sequences a cache holds and what fills it.

- global-attention layers that make K/V: every key/value, meta tokens included;
- sliding-window layers that make K/V: the meta tokens' K/V plus a ring of the last `sliding_window` entries;
- layers that reuse another layer's K/V: nothing;
- every layer with SSM heads: the last d_conv - 1 conv inputs and the fp32 SSM state.

Slots are addressed in the "index space" of the batch (meta tokens first, then every text token including
padding), the same for all rows; each slot also records the position of what it holds (-1: empty or
padding), so the attention masks come from the one position rule of `ops.attention.masks`.
"""

from __future__ import annotations

import torch

from ..config import HymbaConfig
from ..errors import HymbaError


class CacheFullError(HymbaError, RuntimeError):
    """More tokens were given than the cache was allocated for."""


class HybridCache:
    def __init__(self, config: HymbaConfig, batch_size: int, max_length: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        c = config
        self.config = c
        self.batch_size = batch_size
        self.max_length = max_length
        self.num_meta = M = c.num_memory_tokens
        self.capacity = M + max_length  # slots in the index space (meta + text)
        self.ring = min(c.sliding_window, max_length) if c.sliding_window is not None else 0
        self.dtype = dtype
        # With static_shapes, attention always sees whole buffers (masked), so shapes never change (CUDA graphs).
        self.static_shapes = False
        kw = dict(device=device, dtype=dtype)
        B = batch_size
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        for i in range(c.num_hidden_layers):
            if c.makes_kv(i):
                S = self.capacity if c.is_global(i) else M + self.ring
                self.k[i] = torch.zeros(B, c.num_key_value_heads, S, c.head_dim, **kw)
                self.v[i] = torch.zeros(B, c.num_key_value_heads, S, c.v_head_dim, **kw)
        kinds = {c.is_global(i) for i in self.k}
        self.slot_positions: dict[bool, torch.Tensor] = {
            g: torch.full((B, self.capacity if g else M + self.ring), -1, dtype=torch.int32, device=device)
            for g in kinds}
        self.conv_state: list[torch.Tensor] = []
        self.ssm_state: list[torch.Tensor] = []
        if c.use_ssm:
            self.conv_state = [torch.zeros(B, c.mamba_d_conv - 1, c.d_inner, **kw) for _ in range(c.num_hidden_layers)]
            ssm_dtype = torch.promote_types(dtype, torch.float32)  # fp32 state (float64 for a float64 model)
            self.ssm_state = [torch.zeros(B, c.d_inner, c.mamba_d_state, device=device, dtype=ssm_dtype)
                              for _ in range(c.num_hidden_layers)]
        self.length = 0  # slots of the index space consumed so far (meta + text, padding included)
        self.next_position = torch.zeros(B, dtype=torch.long, device=device)  # per row: meta + real tokens
        self._chunk: tuple | None = None

    # ---- the meta prefix --------------------------------------------------------------------------------------
    def fill_from_prefix(self, prefix: "HybridCache") -> None:
        """Copy a batch-1 cache holding only the meta tokens into every row of this (empty) cache."""
        if self.length != 0:
            raise RuntimeError("fill_from_prefix needs an empty cache")
        M = prefix.length
        if M != self.num_meta:
            raise ValueError(f"prefix holds {M} tokens, expected the {self.num_meta} meta tokens")
        for i in self.k:
            self.k[i][:, :, :M] = prefix.k[i][:, :, :M]
            self.v[i][:, :, :M] = prefix.v[i][:, :, :M]
        for g in self.slot_positions:
            self.slot_positions[g][:, :M] = prefix.slot_positions[g][:, :M]
        for mine, theirs in zip(self.conv_state + self.ssm_state, prefix.conv_state + prefix.ssm_state):
            mine.copy_(theirs.expand_as(mine))
        self.length = M
        self.next_position.fill_(M)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows `rows` (in that order), e.g. to stop spending work on finished sequences."""
        if self._chunk is not None:
            raise RuntimeError("keep_rows cannot run in the middle of a forward")
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.next_position.device)
        for store in (self.k, self.v, self.slot_positions):
            for key in store:
                store[key] = store[key].index_select(0, rows)
        self.conv_state = [t.index_select(0, rows) for t in self.conv_state]
        self.ssm_state = [t.index_select(0, rows) for t in self.ssm_state]
        self.next_position = self.next_position.index_select(0, rows)
        self.batch_size = len(rows)

    def grow(self, max_length: int) -> None:
        """Make room for `max_length` text tokens, keeping everything stored (for callers that cannot know the
        final length up front, such as transformers' `generate`). The global buffers get longer; a window ring
        shorter than the window (max_length was below it) gets longer too: it has not wrapped yet, so every
        entry keeps its slot."""
        if self._chunk is not None or self.static_shapes:
            raise RuntimeError("grow cannot run in the middle of a forward, nor on a cache of static shapes")
        if max_length <= self.max_length:
            return
        M = self.num_meta
        ring = min(self.config.sliding_window, max_length) if self.config.sliding_window is not None else 0

        def padded(t: torch.Tensor, size: int, dim: int, fill) -> torch.Tensor:
            extra = list(t.shape)
            extra[dim] = size - t.shape[dim]
            return torch.cat([t, t.new_full(extra, fill)], dim=dim) if extra[dim] > 0 else t

        for i in self.k:
            size = M + max_length if self.config.is_global(i) else M + ring
            self.k[i], self.v[i] = padded(self.k[i], size, 2, 0), padded(self.v[i], size, 2, 0)
        for g in self.slot_positions:
            self.slot_positions[g] = padded(self.slot_positions[g], M + max_length if g else M + ring, 1, -1)
        self.max_length, self.capacity, self.ring = max_length, M + max_length, ring

    # ---- called by the model, once per forward ----------------------------------------------------------------
    def _slots(self, index: torch.Tensor) -> torch.Tensor:
        """Window-layer slot of each index: meta tokens keep theirs, text goes round the ring."""
        M = self.num_meta
        if self.ring == 0:
            return index
        return torch.where(index < M, index, M + (index - M) % self.ring)

    def begin_chunk(self, positions: torch.Tensor) -> dict[bool, torch.Tensor]:
        """Record the positions of the T tokens about to be processed; return, per layer kind (is_global), the
        positions of the keys the chunk's queries attend over."""
        B, T = positions.shape
        if B != self.batch_size:
            raise ValueError(f"cache was made for batch {self.batch_size}, got a batch of {B}")
        if self.length + T > self.capacity:
            raise CacheFullError(
                f"cache holds {self.max_length} text tokens (+{self.num_meta} meta); {self.length - self.num_meta} "
                f"are in it and {T} more were given")
        start, end = self.length, self.length + T
        device = positions.device
        index = torch.arange(start, end, device=device)
        pos32 = positions.to(torch.int32)
        keys: dict[bool, torch.Tensor] = {}
        write = None
        if True in self.slot_positions:
            buf = self.slot_positions[True]
            buf[:, start:end] = pos32
            keys[True] = buf if self.static_shapes else buf[:, :end]
        if False in self.slot_positions:
            buf = self.slot_positions[False]
            keys[False] = torch.cat([buf, pos32], dim=1)
            # Only the meta tokens and the last `ring` text tokens of the chunk survive in the ring.
            keep = (index < self.num_meta) | (index >= max(self.num_meta, end - self.ring))
            offsets = keep.nonzero().squeeze(1)
            write = (offsets, self._slots(index[offsets]))
            buf[:, write[1]] = pos32[:, write[0]]
        self._chunk = (start, end, write)
        return keys

    def attention_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer `layer`'s new K/V [B, Hkv, T, d]; return the K/V its queries (and its group's) attend."""
        start, end, write = self._chunk
        K, V = self.k[layer], self.v[layer]
        if self.config.is_global(layer):
            K[:, :, start:end] = k
            V[:, :, start:end] = v
            if self.static_shapes:
                return K, V
            return K[:, :, :end], V[:, :, :end]
        keys, values = torch.cat([K, k.to(K.dtype)], dim=2), torch.cat([V, v.to(V.dtype)], dim=2)
        offsets, slots = write
        K[:, :, slots] = k[:, :, offsets].to(K.dtype)
        V[:, :, slots] = v[:, :, offsets].to(V.dtype)
        return keys, values

    def end_chunk(self, T: int, n_valid: torch.Tensor | int) -> None:
        self.length += T
        self.next_position += n_valid
        self._chunk = None

    # ---- sizes ------------------------------------------------------------------------------------------------
    def breakdown(self) -> dict[str, int]:
        """Bytes per component: meta-token K/V, global K/V (text), window ring K/V, conv state, SSM state, and
        the slot-position bookkeeping."""
        M = self.num_meta
        out = dict(meta_kv=0, global_kv=0, window_kv=0, conv_state=0, ssm_state=0, positions=0)
        for i in self.k:
            per_slot = (self.k[i].nbytes + self.v[i].nbytes) // self.k[i].shape[2]
            out["meta_kv"] += per_slot * M
            out["global_kv" if self.config.is_global(i) else "window_kv"] += per_slot * (self.k[i].shape[2] - M)
        out["conv_state"] = sum(t.nbytes for t in self.conv_state)
        out["ssm_state"] = sum(t.nbytes for t in self.ssm_state)
        out["positions"] = sum(t.nbytes for t in self.slot_positions.values())
        return out

    def nbytes(self) -> int:
        return sum(self.breakdown().values())


def cache_bytes(config: HymbaConfig, batch_size: int, max_length: int, dtype: torch.dtype = torch.float16,
                ssm_dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """The analytic size of a HybridCache (same components as `HybridCache.breakdown`), without allocating.

    Per K/V-making layer, per slot: Hkv * (head_dim + v_head_dim) elements; global layers hold M + max_length
    slots, window layers M + min(window, max_length). Every SSM layer: (d_conv - 1) * d_inner conv inputs in
    `dtype` and d_inner * d_state state in `ssm_dtype`."""
    c = config
    esize = torch.tensor([], dtype=dtype).element_size()
    M = c.num_memory_tokens
    ring = min(c.sliding_window, max_length) if c.sliding_window is not None else 0
    per_slot = batch_size * c.num_key_value_heads * (c.head_dim + c.v_head_dim) * esize
    producers = [i for i in range(c.num_hidden_layers) if c.makes_kv(i)]
    n_global = sum(c.is_global(i) for i in producers)
    n_window = len(producers) - n_global
    out = dict(meta_kv=per_slot * M * len(producers), global_kv=per_slot * max_length * n_global,
               window_kv=per_slot * ring * n_window, conv_state=0, ssm_state=0, positions=0)
    if c.use_ssm:
        L = c.num_hidden_layers
        out["conv_state"] = L * batch_size * (c.mamba_d_conv - 1) * c.d_inner * esize
        out["ssm_state"] = L * batch_size * c.d_inner * c.mamba_d_state * torch.tensor([], dtype=ssm_dtype).element_size()
    kinds = {c.is_global(i) for i in producers}
    out["positions"] = 4 * batch_size * sum((M + max_length) if g else (M + ring) for g in kinds)
    return out


def paper_cache_bytes(config: HymbaConfig, seq_len: int, dtype: torch.dtype = torch.float16) -> int:
    """The paper's way of counting (its 78.6 MB for Hymba-1.5B at 8k): global K/V for seq_len tokens, window
    K/V for `sliding_window` tokens, SSM and conv state, all in `dtype`, batch 1, meta tokens not counted."""
    b = cache_bytes(config, 1, seq_len, dtype=dtype, ssm_dtype=dtype)
    return b["global_kv"] + b["window_kv"] + b["conv_state"] + b["ssm_state"]
