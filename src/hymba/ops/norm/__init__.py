"""RMS norms: torch reference (the model's `RMSNorm` semantics), and Triton kernels that fuse the mixer's norm
groups on CUDA (the two branch norms and their average; the dt / B / C norms of the SSM's projection)."""

from .reference import norm_average_ref, rms_norm, segment_norms_ref

__all__ = ["norm_average_ref", "rms_norm", "segment_norms_ref"]
