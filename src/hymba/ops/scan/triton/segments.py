"""Time segments: what lets the forward and the backward walk segments of time side by side (few rows).

The recurrence is linear in the state (forward) and in the adjoint (backward). So a cheap pass that carries
only that (`_scan_state_kernel`: no outputs; `_scan_adjoint_kernel`: no states) gives what each segment adds
from zero, and its total decay; one small kernel (`_stitch_kernel`) chains them into each segment's entering
state (`_entering_states`) or adjoint (`_entering_adjoints`). The backward's states come from the forward's
checkpoints as without segments.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import _delta, _lane_layout, _load_row, _load_x, _rates_and_bias, _row_slice, _sigmoid, _unpack_row, _zeros


@triton.jit
def _scan_state_kernel(
    u_ptr, dt_ptr, b_ptr, a2_ptr, bias_ptr, hloc_ptr, dtsum_ptr,
    L, d, nbatch, seg_steps,
    s_ub, s_ul, s_db, s_dl, s_bb, s_bl,
    N: tl.constexpr, BD: tl.constexpr, S: tl.constexpr, PF: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr, PACK: tl.constexpr,
):
    """What time segment seg = program_id(2) adds to the state, from a zero state at its start:
    h <- a_t h + delta_t u_t B_t over its steps (no C, z, D, no outputs), and its sum of delta (its decay per
    state is exp2(a2 * sum)). scan_fwd stitches these into each segment's entering state, so that the
    forward's segments run side by side. The forward's mirror of `_scan_adjoint_kernel`."""
    NS: tl.constexpr = N // S
    b = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2)
    lanes, slc, cols, cm, lead = _lane_layout(d, BD, S)
    colc = tl.minimum(cols, d - 1)
    u_ptr += b * s_ub
    dt_ptr += b * s_db
    b_ptr = _row_slice(b_ptr, b, s_bb, slc, NS, S, PACK)
    a2, bias = _rates_and_bias(a2_ptr, bias_ptr, cols, slc, cm, N, NS, BD * S, HAS_BIAS)
    h = _zeros(NS, BD * S)
    dt_sum = tl.zeros([BD * S], tl.float32)
    t_lo = seg * seg_steps
    for i0 in range(0, seg_steps, PF):
        for ii in tl.static_range(PF):
            t = t_lo + i0 + ii
            u, dtr, _ = _load_x(u_ptr, dt_ptr, u_ptr, t, L, colc, s_ul, s_dl, s_ul, False)
            dt, _ = _delta(dtr, bias, t, L, HAS_BIAS, SOFTPLUS, FAST)
            dtu = dt * u.to(tl.float32)
            bs = _unpack_row(_load_row(b_ptr, t, L, s_bl, NS, PACK), NS, PACK)
            new_h = ()
            for n in tl.static_range(NS):
                new_h = new_h + (tl.exp2(dt * a2[n]) * h[n] + dtu * bs[n],)
            h = new_h
            dt_sum += dt
    row = seg.to(tl.int64) * nbatch + b  # [segment, batch] of the outputs
    for n in tl.static_range(NS):
        tl.store(hloc_ptr + (row * d + cols) * N + slc * NS + n, h[n], mask=cm)
    tl.store(dtsum_ptr + row * d + cols, dt_sum, mask=lead)


@triton.jit
def _scan_adjoint_kernel(
    dt_ptr, z_ptr, c_ptr, a2_ptr, bias_ptr, dy_ptr, gloc_ptr, dtsum_ptr,
    L, d, nbatch, seg_steps,
    s_db, s_dl, s_zb, s_zl, s_cb, s_cl, s_gb, s_gl,
    N: tl.constexpr, BD: tl.constexpr, S: tl.constexpr, PF: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr, PACK: tl.constexpr,
):
    """What time segment seg = 1 + program_id(2) hands the adjoint on to the segment before it, from a zero
    adjoint at its end: g <- a_t (C_t dy_t + g) walked back over its steps (no states needed), and the
    segment's sum of delta (its decay per state is exp2(a2 * sum)). scan_bwd stitches these into each
    segment's entering adjoint, so that the backward's segments run side by side."""
    NS: tl.constexpr = N // S
    b = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2) + 1
    lanes, slc, cols, cm, lead = _lane_layout(d, BD, S)
    colc = tl.minimum(cols, d - 1)
    dt_ptr += b * s_db
    z_ptr += b * s_zb
    c_ptr = _row_slice(c_ptr, b, s_cb, slc, NS, S, PACK)
    dy_ptr += b * s_gb
    a2, bias = _rates_and_bias(a2_ptr, bias_ptr, cols, slc, cm, N, NS, BD * S, HAS_BIAS)
    g = _zeros(NS, BD * S)
    dt_sum = tl.zeros([BD * S], tl.float32)
    t_end = seg * seg_steps + seg_steps - 1  # steps past L have delta 0 and no dy: no-ops
    for j0 in range(0, seg_steps, PF):
        for jj in tl.static_range(PF):
            t = t_end - j0 - jj
            tc = tl.minimum(t, L - 1)
            dt, _ = _delta(tl.load(dt_ptr + tc * s_dl + colc), bias, t, L, HAS_BIAS, SOFTPLUS, FAST)
            dyg = tl.load(dy_ptr + tc * s_gl + colc).to(tl.float32)
            if HAS_Z:
                z = tl.load(z_ptr + tc * s_zl + colc).to(tl.float32)
                dyg = dyg * z * _sigmoid(z, FAST)
            dyg = tl.where(cm & (t < L), dyg, 0.0)
            cf = _unpack_row(_load_row(c_ptr, t, L, s_cl, NS, PACK), NS, PACK)
            new_g = ()
            for n in tl.static_range(NS):
                new_g = new_g + (tl.exp2(dt * a2[n]) * (cf[n] * dyg + g[n]),)
            g = new_g
            dt_sum += dt
    row = tl.program_id(2).to(tl.int64) * nbatch + b  # [segment - 1, batch] of the outputs
    for n in tl.static_range(NS):
        tl.store(gloc_ptr + (row * d + cols) * N + slc * NS + n, g[n], mask=cm)
    tl.store(dtsum_ptr + row * d + cols, dt_sum, mask=lead)


@triton.jit
def _stitch_kernel(first_ptr, loc_ptr, dtsum_ptr, a2_ptr, out_ptr, nseg, numel, dN, N: tl.constexpr,
                   REVERSE: tl.constexpr, HAS_FIRST: tl.constexpr, BLOCK: tl.constexpr):
    """Each time segment's entering state (or, REVERSE, adjoint) from the one before (after) it: see `_stitch`.
    One element of [batch, d, N] per lane; loc [nseg - 1, batch, d, N], dt_sum [nseg - 1, batch, d]."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = e < numel
    a2 = tl.load(a2_ptr + e % dN, mask=m, other=0.0)
    if HAS_FIRST:
        acc = tl.load(first_ptr + e, mask=m, other=0.0)
    else:
        acc = tl.zeros([BLOCK], tl.float32)
    tl.store(out_ptr + (nseg - 1 if REVERSE else 0) * numel + e, acc, mask=m)
    for i in range(nseg - 1):
        k = nseg - 2 - i if REVERSE else i
        dts = tl.load(dtsum_ptr + k * (numel // N) + e // N, mask=m, other=0.0)
        acc = tl.exp2(a2 * dts) * acc + tl.load(loc_ptr + k * numel + e, mask=m, other=0.0)
        tl.store(out_ptr + (k if REVERSE else k + 1) * numel + e, acc, mask=m)


def _entering_states(u, delta, Bk, a2, biasf, h0, nseg: int, seg_steps: int, cfg: dict, pack: bool,
                     softplus: bool, fast: bool) -> torch.Tensor:
    """[nseg, batch, d, N] fp32: the state entering each time segment (the first: the initial state, or
    zeros). Linear in the state, so segment k + 1's is what segment k adds from a zero start (the state
    kernel) plus segment k's own entering state decayed through it (`_stitch`)."""
    batch, L, d = delta.shape
    N = a2.shape[1]
    h_loc = torch.empty(nseg - 1, batch, d, N, dtype=torch.float32, device=delta.device)
    dt_sum = torch.empty(nseg - 1, batch, d, dtype=torch.float32, device=delta.device)
    _scan_state_kernel[(triton.cdiv(d, cfg["BD"]), batch, nseg - 1)](
        u, delta, Bk, a2, biasf if biasf is not None else a2, h_loc, dt_sum,
        L, d, batch, seg_steps,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), Bk.stride(0), Bk.stride(1),
        N=N, BD=cfg["BD"], S=cfg["S"], PF=cfg["PF"], HAS_BIAS=biasf is not None, SOFTPLUS=softplus, FAST=fast,
        PACK=pack, num_warps=cfg["num_warps"],
    )
    return _stitch(h0, h_loc, dt_sum, a2, reverse=False)


def _entering_adjoints(delta, z, Ck, a2, biasf, dy, dht, nseg: int, seg_steps: int, cfg: dict, pack: bool,
                       softplus: bool, fast: bool) -> torch.Tensor:
    """[nseg, batch, d, N] fp32: the adjoint a_{t+1} dL/dh_{t+1} at the end of each time segment (the last:
    dL/dh_final, or zeros). Linear in the adjoint, so segment k's is what segment k+1 adds from a zero end
    (the adjoint kernel) plus segment k+1's own entering adjoint decayed through it (`_stitch`)."""
    batch, L, d = delta.shape
    N = a2.shape[1]
    BD, S = cfg["BD"], cfg["S"]
    g_loc = torch.empty(nseg - 1, batch, d, N, dtype=torch.float32, device=delta.device)
    dt_sum = torch.empty(nseg - 1, batch, d, dtype=torch.float32, device=delta.device)
    zz = z if z is not None else delta
    _scan_adjoint_kernel[(triton.cdiv(d, BD), batch, nseg - 1)](
        delta, zz, Ck, a2, biasf if biasf is not None else a2, dy, g_loc, dt_sum,
        L, d, batch, seg_steps,
        delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1), Ck.stride(0), Ck.stride(1),
        dy.stride(0), dy.stride(1),
        N=N, BD=BD, S=S, PF=cfg["PF"], HAS_Z=z is not None, HAS_BIAS=biasf is not None, SOFTPLUS=softplus,
        FAST=fast, PACK=pack, num_warps=cfg["num_warps"],
    )
    return _stitch(dht, g_loc, dt_sum, a2, reverse=True)  # segment k ends where k + 1 begins


def _stitch(first: torch.Tensor | None, loc: torch.Tensor, dt_sum: torch.Tensor, a2: torch.Tensor,
            reverse: bool) -> torch.Tensor:
    """[nseg, batch, d, N]: out[k + 1] = exp2(a2 * dt_sum[k]) * out[k] + loc[k] from out[0] = first, or in
    reverse out[k] = loc[k] + exp2(a2 * dt_sum[k]) * out[k + 1] from out[nseg - 1] = first (None: zeros).
    One kernel (`_stitch_kernel`) rather than four torch operations a segment: at these sizes launches, not
    bytes, are the cost."""
    nseg = loc.shape[0] + 1
    out = torch.empty(nseg, *loc.shape[1:], dtype=torch.float32, device=loc.device)
    numel = out[0].numel()
    BLOCK = 1024
    _stitch_kernel[(triton.cdiv(numel, BLOCK),)](
        first if first is not None else loc, loc, dt_sum, a2, out, nseg, numel, a2.numel(),
        N=a2.shape[1], REVERSE=reverse, HAS_FIRST=first is not None, BLOCK=BLOCK, num_warps=4,
    )
    return out
