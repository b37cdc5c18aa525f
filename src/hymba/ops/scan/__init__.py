"""Selective scan (the SSM heads): naive oracle, chunked torch reference, and Triton kernels for CUDA
(`hymba.ops.scan.triton`, imported only by the GPU bundle: it needs triton)."""

from .chunked import selective_scan_chunked, selective_state_step
from .naive import selective_scan_naive

__all__ = ["selective_scan_chunked", "selective_scan_naive", "selective_state_step"]
