"""The selective scan in Triton: forward, backward and the single decode step (CUDA; tested on the CPU
under Triton's interpreter).

    common.py    device helpers the kernels share, host-side checks
    launch.py    launch configurations and the heuristics that adapt them to few rows
    segments.py  time segments side by side: the state / adjoint passes and their stitching
    forward.py   the forward kernel, `scan_fwd`
    backward.py  the backward kernel (states recomputed from the forward's checkpoints), `scan_bwd`
    step.py      the decode step, `ssm_step_triton`
    op.py        the custom ops and their autograd, `selective_scan_triton`

Semantics are those of `selective_scan_chunked` (the oracle): channels-last u/delta/z [batch, L, d],
B/C [batch, L, N], A [d, N] (negative), fp32 state, a delta of -inf (before softplus) is an exact no-op.
Importing this package imports triton and defines the kernels: `hymba.ops.gpu` imports it lazily.
"""

from .backward import scan_bwd
from .forward import scan_fwd
from .launch import CHUNK
from .op import scan_bytes, selective_scan_triton
from .step import ssm_step_triton

__all__ = ["selective_scan_triton", "ssm_step_triton", "scan_fwd", "scan_bwd", "scan_bytes", "CHUNK"]
