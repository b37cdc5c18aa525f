"""The scan backward (`_scan_bwd_kernel`) and its host side (`scan_bwd`).

Shaped like the forward, each channel's states and adjoints in the registers of its S lanes, time walked in
reverse. States are recomputed, not stored: the forward saved the state at the start of every CHUNK steps.
For each chunk, last to first, the backward first re-runs the chunk forward from its checkpoint, writing the
CHUNK states to a per-program scratch (CHUNK x N x BD fp32, small enough to stay in L2), then walks it
backwards with the adjoint g_t = C_t dy_t + a_{t+1} g_{t+1}, reading the state before each step back from the
scratch. dB_t and dC_t sum over channels, i.e. over the lanes of the warp: the 2N/S per-lane terms of a step
are reduced together by a butterfly reduce-scatter (`_channel_sums`: 2N/S - 1 shuffles, each lane ends with
one sum, one coalesced store) and written as per-program partial sums that torch adds (deterministic, no
atomics). With few rows it can walk time segments side by side (segments.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch
from .common import (
    _LN2,
    LOG2E,
    _across_splits,
    _channels_last,
    _delta,
    _f32,
    _fast,
    _lane_layout,
    _load_row,
    _load_x,
    _packed_bc,
    _row_slice,
    _sigmoid,
    _unpack_row,
)
from .segments import _entering_adjoints


@triton.jit
def _load_g(u_ptr, dt_ptr, z_ptr, dy_ptr, t, L, cols, s_ul, s_dl, s_zl, s_gl, HAS_Z: tl.constexpr):
    """u, delta, z, dy of time step t (unmasked like `_load_x`: the reverse walk prefetches below 0)."""
    u, dt, z = _load_x(u_ptr, dt_ptr, z_ptr, t, L, cols, s_ul, s_dl, s_zl, HAS_Z)
    dy = tl.load(dy_ptr + tl.minimum(tl.maximum(t, 0), L - 1) * s_gl + cols)
    return u, dt, z, dy


@triton.jit
def _exchange_halves(vals, lanes, M: tl.constexpr):
    """One round of `_channel_sums`: 2M values per lane -> M, lanes l and l ^ M each keeping one half."""
    up = (lanes & M) != 0
    partner = lanes ^ M
    kept = ()
    for j in tl.static_range(M):
        send = tl.where(up, vals[j], vals[j + M])
        keep = tl.where(up, vals[j + M], vals[j])
        kept = kept + (keep + tl.gather(send, partner, 0),)  # a warp shuffle (SHFL.IDX)
    return kept


@triton.jit
def _channel_sums(vals, lanes, BD: tl.constexpr):
    """BD per-lane vectors (BD a power of two, at most 64) -> one vector whose lane j holds the sum over the
    BD lanes of vals[j].

    A butterfly reduce-scatter: in each round a lane keeps half of its remaining values, sends the other half
    to its partner lane (one shuffle per pair) and adds what it receives; BD - 1 shuffles in all, against
    BD log2(BD) for BD separate `tl.sum`s across the lanes."""
    vals = _exchange_halves(vals, lanes, BD // 2)
    if BD >= 4:
        vals = _exchange_halves(vals, lanes, BD // 4)
    if BD >= 8:
        vals = _exchange_halves(vals, lanes, BD // 8)
    if BD >= 16:
        vals = _exchange_halves(vals, lanes, BD // 16)
    if BD >= 32:
        vals = _exchange_halves(vals, lanes, BD // 32)
    if BD >= 64:
        vals = _exchange_halves(vals, lanes, BD // 64)
    return vals[0]


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, a2_ptr, dskip_ptr, bias_ptr, ckpt_ptr, dy_ptr, dht_ptr, scratch_ptr,
    du_ptr, ddt_ptr, dz_ptr, da_ptr, dbc_ptr, dd_ptr, dbias_ptr, dh0_ptr,
    L, d, n_chunks, nbatch, seg_chunks,
    s_ub, s_ul, s_db, s_dl, s_zb, s_zl, s_bb, s_bl, s_cb, s_cl, s_gb, s_gl,
    N: tl.constexpr, BD: tl.constexpr, S: tl.constexpr, T: tl.constexpr, PF: tl.constexpr, PB: tl.constexpr,
    SCATTER: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DHT: tl.constexpr,
    SOFTPLUS: tl.constexpr, FAST: tl.constexpr, PACK: tl.constexpr,
):
    # BD channels per program, each held by S lanes (lane = slice * BD + channel), each lane NS of its states.
    NS: tl.constexpr = N // S
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2)  # time segment: chunks seg * seg_chunks onwards (scan_bwd's `segments`); int32, so
    seg64 = seg.to(tl.int64)  # that the time indices stay 32-bit (64-bit ones cost registers and work every step)
    lanes, slc, cols, cm, lead = _lane_layout(d, BD, S)  # lead: one lane per channel writes its outputs
    colc = tl.minimum(cols, d - 1)  # unmasked loads; lanes past d are zeroed before any sum over channels
    u_ptr += b * s_ub
    dt_ptr += b * s_db
    z_ptr += b * s_zb
    b_ptr = _row_slice(b_ptr, b, s_bb, slc, NS, S, PACK)
    c_ptr = _row_slice(c_ptr, b, s_cb, slc, NS, S, PACK)
    dy_ptr += b * s_gb
    du_ptr += b * L * d  # gradient outputs are contiguous [batch, L, d]
    ddt_ptr += b * L * d
    dz_ptr += b * L * d
    scratch_ptr += ((seg64 * nbatch + b) * tl.num_programs(0) + pid_d) * (T * NS * BD * S)  # [T, NS, lanes]
    dbc_ptr += (pid_d * nbatch + b) * L * (2 * N)  # this program's rows of the dB | dC partial sums [L, 2N]
    st = (b * d + cols) * N + slc * NS  # this lane's states in [batch, d, N]
    seg_st = seg64 * nbatch * d * N  # per-segment [batch, d, N] blocks: the adjoint in, dA out
    # SCATTER: after `_channel_sums` channel lane j of slice k holds term j of that slice: dB or dC of one state
    dbc_col = tl.where(lanes % BD < NS, slc * NS + lanes % BD, N + slc * NS + lanes % BD - NS)

    a2 = ()
    g = ()  # a_{t+1} dL/dh_{t+1}: the adjoint carried into step t (at the segment's end: dht[seg])
    da = ()
    for n in tl.static_range(NS):
        a2 = a2 + (tl.load(a2_ptr + cols * N + slc * NS + n, mask=cm, other=0.0),)
        if HAS_DHT:
            g = g + (tl.load(dht_ptr + seg_st + st + n, mask=cm, other=0.0),)
        else:
            g = g + (tl.zeros([BD * S], tl.float32),)
        da = da + (tl.zeros([BD * S], tl.float32),)
    if HAS_D:
        dskip = tl.load(dskip_ptr + cols, mask=cm, other=0.0)
    else:
        dskip = tl.zeros([BD * S], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=cm, other=0.0)
    else:
        bias = tl.zeros([BD * S], tl.float32)
    dd_acc = tl.zeros([BD * S], tl.float32)
    dbias_acc = tl.zeros([BD * S], tl.float32)

    c_lo = seg * seg_chunks
    c_hi = tl.minimum(c_lo + seg_chunks, n_chunks)
    for k in range(0, c_hi - c_lo):
        ci = c_hi - 1 - k
        t0 = ci * T
        # 1. rebuild the chunk's states from its checkpoint; scratch row i = the state before step t0 + i
        h = ()
        for n in tl.static_range(NS):
            h = h + (tl.load(ckpt_ptr + ((b * n_chunks + ci) * N + slc * NS + n) * d + cols, mask=cm, other=0.0),)
        ring_x = ()
        for p in tl.static_range(PF):
            ring_x = ring_x + (_load_x(u_ptr, dt_ptr, z_ptr, t0 + p, L, colc, s_ul, s_dl, s_zl, False),)
        ring_b = ()
        for p in tl.static_range(PB):
            ring_b = ring_b + (_load_row(b_ptr, t0 + p, L, s_bl, NS, PACK),)
        for i0 in range(0, T, PF):
            for ii in tl.static_range(PF):
                t = t0 + i0 + ii
                xu, xdt, _ = ring_x[0]
                ring_x = ring_x[1:] + (_load_x(u_ptr, dt_ptr, z_ptr, t + PF, L, colc, s_ul, s_dl, s_zl, False),)
                bf1 = _unpack_row(ring_b[0], NS, PACK)
                ring_b = ring_b[1:] + (_load_row(b_ptr, t + PB, L, s_bl, NS, PACK),)
                dt1, _ = _delta(xdt, bias, t, L, HAS_BIAS, SOFTPLUS, FAST)
                dtu1 = dt1 * xu.to(tl.float32)
                new_h = ()
                for n in tl.static_range(NS):
                    tl.store(scratch_ptr + ((i0 + ii) * NS + n) * (BD * S) + lanes, h[n])
                    new_h = new_h + (tl.exp2(dt1 * a2[n]) * h[n] + dtu1 * bf1[n],)
                h = new_h
        # 2. walk the chunk backwards; h is the state after step t, the scratch holds the one before it
        ring_g = ()
        for p in tl.static_range(PF):
            ring_g = ring_g + (_load_g(u_ptr, dt_ptr, z_ptr, dy_ptr, t0 + T - 1 - p, L, colc,
                                       s_ul, s_dl, s_zl, s_gl, HAS_Z),)
        ring_bc = ()
        for p in tl.static_range(PB):
            ring_bc = ring_bc + ((_load_row(b_ptr, t0 + T - 1 - p, L, s_bl, NS, PACK),
                                  _load_row(c_ptr, t0 + T - 1 - p, L, s_cl, NS, PACK)),)
        for j0 in range(0, T, PF):
            for jj in tl.static_range(PF):
                row = T - 1 - j0 - jj
                t = t0 + row
                h_before = ()  # issued first: the next step's state, read back from the scratch
                for n in tl.static_range(NS):
                    h_before = h_before + (tl.load(scratch_ptr + (row * NS + n) * (BD * S) + lanes),)
                u, dtr, z, dy = ring_g[0]
                ring_g = ring_g[1:] + (_load_g(u_ptr, dt_ptr, z_ptr, dy_ptr, t - PF, L, colc,
                                               s_ul, s_dl, s_zl, s_gl, HAS_Z),)
                bf = _unpack_row(ring_bc[0][0], NS, PACK)
                cf = _unpack_row(ring_bc[0][1], NS, PACK)
                ring_bc = ring_bc[1:] + ((_load_row(b_ptr, t - PB, L, s_bl, NS, PACK),
                                          _load_row(c_ptr, t - PB, L, s_cl, NS, PACK)),)
                live = cm & (t < L)
                u = u.to(tl.float32)
                dy = dy.to(tl.float32)
                dt, dtr = _delta(dtr, bias, t, L, HAS_BIAS, SOFTPLUS, FAST)
                dtu = tl.where(live, dt * u, 0.0)  # zero on dead lanes and steps: no share in the channel sums
                if HAS_Z:
                    z = z.to(tl.float32)
                    sz = _sigmoid(z, FAST)
                    dyg = dy * z * sz
                else:
                    dyg = dy
                dyg = tl.where(live, dyg, 0.0)
                y = tl.zeros([BD * S], tl.float32)  # sum_n C_t[n] h_t[n]: y before the skip and the gate, for dz
                dub = tl.zeros([BD * S], tl.float32)  # sum_n dL/dh_t[n] B_t[n]
                ddt = tl.zeros([BD * S], tl.float32)  # sum_n dL/dh_t[n] A[n] a_t h_{t-1}[n] (in log2 units)
                new_g = ()
                new_da = ()
                sums = ()
                for n in tl.static_range(NS):
                    gn = cf[n] * dyg + g[n]  # dL/dh_t
                    hm = h[n] - dtu * bf[n]  # a_t h_{t-1}
                    if HAS_Z:
                        y += cf[n] * h[n]
                    dub += gn * bf[n]
                    q = gn * hm
                    new_da = new_da + (da[n] + dt * q,)
                    ddt += a2[n] * q
                    new_g = new_g + (tl.exp2(dt * a2[n]) * gn,)
                    sums = sums + (gn * dtu,)
                for n in tl.static_range(NS):
                    sums = sums + (h[n] * dyg,)
                if SCATTER:  # one coalesced store of dB_t | dC_t
                    tl.store(dbc_ptr + t * (2 * N) + dbc_col, _channel_sums(sums, lanes, BD), mask=t < L)
                else:
                    for j in tl.static_range(2 * NS):
                        for k in tl.static_range(S):
                            part = tl.sum(tl.where(slc == k, sums[j], 0.0), axis=0)
                            tl.store(dbc_ptr + t * (2 * N) + (j // NS) * N + k * NS + j % NS, part, mask=t < L)
                g = new_g
                da = new_da
                h = h_before
                dub = _across_splits(dub, lanes, BD, S)
                ddt = _across_splits(ddt, lanes, BD, S)
                du = dub * dt + dskip * dyg
                ddt = ddt * _LN2 + u * dub
                if SOFTPLUS:
                    ddt = ddt * _sigmoid(dtr, FAST)
                ddt = tl.where(live, ddt, 0.0)
                dd_acc += dyg * u
                dbias_acc += ddt
                tl.store(du_ptr + t * d + cols, du.to(du_ptr.dtype.element_ty), mask=live & lead)
                tl.store(ddt_ptr + t * d + cols, ddt.to(ddt_ptr.dtype.element_ty), mask=live & lead)
                if HAS_Z:
                    y = _across_splits(y, lanes, BD, S) + u * dskip
                    dz = dy * y * sz * (1.0 + z * (1.0 - sz))
                    tl.store(dz_ptr + t * d + cols, dz.to(dz_ptr.dtype.element_ty), mask=live & lead)

    for n in tl.static_range(NS):  # per-segment partial sums (torch adds them), dL/dh_0 from the first
        tl.store(da_ptr + seg_st + st + n, da[n], mask=cm)
        tl.store(dh0_ptr + st + n, g[n], mask=cm & (seg == 0))
    tl.store(dd_ptr + (seg64 * nbatch + b) * d + cols, dd_acc, mask=lead)
    tl.store(dbias_ptr + (seg64 * nbatch + b) * d + cols, dbias_acc, mask=lead)


def scan_bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, dy, dfinal=None,
             config: dict | None = None, segments: int | None = None):
    """Gradients of `scan_fwd` (which must have run with save_states=True and given `ckpt`).

    `segments`: time segments walked back side by side (None: the launch heuristic decides). The forward's
    checkpoints already give each segment its states; the adjoint entering each one comes from a cheap pass
    over the later segments first (`_scan_adjoint_kernel`, stitched by `_entering_adjoints`).

    Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state); None where the input was None."""
    batch, L, d = u.shape
    N = A.shape[1]
    chunk = launch.CHUNK
    cfg = launch._lanes_for(dict(launch.BWD_CONFIG, **(config or {})), N)
    u, delta, B, C, dy = (_channels_last(t) for t in (u, delta, B, C, dy))
    z = _channels_last(z) if z is not None else None
    a2 = (A.float() * LOG2E).contiguous()
    Df, biasf = _f32(D), _f32(delta_bias)
    dht = _f32(dfinal)
    dev = u.device
    nb = triton.cdiv(d, cfg["BD"])
    n_chunks = triton.cdiv(L, chunk)
    if chunk % cfg["PF"]:
        raise ValueError(f"selective_scan: backward prefetch depth {cfg['PF']} must divide the chunk ({chunk})")
    if segments is None:
        segments = launch._bwd_segments(batch, d, n_chunks, dev, cfg)
    seg_chunks, nseg = launch._segment_layout(n_chunks, segments)
    du = torch.empty(batch, L, d, dtype=u.dtype, device=dev)
    ddt = torch.empty(batch, L, d, dtype=delta.dtype, device=dev)
    dz = torch.empty(batch, L, d, dtype=z.dtype, device=dev) if z is not None else None
    da = torch.empty(nseg, batch, d, N, dtype=torch.float32, device=dev)  # per-segment partial sums
    dbc = torch.empty(nb, batch, L, 2 * N, dtype=torch.float32, device=dev)  # per-program partial sums
    dd = torch.empty(nseg, batch, d, dtype=torch.float32, device=dev)
    dbias = torch.empty(nseg, batch, d, dtype=torch.float32, device=dev)
    dh0 = torch.empty(batch, d, N, dtype=torch.float32, device=dev)
    if L > 0:
        zz = z if z is not None else u
        BD, S = cfg["BD"], cfg["S"]
        scratch = torch.empty(nseg, batch, nb, chunk, N, BD, dtype=torch.float32, device=dev)  # N/S x S lanes
        Bk, Ck, pack = _packed_bc(B, C, N // S)  # each lane reads its N/S values of a row
        if nseg > 1:
            dht = _entering_adjoints(delta, z, Ck, a2, biasf, dy, dht, nseg,
                                     seg_chunks * chunk, cfg, pack, bool(delta_softplus), _fast(du))
        _scan_bwd_kernel[(nb, batch, nseg)](
            u, delta, zz, Bk, Ck, a2, Df if Df is not None else a2, biasf if biasf is not None else a2, ckpt, dy,
            dht if dht is not None else a2, scratch,
            du, ddt, dz if dz is not None else du, da, dbc, dd, dbias, dh0,
            L, d, n_chunks, batch, seg_chunks,
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
            Bk.stride(0), Bk.stride(1), Ck.stride(0), Ck.stride(1), dy.stride(0), dy.stride(1),
            N=N, BD=BD, S=S, T=chunk, PF=cfg["PF"], PB=cfg["PB"],
            SCATTER=2 * N == BD * S and BD in (2, 4, 8, 16, 32, 64),
            HAS_Z=z is not None, HAS_D=D is not None, HAS_BIAS=delta_bias is not None, HAS_DHT=dht is not None,
            SOFTPLUS=bool(delta_softplus), FAST=_fast(du), PACK=pack, num_warps=cfg["num_warps"],
        )
    else:
        for t in (da, dbc, dd, dbias):
            t.zero_()
        dh0.copy_(dht if dht is not None else torch.zeros_like(dh0))
    da, dd, dbias = da.sum(0), dd.sum(0), dbias.sum(0)
    dA = da.sum(0).to(A.dtype)
    dbc = dbc.sum(0)
    dB = dbc[..., :N].to(B.dtype, copy=True)  # copies: the op's outputs may not alias each other
    dC = dbc[..., N:].to(C.dtype, copy=True)
    dD = dd.sum(0).to(D.dtype) if D is not None else None
    dbias_out = dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddt, dA, dB, dC, dD, dz, dbias_out, dh0
