"""HymbaCache: transformers' `Cache` API over the model's own decoding state.

transformers 5 has cache layers for hybrid models ("hybrid" and "hybrid_sliding": K/V plus conv and recurrent
state) and for K/V sharing ("dummy" layers, from `kv_sharing_modes`), but none of them holds what Hymba needs:
- its sliding-window layers must keep the meta tokens' K/V for good, next to the last `sliding_window` text
  keys (`DynamicSlidingWindowLayer` keeps the last `sliding_window - 1` entries of any kind, so the meta
  tokens fall out, and one key fewer than the full forward attends to);
- its K/V-sharing layers still run SSM heads, so they keep conv and SSM state (a "dummy" layer keeps nothing);
- every sequence starts from the same meta-token state, which the model computes once and copies in.

So the state is the one the project's engine decodes with, `modeling.cache.HybridCache` (tested equal to full
forwards, left padding included), and this class gives it the interface `generate` uses: the length so far,
beam reordering, batch selection and repetition, reset. It is created on the first forward (the meta prefix
copied in) and grows as tokens arrive, since `generate` does not tell the model how long it will run.
Rolling back (`crop`, which assisted decoding needs) is refused: an SSM state cannot be unwound.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from ..config import HymbaConfig
from ..errors import HymbaError, InputError
from ..modeling.cache import HybridCache

# Capacity is allocated in steps of this many text tokens (and doubled when full), so that decoding one token
# at a time reallocates O(log n) times.
ALLOCATION_STEP = 256


class CacheUnsupportedError(HymbaError, NotImplementedError):
    """An operation transformers may ask of a cache that Hymba's decoding state cannot do (rolling back)."""


class _LayerView:
    """One layer of a HymbaCache as transformers' cache layers present it (what `Cache`'s properties read)."""

    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, cache: "HymbaCache", layer: int):
        """Layer `layer` of `cache`."""
        self._cache, self.layer = cache, layer
        c = cache.config
        self.makes_kv = c.makes_kv(layer)
        self.is_sliding = self.makes_kv and not c.is_global(layer)

    def __repr__(self) -> str:
        """What this layer keeps."""
        kind = ("sliding" if self.is_sliding else "global") + " K/V" if self.makes_kv else "shared K/V"
        return f"HymbaLayer({kind} + conv/SSM state)"

    @property
    def is_initialized(self) -> bool:
        """Whether a forward has allocated the cache's state."""
        return self._cache.state is not None

    @property
    def keys(self) -> torch.Tensor | None:
        """This layer's stored keys [B, Hkv, slots, d] (meta tokens first; window layers: then the ring)."""
        state = self._cache.state
        return state.k[self.layer] if state is not None and self.makes_kv else None

    @property
    def values(self) -> torch.Tensor | None:
        """This layer's stored values [B, Hkv, slots, v_head_dim], laid out as `keys`."""
        state = self._cache.state
        return state.v[self.layer] if state is not None and self.makes_kv else None

    def get_seq_length(self) -> int:
        """The cache's length: every layer has seen the same tokens."""
        return self._cache.get_seq_length()

    def get_max_length(self) -> int:
        """-1: no fixed maximum (the cache grows)."""
        return -1


class HymbaCache(Cache):
    """The decoding state of a batch for transformers: global K/V, window rings with the meta tokens' K/V, conv
    and SSM state (`self.state`, a HybridCache, made by the model's first forward)."""

    def __init__(self, config: HymbaConfig):
        """An empty cache for a model of `config`; the first forward allocates it for its batch."""
        self.config = config
        self.state: HybridCache | None = None
        super().__init__(layers=[_LayerView(self, i) for i in range(config.num_hidden_layers)])

    def __repr__(self) -> str:
        """Empty, or the batch and length held."""
        held = "empty" if self.state is None else f"batch {self.state.batch_size}, {self.get_seq_length()} tokens"
        return f"HymbaCache({held})"

    # ---- what the model calls --------------------------------------------------------------------------------
    def prepare(self, model, batch_size: int, new_tokens: int) -> HybridCache:
        """The state to run `new_tokens` more tokens of `batch_size` rows through: allocated with the meta-token
        prefix of `model` (a HymbaModel) on first use, grown when it would overflow."""
        if self.state is None:
            p = model.embed_tokens.weight
            size = min(_round_up(new_tokens), max(new_tokens, self.config.max_position_embeddings))
            self.state = HybridCache(self.config, batch_size, size, device=p.device, dtype=p.dtype)
            self.state.fill_from_prefix(model.meta_prefix())
            return self.state
        if batch_size != self.state.batch_size:
            raise InputError(f"this cache holds {self.state.batch_size} sequences, the input has {batch_size} rows")
        needed = self.get_seq_length() + new_tokens
        if needed > self.state.max_length:  # (never past the model's length limit, unless asked to)
            limit = max(needed, self.config.max_position_embeddings)
            self.state.grow(min(_round_up(max(needed, 2 * self.state.max_length)), limit))
        return self.state

    # ---- transformers' Cache API -----------------------------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Text columns consumed so far, padding included (what `generate` counts in its attention mask)."""
        return 0 if self.state is None else self.state.length - self.state.num_meta

    def get_max_length(self, layer_idx: int | None = None) -> int:
        """-1: no fixed maximum (the cache grows)."""
        return -1

    @property
    def batch_size(self) -> int:
        """Rows held (-1 before the first forward)."""
        return -1 if self.state is None else self.state.batch_size

    @property
    def is_initialized(self) -> bool:
        """Whether a forward has allocated the state."""
        return self.state is not None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row i becomes the old row beam_idx[i] (rows may repeat)."""
        if self.state is not None:
            self.state.keep_rows(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows `indices`, in that order."""
        if self.state is not None:
            self.state.keep_rows(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row `repeats` times in a row (as generate expands a batch for several sequences per prompt)."""
        if self.state is not None:
            rows = torch.arange(self.state.batch_size, device=self.state.next_position.device)
            self.state.keep_rows(rows.repeat_interleave(repeats))

    def reset(self) -> None:
        """Forget everything: the next forward starts from the meta tokens again."""
        self.state = None

    def crop(self, tokens_to_remove: int) -> None:
        """Refused (but for nothing to remove): an SSM state cannot be rolled back."""
        if tokens_to_remove != 0:
            raise CacheUnsupportedError("Hymba's cache cannot drop tokens (crop): its SSM state cannot be rolled "
                                        "back, so assisted / speculative decoding is not supported")

    def activate_past_recording(self, **kwargs) -> None:
        """Refused: recording states to roll back to is what assisted decoding asks for."""
        raise CacheUnsupportedError("Hymba's cache cannot record past states for rollback (its SSM state cannot be "
                                    "rolled back), so assisted / speculative decoding is not supported")

    def get_recurrent_states_to_keep(self, layer_idx: int | None = None) -> int:
        """0: no past states are recorded."""
        return 0

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """Not used: Hymba's layers store their K/V through the HybridCache (`attention_kv`)."""
        raise CacheUnsupportedError("Hymba's layers write their K/V themselves; HymbaCache.update is not used")

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        """Not used: Hymba's masks come from the positions the HybridCache records."""
        raise CacheUnsupportedError("Hymba builds its attention masks from token positions, not transformers' "
                                    "mask sizes")


def _round_up(n: int) -> int:
    """n rounded up to a whole number of allocation steps (at least one)."""
    return -(-max(n, 1) // ALLOCATION_STEP) * ALLOCATION_STEP
