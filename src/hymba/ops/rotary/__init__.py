"""Rotary position embedding of queries and keys: torch reference, and one Triton kernel for both on CUDA."""

from .reference import apply_rotary, rotary_ref, rotate_half

__all__ = ["apply_rotary", "rotary_ref", "rotate_half"]
