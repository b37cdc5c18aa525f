"""The scan forward (`_scan_fwd_kernel`) and its host side (`scan_fwd`).

One thread per channel, the N states of that channel in registers (a tuple of N vectors), the sequence walked
in order. Each program owns BD channels of one batch row; the inputs of the next PF time steps are loaded
ahead (a ring of register tuples, unrolled), so that memory latency hides behind the arithmetic. Every input
element is read once and every output written once; beyond the bytes, the cost is one exp2 per (step,
channel, state) and the few warps a batch x d_inner problem offers to hide latency (benchmarks/README.md).
With few rows each channel's states are split over S lanes (lane = slice * BD + channel, N/S states each; y
summed over the slices by a shuffle): S times the warps for a little more work per state. For training it
also writes the state at the start of every CHUNK steps (fp32, N x d per chunk), from which the backward
recomputes the states. With few rows it can also run time segments side by side (segments.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch
from .common import (
    LOG2E,
    _across_splits,
    _channels_last,
    _check_shapes,
    _f32,
    _fast,
    _lane_layout,
    _load_row,
    _load_x,
    _packed_bc,
    _rates_and_bias,
    _row_slice,
    _sigmoid,
    _softplus,
    _unpack_row,
    _zeros,
)
from .segments import _entering_states


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, a2_ptr, dskip_ptr, bias_ptr, h0_ptr,
    y_ptr, ht_ptr, ckpt_ptr,
    L, d, n_chunks, seg_steps,
    s_ub, s_ul, s_db, s_dl, s_zb, s_zl, s_bb, s_bl, s_cb, s_cl, s_yb, s_yl,
    N: tl.constexpr, BD: tl.constexpr, S: tl.constexpr, PF: tl.constexpr, PB: tl.constexpr,
    CHUNK: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    SOFTPLUS: tl.constexpr, SAVE: tl.constexpr, FAST: tl.constexpr, PACK: tl.constexpr,
):
    # BD channels per program, each held by S lanes (lane = slice * BD + channel), each lane NS of its states.
    NS: tl.constexpr = N // S
    b = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2)  # time segment: steps seg * seg_steps onwards, entered with h0[seg] (scan_fwd)
    lanes, slc, cols, cm, lead = _lane_layout(d, BD, S)  # lead: one lane per channel writes y
    u_ptr += b * s_ub
    dt_ptr += b * s_db
    z_ptr += b * s_zb
    b_ptr = _row_slice(b_ptr, b, s_bb, slc, NS, S, PACK)
    c_ptr = _row_slice(c_ptr, b, s_cb, slc, NS, S, PACK)
    y_ptr += b * s_yb
    st = (b * d + cols) * N + slc * NS  # this lane's states in [batch, d, N]

    a2, bias = _rates_and_bias(a2_ptr, bias_ptr, cols, slc, cm, N, NS, BD * S, HAS_BIAS)
    if HAS_H0:
        h = ()
        for n in tl.static_range(NS):
            h = h + (tl.load(h0_ptr + seg.to(tl.int64) * tl.num_programs(1) * d * N + st + n, mask=cm, other=0.0),)
    else:
        h = _zeros(NS, BD * S)
    if HAS_D:
        dskip = tl.load(dskip_ptr + cols, mask=cm, other=0.0)
    t_lo = seg * seg_steps
    t_hi = tl.minimum(t_lo + seg_steps, L)

    # Software pipeline: the inputs of the next PF steps (and B, C of the next PB) are already in flight.
    colc = tl.minimum(cols, d - 1)  # unmasked loads (a ragged last block re-reads the last channel)
    ring_x = ()
    for i in tl.static_range(PF):
        ring_x = ring_x + (_load_x(u_ptr, dt_ptr, z_ptr, t_lo + i, L, colc, s_ul, s_dl, s_zl, HAS_Z),)
    ring_bc = ()
    for i in tl.static_range(PB):
        ring_bc = ring_bc + ((_load_row(b_ptr, t_lo + i, L, s_bl, NS, PACK),
                              _load_row(c_ptr, t_lo + i, L, s_cl, NS, PACK)),)

    for t0 in range(t_lo, t_hi, PF):
        if SAVE:
            if t0 % CHUNK == 0:
                base = (b * n_chunks + t0 // CHUNK) * N + slc * NS
                for n in tl.static_range(NS):
                    tl.store(ckpt_ptr + (base + n) * d + cols, h[n], mask=cm)
        for i in tl.static_range(PF):
            t = t0 + i
            u, dt, z = ring_x[0]
            bs = _unpack_row(ring_bc[0][0], NS, PACK)
            cs = _unpack_row(ring_bc[0][1], NS, PACK)
            ring_x = ring_x[1:] + (_load_x(u_ptr, dt_ptr, z_ptr, t + PF, L, colc, s_ul, s_dl, s_zl, HAS_Z),)
            ring_bc = ring_bc[1:] + ((_load_row(b_ptr, t + PB, L, s_bl, NS, PACK),
                                      _load_row(c_ptr, t + PB, L, s_cl, NS, PACK)),)
            u = u.to(tl.float32)
            dt = dt.to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt, FAST)
            dt = tl.where(t < L, dt, 0.0)  # steps past the end leave the state alone
            du = dt * u
            y = tl.zeros([BD * S], tl.float32)
            new_h = ()
            for n in tl.static_range(NS):
                hn = tl.exp2(dt * a2[n]) * h[n] + du * bs[n]
                y += hn * cs[n]
                new_h = new_h + (hn,)
            h = new_h
            y = _across_splits(y, lanes, BD, S)
            if HAS_D:
                y += u * dskip
            if HAS_Z:
                zf = z.to(tl.float32)
                y = y * zf * _sigmoid(zf, FAST)
            tl.store(y_ptr + t * s_yl + cols, y.to(y_ptr.dtype.element_ty), mask=lead & (t < L))

    for n in tl.static_range(NS):  # the final state: the last segment's
        tl.store(ht_ptr + st + n, h[n], mask=cm & (seg == tl.num_programs(2) - 1))


def scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, initial_state=None,
             save_states=False, config: dict | None = None, segments: int | None = None):
    """Runs the forward kernel. Returns (y, final_state, checkpoints or None).

    `segments`: time segments scanned side by side (None: the launch heuristic decides), each entered with the
    state that a cheap pass over the earlier ones gives it (`_scan_state_kernel`, stitched by
    `_entering_states`); exact up to rounding, and the checkpoints are the same."""
    batch, L, d, N = _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    chunk = launch.CHUNK
    cfg = dict(launch.FWD_CONFIG, **(launch._forward_split(batch, d, u.device) if config is None else config))
    u, delta, B, C = (_channels_last(t) for t in (u, delta, B, C))
    z = _channels_last(z) if z is not None else None
    a2 = (A.float() * LOG2E).contiguous()
    D, delta_bias, h0 = _f32(D), _f32(delta_bias), _f32(initial_state)
    y = torch.empty(batch, L, d, dtype=u.dtype, device=u.device)
    ht = torch.empty(batch, d, N, dtype=torch.float32, device=u.device)
    n_chunks = triton.cdiv(L, chunk)
    ckpt = torch.empty(batch, n_chunks, N, d, dtype=torch.float32, device=u.device) if save_states else None
    if L == 0:
        ht.copy_(h0 if h0 is not None else torch.zeros_like(ht))
        return y, ht, ckpt
    if chunk % cfg["PF"]:
        raise ValueError(f"selective_scan: prefetch depth {cfg['PF']} must divide the chunk ({chunk})")
    cfg = launch._lanes_for(cfg, N)
    zz = z if z is not None else u
    Bk, Ck, pack = _packed_bc(B, C, N // cfg["S"])  # each lane reads its N/S values of a row
    if segments is None:
        segments = launch._fwd_segments(batch, d, n_chunks, u.device, cfg)
    seg_chunks, nseg = launch._segment_layout(n_chunks, segments)
    if nseg > 1:
        h0 = _entering_states(u, delta, Bk, a2, delta_bias, h0, nseg, seg_chunks * chunk, cfg, pack,
                              bool(delta_softplus), _fast(y))
    grid = (triton.cdiv(d, cfg["BD"]), batch, nseg)
    _scan_fwd_kernel[grid](
        u, delta, zz, Bk, Ck, a2, D if D is not None else a2, delta_bias if delta_bias is not None else a2,
        h0 if h0 is not None else ht, y, ht, ckpt if ckpt is not None else ht,
        L, d, n_chunks, seg_chunks * chunk,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
        Bk.stride(0), Bk.stride(1), Ck.stride(0), Ck.stride(1), y.stride(0), y.stride(1),
        N=N, BD=cfg["BD"], S=cfg["S"], PF=cfg["PF"], PB=cfg["PB"], CHUNK=chunk,
        HAS_Z=z is not None, HAS_D=D is not None, HAS_BIAS=delta_bias is not None, HAS_H0=h0 is not None,
        SOFTPLUS=bool(delta_softplus), SAVE=save_states, FAST=_fast(y), PACK=pack, num_warps=cfg["num_warps"],
    )
    return y, ht, ckpt
