"""Facts about the GPU that launch heuristics need, asked once per device."""

from __future__ import annotations

import torch

_PROPERTIES: dict[int | None, object] = {}


def _properties(device: torch.device):
    index = torch.device(device).index
    if index not in _PROPERTIES:
        _PROPERTIES[index] = torch.cuda.get_device_properties(device)
    return _PROPERTIES[index]


@torch.compiler.assume_constant_result  # traced by torch.compile (compiled layers) as a constant
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device."""
    return _properties(device).multi_processor_count


@torch.compiler.assume_constant_result
def capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device."""
    p = _properties(device)
    return p.major, p.minor
