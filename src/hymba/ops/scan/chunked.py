"""The selective scan in plain torch, chunked so that the Python loop runs ~3*sqrt(L) times, not L times.

The sequence is cut into chunks of Q ~ sqrt(L) steps. (1) The recurrence runs inside every chunk at once,
from a zero state, to get each chunk's end state; (2) the true start state of every chunk follows from
those and the chunk's total decay, chunk after chunk; (3) the recurrence runs again inside every chunk at
once, now from the true start states, producing the outputs. Every loop step works on [batch, chunks, d, N]
tensors, and decays stay products of numbers <= 1: nothing can overflow.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                           initial_state=None, chunk_size: int | None = None):
    """Same contract as `selective_scan_naive` (channels-last layout; fp32 state; y in u's dtype).

    A position whose delta (before softplus) is -inf is an exact no-op on the state: that is how padding
    is kept out of the SSM.
    """
    out_dtype = u.dtype
    ct = torch.promote_types(u.dtype, torch.float32)
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)
    if delta_softplus:
        delta = F.softplus(delta)
    batch, L, d = u.shape
    N = A.shape[1]
    h = (torch.zeros(batch, d, N, dtype=ct, device=u.device) if initial_state is None
         else initial_state.to(ct))
    if L == 0:
        return u.new_zeros(batch, 0, d).to(out_dtype), h

    Q = chunk_size or max(1, math.isqrt(L - 1) + 1)
    n_chunks = -(-L // Q)
    pad = n_chunks * Q - L
    du = delta * u
    if pad:  # delta = 0 past the end: decay 1, no input, so the final state is untouched
        delta = F.pad(delta, (0, 0, 0, pad))
        du = F.pad(du, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, pad))
    log_decay = (delta[..., None] * A).view(batch, n_chunks, Q, d, N)  # <= 0
    B = B.view(batch, n_chunks, Q, 1, N)
    C = C.view(batch, n_chunks, Q, 1, N)
    inputs = du.view(batch, n_chunks, Q, d, 1) * B  # delta * u * B

    # Time-in-chunk moved to the front, so that each loop step below reads contiguous memory.
    # Unbound into per-step views: indexing `x[t]` in the loop would make autograd allocate a full-size zero
    # gradient per step (quadratic in Q); unbind's backward is a single stack.
    decay_t = torch.exp(log_decay).permute(2, 0, 1, 3, 4).contiguous().unbind(0)  # Q x [batch, chunks, d, N]
    inputs_t = inputs.permute(2, 0, 1, 3, 4).contiguous().unbind(0)
    C_t = C.permute(2, 0, 1, 3, 4).contiguous().unbind(0)

    # 1) each chunk's end state from a zero start, all chunks at once (Q steps)
    starts = h[:, None]
    if n_chunks > 1:
        local = torch.zeros(batch, n_chunks - 1, d, N, dtype=ct, device=u.device)
        for t in range(Q):
            local = decay_t[t][:, :-1] * local + inputs_t[t][:, :-1]
        # 2) the true start state of every chunk (L/Q steps over [batch, d, N])
        chunk_decay = torch.exp(log_decay[:, :-1].sum(2)).unbind(1)
        local = local.unbind(1)
        starts = [h]
        for c in range(n_chunks - 1):
            starts.append(chunk_decay[c] * starts[-1] + local[c])
        starts = torch.stack(starts, dim=1)
    # 3) the outputs, every chunk from its true start (Q steps)
    state = starts
    ys = []
    for t in range(Q):
        state = decay_t[t] * state + inputs_t[t]
        ys.append((state * C_t[t]).sum(-1))
    h = state[:, -1]
    y = torch.stack(ys, dim=2).reshape(batch, n_chunks * Q, d)[:, :L]  # [batch, chunks, Q, d] -> [batch, L, d]

    if D is not None:
        y = y + u * D.to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(out_dtype), h


def selective_state_step(state, u, delta, A_log, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """One decode step, updating `state` [batch, d, N] (fp32) in place. u, delta, z [batch, d]; B, C [batch, N].

    Unlike the scan, the step takes the stored parameter A_log (A = -exp(A_log)) and D and delta_bias in their
    stored dtype: a fast step derives them inside its one kernel instead of launching kernels for them in every
    step. Returns y [batch, d] in u's dtype.
    """
    ct = state.dtype
    out_dtype = u.dtype
    u, delta = u.to(ct), delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)
    if delta_softplus:
        delta = F.softplus(delta)
    A, B, C = -torch.exp(A_log.to(ct)), B.to(ct), C.to(ct)
    state.mul_(torch.exp(delta[..., None] * A)).add_((delta * u)[..., None] * B[:, None, :])
    y = (state * C[:, None, :]).sum(-1)
    if D is not None:
        y = y + u * D.to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(out_dtype)
