"""Selective scan (the SSM heads): naive oracle, chunked torch reference, a Triton kernel on CUDA, and time
segments scanned side by side for long sequences in small batches."""

from .chunked import selective_scan_chunked, selective_state_step
from .naive import selective_scan_naive
from .segmented import segmented_scan

__all__ = ["segmented_scan", "selective_scan_chunked", "selective_scan_naive", "selective_state_step"]
