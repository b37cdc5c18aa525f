"""Facts about the GPU that launch heuristics need, asked once per device."""

from __future__ import annotations

from functools import lru_cache

import torch


@torch.compiler.assume_constant_result  # traced by torch.compile (compiled layers) as a constant
@lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device."""
    return torch.cuda.get_device_properties(device).multi_processor_count
