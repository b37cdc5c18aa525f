"""A long scan over few sequences, cut into time segments that are scanned side by side.

The scan kernels walk time sequentially with one thread per (batch row, channel); a batch-1 prefill offers
d_inner channels, too few to fill a GPU. The recurrence h_t = a_t h_{t-1} + b_t is linear, so time can be cut
into P segments, scanned as P extra batch rows, and stitched:

1. scan every segment from a zero state: its final state `h_loc[s]` (what the segment adds);
2. its total decay per (channel, state) is exp(A * sum_t delta_t) (delta after bias and softplus);
3. the true state entering segment s: h[0] = initial state, h[s+1] = decay[s] * h[s] + h_loc[s] (P small steps);
4. scan every segment again from its true entering state, now producing y.

Twice the scan work for P times the parallelism; exact up to floating-point rounding. Differentiable when
`scan` is (gradients flow through both passes, the final states of the first and the entering states of the
second). The Triton kernels now segment time themselves (a cheap state pass instead of a second scan:
faster on an H100), so their launch heuristic leaves this off unless asked (`triton_scan.SEGMENTS`); it
stays as the way to segment any scan with this contract.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def segmented_scan(scan: Callable, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                   initial_state=None, segments: int = 4):
    """`scan` (any function with the `Kernels.selective_scan` contract) run over `segments` time segments at
    once; same result as `scan` over the whole sequence. Needs delta_softplus (segments are padded at the end
    with delta = -inf, an exact no-op after softplus)."""
    batch, L, d = u.shape
    N = A.shape[1]
    if segments <= 1 or L < 2 * segments:
        return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    if not delta_softplus:
        raise ValueError("segmented_scan pads segments with delta = -inf, a no-op only with delta_softplus=True")
    S = -(-L // segments)
    pad = S * segments - L
    if pad:
        u, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (u, B, C))
        delta = F.pad(delta, (0, 0, 0, pad), value=float("-inf"))
        z = F.pad(z, (0, 0, 0, pad)) if z is not None else None

    def rows(t):  # [batch, P * S, k] -> [batch * P, S, k]: a view when the time stride allows it
        return t.reshape(batch * segments, S, t.shape[-1])

    _, h_loc = scan(rows(u), rows(delta), A, rows(B), rows(C), None, None, delta_bias, True, None)
    ct = h_loc.dtype  # the scan's state dtype (fp32, or float64 for a float64 reference)
    h_loc = h_loc.view(batch, segments, d, N)
    if torch.is_grad_enabled() and (delta.requires_grad or (delta_bias is not None and delta_bias.requires_grad)):
        # recomputed in the backward: a [batch, L, d] fp32 softplus input is not worth keeping for a sum
        dt_sum = checkpoint(_delta_sums, delta, delta_bias, ct, segments, use_reentrant=False)
    else:
        dt_sum = _delta_sums(delta, delta_bias, ct, segments)
    decay = torch.exp(dt_sum[..., None] * A.to(ct))  # [batch, P, d, N]
    h = initial_state.to(ct) if initial_state is not None else torch.zeros(batch, d, N, dtype=ct, device=u.device)
    starts = []
    for s in range(segments):
        starts.append(h)
        h = decay[:, s] * h + h_loc[:, s]
    starts = torch.stack(starts, 1).view(batch * segments, d, N)
    y, _ = scan(rows(u), rows(delta), A, rows(B), rows(C), D, rows(z) if z is not None else None, delta_bias, True,
                starts)
    return y.reshape(batch, S * segments, d)[:, :L], h


def _delta_sums(delta, delta_bias, ct: torch.dtype, segments: int) -> torch.Tensor:
    """sum over each segment's steps of softplus(delta + bias): [batch, P * S, d] -> [batch, P, d] in `ct`."""
    batch, L, d = delta.shape
    dt = delta.to(ct) if delta_bias is None else delta.to(ct) + delta_bias.to(ct)
    return F.softplus(dt).view(batch, segments, L // segments, d).sum(2)


__all__ = ["segmented_scan"]
