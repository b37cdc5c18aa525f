"""The selective scan written as the recurrence itself, one time step at a time: the test oracle."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                         initial_state=None):
    """h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t;  y_t = <h_t, C_t> + D * u_t;  y_t *= silu(z_t).

    Layout (channels last): u, delta, z [batch, L, d]; A [d, N]; B, C [batch, L, N]; D, delta_bias [d];
    initial_state [batch, d, N]. Computes in float32 (float64 if given float64).
    Returns (y [batch, L, d] in u's dtype, final state [batch, d, N] in the compute dtype).
    """
    out_dtype = u.dtype
    ct = torch.promote_types(u.dtype, torch.float32)
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)
    if delta_softplus:
        delta = F.softplus(delta)
    batch, L, d = u.shape
    if initial_state is None:
        h = torch.zeros(batch, d, A.shape[1], dtype=ct, device=u.device)
    else:
        h = initial_state.to(ct)
    ys = []
    for t in range(L):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(batch, 0, d)
    if D is not None:
        y = y + u * D.to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(out_dtype), h
