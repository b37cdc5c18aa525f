"""Inference: the hybrid cache, generation (sampling, padding, chunked prefill), tokenizer and chat."""

from .cache import CacheFullError, HybridCache

__all__ = ["CacheFullError", "HybridCache"]
