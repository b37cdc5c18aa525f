"""Caches for a batch of requests: allocated with the shared meta-token prefix in them, and prompts prefilled
chunk by chunk."""

from __future__ import annotations

import torch

from ..modeling.cache import HybridCache


def new_cache(model, batch_size: int, max_length: int) -> HybridCache:
    """A cache for `batch_size` sequences of up to `max_length` text tokens, the meta-token prefix already in."""
    cache = HybridCache(model.config, batch_size, max_length, device=model.device, dtype=model.dtype)
    cache.fill_from_prefix(model.model.meta_prefix())
    return cache


@torch.no_grad()
def prefill(model, cache: HybridCache, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
            chunk_size: int | None = None) -> torch.Tensor:
    """Run prompts [B, L] (left padding allowed) through `cache`, `chunk_size` tokens at a time (peak
    activation memory bounded by the chunk, same result); logits [B, V] of the last position."""
    L = input_ids.shape[1]
    chunk = chunk_size or L
    logits = None
    for s in range(0, L, chunk):
        m = attention_mask[:, s:s + chunk] if attention_mask is not None else None
        logits = model(input_ids[:, s:s + chunk], attention_mask=m, cache=cache, logits_to_keep=1).logits
    return logits[:, -1]
