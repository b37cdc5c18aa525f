"""Kernels behind one small interface, so the model never branches on the backend.

A `Kernels` bundle is chosen once per device (see `get_kernels`); the model calls its members:

- `causal_conv1d(x, weight, bias, initial_state, activation) -> (y, final_state)`, channels-last x [B, L, d]
- `conv_step(x, state, weight, bias, activation) -> y`, one token, `state` [B, K-1, d] updated in place
- `selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state) -> (y, final_state)`
- `ssm_step(state, u, delta, A_log, B, C, D, z, delta_bias, delta_softplus) -> y`, `state` updated in place
  (A = -exp(A_log): the parameter as stored, derived inside the step)
- `build_attention_mask(q_pos, k_pos, window, num_meta, dtype) -> mask` (opaque to the model; once per forward)
- `attention(q, k, v, mask, scale) -> out`
- `rotary(q, k, cos, sin) -> (q, k)`, the rotary embedding of a layer's queries and keys (k may be None)
- `norm_average(a, b, weight_a, weight_b, eps_a, eps_b) -> (rms_norm(a) + rms_norm(b)) / 2`
- `segment_norms(x, sizes, weights, eps) -> parts`, each part of x's last dim RMS-normed with its own weight

The reference bundle is plain torch and runs anywhere; faster bundles register themselves with
`register_kernels` (`registry.py`) and are checked against it. `gpu/` registers the CUDA bundle; importing it
needs neither CUDA nor Triton.
"""

from . import gpu  # noqa: F401  (registers the "triton" bundles)
from .registry import REFERENCE, Kernels, available_kernels, get_kernels, register_kernels

__all__ = ["Kernels", "REFERENCE", "available_kernels", "get_kernels", "register_kernels"]
