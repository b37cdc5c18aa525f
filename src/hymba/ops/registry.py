"""The kernel registry: the `Kernels` bundle the model calls, the reference bundle, and backends by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .attention import build_sdpa_mask, sdpa_attention
from .conv import causal_conv1d_ref, causal_conv1d_step_ref
from .norm import norm_average_ref, segment_norms_ref
from .rotary import rotary_ref
from .scan import selective_scan_chunked, selective_state_step


@dataclass(frozen=True)
class Kernels:
    name: str
    causal_conv1d: Callable
    conv_step: Callable
    selective_scan: Callable
    ssm_step: Callable
    build_attention_mask: Callable
    attention: Callable
    rotary: Callable = rotary_ref
    norm_average: Callable = norm_average_ref
    segment_norms: Callable = segment_norms_ref
    traceable: bool = True  # torch.compile traces every member without a graph break


REFERENCE = Kernels(
    name="reference",
    causal_conv1d=causal_conv1d_ref,
    conv_step=causal_conv1d_step_ref,
    selective_scan=selective_scan_chunked,
    ssm_step=selective_state_step,
    build_attention_mask=build_sdpa_mask,
    attention=sdpa_attention,
    rotary=rotary_ref,
    norm_average=norm_average_ref,
    segment_norms=segment_norms_ref,
)

# name -> factory returning a Kernels, or raising ImportError/RuntimeError when unavailable here.
_FACTORIES: dict[str, Callable[[], Kernels]] = {"reference": lambda: REFERENCE}
# Backends "auto" tries on CUDA, best first.
_CUDA_PREFERENCE: list[str] = []


def register_kernels(name: str, factory: Callable[[], Kernels], prefer_on_cuda: bool = False) -> None:
    _FACTORIES[name] = factory
    if prefer_on_cuda and name not in _CUDA_PREFERENCE:
        _CUDA_PREFERENCE.insert(0, name)


def available_kernels() -> list[str]:
    return sorted(_FACTORIES)


def get_kernels(name: str | Kernels = "auto", device: torch.device | str | None = None,
                traceable: bool = False) -> Kernels:
    """Resolve a backend name for a device. "auto": the fastest registered backend that works on CUDA,
    the reference elsewhere (and whenever no faster one can be loaded); with `traceable` (compiled layers),
    the fastest whose members torch.compile traces without a graph break."""
    if isinstance(name, Kernels):
        return name
    if name == "auto":
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "cuda":
            candidates = list(_CUDA_PREFERENCE)
            if traceable:
                candidates += [n for n in _FACTORIES if n not in candidates and n != "reference"]
            for candidate in candidates:
                try:
                    kernels = _FACTORIES[candidate]()
                except (ImportError, RuntimeError):
                    continue
                if kernels.traceable or not traceable:
                    return kernels
        return REFERENCE
    if name not in _FACTORIES:
        raise ValueError(f"unknown kernels {name!r}; available: {', '.join(available_kernels())}")
    return _FACTORIES[name]()
