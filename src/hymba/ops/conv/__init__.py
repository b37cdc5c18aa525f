"""Depthwise causal conv1d of the SSM branch: torch reference, Triton (fla-core or ours) on CUDA."""

from .reference import causal_conv1d_ref, causal_conv1d_step_ref

__all__ = ["causal_conv1d_ref", "causal_conv1d_step_ref"]
