"""Facts about the GPU that launch heuristics need, asked once per device."""

from __future__ import annotations

import torch

_SM_COUNTS: dict[int | None, int] = {}


@torch.compiler.assume_constant_result  # traced by torch.compile (compiled layers) as a constant
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device."""
    index = torch.device(device).index
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SM_COUNTS[index]


_CAPABILITIES: dict[int | None, tuple[int, int]] = {}


@torch.compiler.assume_constant_result
def capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device."""
    index = torch.device(device).index
    if index not in _CAPABILITIES:
        _CAPABILITIES[index] = tuple(torch.cuda.get_device_capability(device))
    return _CAPABILITIES[index]
