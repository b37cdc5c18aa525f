"""The rotary embedding in plain torch (rotate-half, non-interleaved): the reference, and the path autograd
and torch.compile take."""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [batch, heads, T, d]; cos/sin [batch, T, d]. Rotate-half (non-interleaved) convention."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def rotary_ref(q: torch.Tensor, k: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor):
    """(rotated q, rotated k or None): the `Kernels.rotary` contract, q [B, H, T, d], k [B, Hkv, T, d]."""
    return apply_rotary(q, cos, sin), (apply_rotary(k, cos, sin) if k is not None else None)
