"""Masked attention: the mask rule (positions), SDPA with explicit masks, FlexAttention on CUDA."""

from .masks import allowed_keys
from .sdpa import build_sdpa_mask, sdpa_attention

__all__ = ["allowed_keys", "build_sdpa_mask", "sdpa_attention"]
