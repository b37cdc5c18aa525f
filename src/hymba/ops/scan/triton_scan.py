"""The selective scan in Triton: forward, backward and the single decode step.

Forward (`_scan_fwd_kernel`): one thread per channel, the N states of that channel in registers (a tuple of
N vectors), the sequence walked in order. Each program owns BD channels of one batch row; the inputs of the
next PF time steps are loaded ahead (a ring of register tuples, unrolled), so that memory latency hides
behind the arithmetic. Every input element is read once and every output written once. Above the bytes sit
one exp2 per (step, channel, state), and the few warps a batch x d_inner problem offers to hide latency: see
benchmarks/README.md for what was measured on an H100 and why. With few rows each channel's states are split
over S lanes (lane = slice * BD + channel, N/S states each; y summed over the slices by a shuffle): S times
the warps for a little more work per state (`_forward_split` decides; the backward always splits in two).

Backward (`_scan_bwd_kernel`): shaped like the forward, each channel's states and adjoints in the registers of
its S lanes, time walked in reverse. States are recomputed, not stored: when the forward runs for
training it also writes the state at the start of every CHUNK steps (fp32, N x d per chunk). For each chunk,
last to first, the backward first re-runs the chunk forward from its checkpoint, writing the CHUNK states
to a per-program scratch (CHUNK x N x BD fp32, small enough to stay in L2), then walks it backwards with the
adjoint g_t = C_t dy_t + a_{t+1} g_{t+1}, reading the state before each step back from the scratch.
dB_t and dC_t sum over channels, i.e. over the lanes of the warp: the 2N/S per-lane terms of a step are
reduced together by a butterfly reduce-scatter (`_channel_sums`: 2N/S - 1 shuffles, each lane ends with one
sum, one coalesced store) and written as per-program partial sums that torch adds (deterministic, no atomics).

Inputs are read unmasked with clamped indices (steps outside the sequence and channels past d re-read valid
elements whose results are never stored or are zeroed before any sum): no predicates or zero-fills in the
loops. Counting the SASS instructions of the loops (sm_90, compiled on a CPU) guided the rest, e.g. softplus
uses the MUFU's lg2 for 16-bit outputs (libdevice's log2 was ~25 instructions a step).

Time segments (few rows): the forward and the backward can cut time into segments walked side by side, one
more grid axis. The recurrence is linear in the state (forward) and in the adjoint (backward), so a cheap
pass that carries only that (`_scan_state_kernel`: no outputs; `_scan_adjoint_kernel`: no states) gives what
each segment adds from zero and its total decay, and one small kernel (`_stitch_kernel`) chains them into each
segment's entering state or adjoint; the backward's states come from the forward's checkpoints as before.

Step (`_ssm_step_kernel`): one token, the [BD, N] state tile read and written in place.

Semantics are those of `selective_scan_chunked` (the oracle): channels-last u/delta/z [batch, L, d],
B/C [batch, L, N], A [d, N] (negative), fp32 state, a delta of -inf (before softplus) is an exact no-op.
"""

from __future__ import annotations

import contextlib

import os

import torch
import triton
import triton.language as tl

from ..gpu.device import sm_count
from .segmented import segmented_scan

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
_LN2 = tl.constexpr(LN2)
_LOG2E = tl.constexpr(LOG2E)

# Launch configurations (benchmarks/bench_scan.py measures alternatives; see benchmarks/README.md).
FWD_CONFIG = dict(BD=32, S=1, num_warps=1, PF=8, PB=8)  # BD channels a program, S lanes per channel
BWD_CONFIG = dict(BD=16, S=2, num_warps=1, PF=2, PB=2)  # BD channels a program, S lanes per channel
CHUNK = 16  # steps between saved states: the backward's scratch holds one chunk of states per program


# ---- shared device helpers --------------------------------------------------------------------------------
@triton.jit
def _log2(x, FAST: tl.constexpr):
    """FAST: the MUFU's lg2.approx (absolute error ~2^-22) instead of libdevice's ~25-instruction polynomial."""
    if FAST:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def _softplus(x, FAST: tl.constexpr):
    """log(1 + e^x), linear above 20 like torch's; below -4 the series of log1p(e^x) to e^4 (relative error
    < 3e-8, and keeps e^x's relative precision far to the left, where log2(1 + e) would round to 0);
    softplus(-inf) = 0 exactly, which makes a step with delta = -inf a no-op."""
    e = tl.exp2(x * _LOG2E)
    series = e * (1.0 - e * (0.5 - e * (0.3333333333333333 - e * 0.25)))
    sp = tl.where(x < -4.0, series, _log2(1.0 + e, FAST) * _LN2)
    return tl.where(x > 20.0, x, sp)


@triton.jit
def _sigmoid(x, FAST: tl.constexpr):
    """FAST (16-bit outputs): one tanh.approx instead of an exp and a division, exact to ~2^-11."""
    if FAST:
        th = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x * 0.5], dtype=tl.float32,
                                       is_pure=True, pack=1)
        return 0.5 * th + 0.5
    else:
        return tl.sigmoid(x)


@triton.jit
def _load_x(u_ptr, dt_ptr, z_ptr, t, L, cols, s_ul, s_dl, s_zl, HAS_Z: tl.constexpr):
    """u, delta, z of time step t for this program's channels. Unmasked: the caller clamps `cols` into the
    tensor and steps outside 0..L-1 read the nearest step (finite values that the caller never uses: delta
    past the end is forced to 0, their outputs are not stored)."""
    t = tl.minimum(tl.maximum(t, 0), L - 1)
    u = tl.load(u_ptr + t * s_ul + cols)
    dt = tl.load(dt_ptr + t * s_dl + cols)
    if HAS_Z:
        z = tl.load(z_ptr + t * s_zl + cols)
    else:
        z = u
    return u, dt, z


@triton.jit
def _unpack_bf16x4(w):
    """Four bf16 values packed in an int64 (element 0 in the low bits) -> four fp32 scalars."""
    lo = w.to(tl.int32)
    hi = (w >> 32).to(tl.int32)
    return ((lo << 16).to(tl.float32, bitcast=True), (lo & -65536).to(tl.float32, bitcast=True),
            (hi << 16).to(tl.float32, bitcast=True), (hi & -65536).to(tl.float32, bitcast=True))


@triton.jit
def _load_row(ptr, t, L, s_l, N: tl.constexpr, PACK: tl.constexpr):
    """Row t of B or C (the same for every channel), as loaded: with PACK bf16 read as int64 words of four
    values, kept packed until used (a quarter of the loads and of the registers in flight); else one load per
    value. Steps outside 0..L-1 read the nearest row (never used)."""
    t = tl.minimum(tl.maximum(t, 0), L - 1)
    ws = ()
    if PACK:
        for q in tl.static_range(N // 4):
            ws = ws + (tl.load(ptr + t * s_l + q),)
    else:
        for n in tl.static_range(N):
            ws = ws + (tl.load(ptr + t * s_l + n),)
    return ws


@triton.jit
def _unpack_row(ws, N: tl.constexpr, PACK: tl.constexpr):
    """-> N fp32 scalars."""
    out = ()
    if PACK:
        for q in tl.static_range(N // 4):
            out = out + _unpack_bf16x4(ws[q])
    else:
        for n in tl.static_range(N):
            out = out + (ws[n].to(tl.float32),)
    return out


@triton.jit
def _lane_layout(d, BD: tl.constexpr, S: tl.constexpr):
    """A program's lanes: BD channels, each held by S lanes (lane = slice * BD + channel). Returns the lanes,
    their slice of the states, their channel, the mask of real channels and that of one lane per channel."""
    lanes = tl.arange(0, BD * S)
    slc = lanes // BD
    cols = tl.program_id(0) * BD + lanes % BD
    cm = cols < d
    return lanes, slc, cols, cm, cm & (slc == 0)


@triton.jit
def _row_slice(ptr, b, s_b, slc, NS: tl.constexpr, S: tl.constexpr, PACK: tl.constexpr):
    """B or C of batch row b, offset to the NS values of this lane's slice (a scalar pointer when S == 1)."""
    if S > 1:
        return ptr + b * s_b + slc * (NS // 4 if PACK else NS)
    else:
        return ptr + b * s_b


@triton.jit
def _across_splits(x, lanes, BD: tl.constexpr, S: tl.constexpr):
    """Sum over the S lanes that hold one channel's state slices (lanes l, l ^ BD, ...): per-channel totals."""
    if S >= 2:
        x = x + tl.gather(x, lanes ^ BD, 0)
    if S >= 4:
        x = x + tl.gather(x, lanes ^ (2 * BD), 0)
    return x


@triton.jit
def _rates_and_bias(a2_ptr, bias_ptr, cols, slc, cm, N: tl.constexpr, NS: tl.constexpr, LANES: tl.constexpr,
                    HAS_BIAS: tl.constexpr):
    """This lane's NS decay rates (A in log2 units) and its channel's delta bias (zeros without one)."""
    a2 = ()
    for n in tl.static_range(NS):
        a2 = a2 + (tl.load(a2_ptr + cols * N + slc * NS + n, mask=cm, other=0.0),)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=cm, other=0.0)
    else:
        bias = tl.zeros([LANES], tl.float32)
    return a2, bias


@triton.jit
def _zeros(NS: tl.constexpr, LANES: tl.constexpr):
    """NS zero vectors: a state or an adjoint that starts from nothing."""
    z = ()
    for n in tl.static_range(NS):
        z = z + (tl.zeros([LANES], tl.float32),)
    return z


# ---- forward ----------------------------------------------------------------------------------------------
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


# ---- backward ---------------------------------------------------------------------------------------------
@triton.jit
def _load_g(u_ptr, dt_ptr, z_ptr, dy_ptr, t, L, cols, s_ul, s_dl, s_zl, s_gl, HAS_Z: tl.constexpr):
    """u, delta, z, dy of time step t (unmasked like `_load_x`: the reverse walk prefetches below 0)."""
    u, dt, z = _load_x(u_ptr, dt_ptr, z_ptr, t, L, cols, s_ul, s_dl, s_zl, HAS_Z)
    dy = tl.load(dy_ptr + tl.minimum(tl.maximum(t, 0), L - 1) * s_gl + cols)
    return u, dt, z, dy


@triton.jit
def _delta(dtr, bias, t, L, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """(delta after bias and softplus, the pre-softplus value); delta is 0 for steps past the end."""
    dtr = dtr.to(tl.float32)
    if HAS_BIAS:
        dtr = dtr + bias
    if SOFTPLUS:
        dt = _softplus(dtr, FAST)
    else:
        dt = dtr
    return tl.where(t < L, dt, 0.0), dtr


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
    seg64 = seg.to(tl.int64)  # that the time indices stay 32-bit (64-bit ones cost ~40 registers and 15% more work)
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


# ---- decode step ------------------------------------------------------------------------------------------
@triton.jit
def _ssm_step_kernel(
    state_ptr, u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, a2_ptr, dskip_ptr, bias_ptr, y_ptr,
    d, s_sb, s_ub, s_db, s_zb, s_bb, s_cb, s_yb,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    FAST: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cols = pid_d * BD + tl.arange(0, BD)
    ns = tl.arange(0, NP)
    cm = cols < d
    nm = ns < N
    m2 = cm[:, None] & nm[None, :]
    sp = state_ptr + b * s_sb + cols[:, None] * N + ns[None, :]
    h = tl.load(sp, mask=m2, other=0.0)
    a2 = tl.load(a2_ptr + cols[:, None] * N + ns[None, :], mask=m2, other=0.0)
    u = tl.load(u_ptr + b * s_ub + cols, mask=cm, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * s_db + cols, mask=cm, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + cols, mask=cm, other=0.0)
    if SOFTPLUS:
        dt = _softplus(dt, FAST)
    bv = tl.load(b_ptr + b * s_bb + ns, mask=nm, other=0.0).to(tl.float32)
    cv = tl.load(c_ptr + b * s_cb + ns, mask=nm, other=0.0).to(tl.float32)
    h = tl.exp2(dt[:, None] * a2) * h + (dt * u)[:, None] * bv[None, :]
    tl.store(sp, h, mask=m2)
    y = tl.sum(h * cv[None, :], axis=1)
    if HAS_D:
        y += u * tl.load(dskip_ptr + cols, mask=cm, other=0.0)
    if HAS_Z:
        z = tl.load(z_ptr + b * s_zb + cols, mask=cm, other=0.0).to(tl.float32)
        y = y * z * _sigmoid(z, FAST)
    tl.store(y_ptr + b * s_yb + cols, y.to(y_ptr.dtype.element_ty), mask=cm)


# ---- Python side ------------------------------------------------------------------------------------------
def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """The kernels need unit stride on the last axis; rows may be strided (views into a projection)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _fast(out: torch.Tensor) -> bool:
    """Approximate transcendentals (below the output's own precision) for 16-bit outputs on a real GPU."""
    return out.element_size() == 2 and os.environ.get("TRITON_INTERPRET", "0") != "1"


def _packed_bc(B: torch.Tensor, C: torch.Tensor, N: int):
    """bf16 B/C viewed as int64 words (4 values each) when the layout allows it (N: the values a lane reads).
    (Measured on an H100: fp32 B/C read as words of two values save the unpacking arithmetic but cost more
    loads; the forward took 1.55 ms against 1.17.)"""
    if B.dtype == C.dtype == torch.bfloat16 and N % 4 == 0 and os.environ.get("TRITON_HYMBA_NO_PACK") != "1":
        try:
            return B.view(torch.int64), C.view(torch.int64), True
        except RuntimeError:  # misaligned rows: fall back to one load per value
            pass
    return B, C, False


def _lanes_for(cfg: dict, N: int) -> dict:
    """`cfg` as it can run with N states: one lane per channel (the same lanes a program) when S does not
    divide N."""
    return cfg if N % cfg["S"] == 0 else dict(cfg, BD=cfg["BD"] * cfg["S"], S=1)


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float().contiguous()


def _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state) -> tuple[int, int, int, int]:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be [batch, L, d], got shape {tuple(u.shape)}")
    batch, L, d = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be [d={d}, N], got shape {tuple(A.shape)}")
    N = A.shape[1]
    for name, t, shape in (("delta", delta, (batch, L, d)), ("B", B, (batch, L, N)), ("C", C, (batch, L, N)),
                           ("z", z, (batch, L, d)), ("D", D, (d,)), ("delta_bias", delta_bias, (d,)),
                           ("initial_state", initial_state, (batch, d, N))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"selective_scan: {name} must have shape {shape}, got {tuple(t.shape)}")
    for t in (u, delta, B, C, z):
        if t is not None and (L - 1) * max(t.stride(1), 1) + d >= 2**31:
            raise ValueError("selective_scan: a row of the inputs spans more than 2^31 elements")
    return batch, L, d, N


def scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, initial_state=None,
             save_states=False, config: dict | None = None, segments: int | None = None):
    """Runs the forward kernel. Returns (y, final_state, checkpoints or None).

    `segments`: time segments scanned side by side (None: `_fwd_segments` decides), each entered with the
    state that a cheap pass over the earlier ones gives it (`_scan_state_kernel`, stitched by
    `_entering_states`); exact up to rounding, and the checkpoints are the same."""
    batch, L, d, N = _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    cfg = dict(FWD_CONFIG, **(_forward_split(batch, d, u.device) if config is None else config))
    u, delta, B, C = (_channels_last(t) for t in (u, delta, B, C))
    z = _channels_last(z) if z is not None else None
    a2 = (A.float() * LOG2E).contiguous()
    D, delta_bias, h0 = _f32(D), _f32(delta_bias), _f32(initial_state)
    y = torch.empty(batch, L, d, dtype=u.dtype, device=u.device)
    ht = torch.empty(batch, d, N, dtype=torch.float32, device=u.device)
    n_chunks = triton.cdiv(L, CHUNK)
    ckpt = torch.empty(batch, n_chunks, N, d, dtype=torch.float32, device=u.device) if save_states else None
    if L == 0:
        ht.copy_(h0 if h0 is not None else torch.zeros_like(ht))
        return y, ht, ckpt
    if CHUNK % cfg["PF"]:
        raise ValueError(f"selective_scan: prefetch depth {cfg['PF']} must divide the chunk ({CHUNK})")
    cfg = _lanes_for(cfg, N)
    zz = z if z is not None else u
    Bk, Ck, pack = _packed_bc(B, C, N // cfg["S"])  # each lane reads its N/S values of a row
    seg_chunks, nseg = _segment_layout(n_chunks, _fwd_segments(batch, d, n_chunks, u.device, cfg)
                                       if segments is None else segments)
    if nseg > 1:
        h0 = _entering_states(u, delta, Bk, a2, delta_bias, h0, nseg, seg_chunks * CHUNK, cfg, pack,
                              bool(delta_softplus), _fast(y))
    grid = (triton.cdiv(d, cfg["BD"]), batch, nseg)
    _scan_fwd_kernel[grid](
        u, delta, zz, Bk, Ck, a2, D if D is not None else a2, delta_bias if delta_bias is not None else a2,
        h0 if h0 is not None else ht, y, ht, ckpt if ckpt is not None else ht,
        L, d, n_chunks, seg_chunks * CHUNK,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
        Bk.stride(0), Bk.stride(1), Ck.stride(0), Ck.stride(1), y.stride(0), y.stride(1),
        N=N, BD=cfg["BD"], S=cfg["S"], PF=cfg["PF"], PB=cfg["PB"], CHUNK=CHUNK,
        HAS_Z=z is not None, HAS_D=D is not None, HAS_BIAS=delta_bias is not None, HAS_H0=h0 is not None,
        SOFTPLUS=bool(delta_softplus), SAVE=save_states, FAST=_fast(y), PACK=pack, num_warps=cfg["num_warps"],
    )
    return y, ht, ckpt


def scan_bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, dy, dfinal=None,
             config: dict | None = None, segments: int | None = None):
    """Gradients of `scan_fwd` (which must have run with save_states=True and given `ckpt`).

    `segments`: time segments walked back side by side (None: `_bwd_segments` decides). The forward's
    checkpoints already give each segment its states; the adjoint entering each one comes from a cheap pass
    over the later segments first (`_scan_adjoint_kernel`, stitched by `_entering_adjoints`).

    Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state); None where the input was None."""
    batch, L, d = u.shape
    N = A.shape[1]
    cfg = _lanes_for(dict(BWD_CONFIG, **(config or {})), N)
    u, delta, B, C, dy = (_channels_last(t) for t in (u, delta, B, C, dy))
    z = _channels_last(z) if z is not None else None
    a2 = (A.float() * LOG2E).contiguous()
    Df, biasf = _f32(D), _f32(delta_bias)
    dht = _f32(dfinal)
    dev = u.device
    nb = triton.cdiv(d, cfg["BD"])
    n_chunks = triton.cdiv(L, CHUNK)
    if CHUNK % cfg["PF"]:
        raise ValueError(f"selective_scan: backward prefetch depth {cfg['PF']} must divide the chunk ({CHUNK})")
    seg_chunks, nseg = _segment_layout(n_chunks, _bwd_segments(batch, d, n_chunks, dev, cfg)
                                       if segments is None else segments)
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
        scratch = torch.empty(nseg, batch, nb, CHUNK, N, BD, dtype=torch.float32, device=dev)  # N/S x S lanes
        Bk, Ck, pack = _packed_bc(B, C, N // S)  # each lane reads its N/S values of a row
        if nseg > 1:
            dht = _entering_adjoints(delta, z, Ck, a2, biasf, dy, dht, nseg,
                                     seg_chunks * CHUNK, cfg, pack, bool(delta_softplus), _fast(du))
        _scan_bwd_kernel[(nb, batch, nseg)](
            u, delta, zz, Bk, Ck, a2, Df if Df is not None else a2, biasf if biasf is not None else a2, ckpt, dy,
            dht if dht is not None else a2, scratch,
            du, ddt, dz if dz is not None else du, da, dbc, dd, dbias, dh0,
            L, d, n_chunks, batch, seg_chunks,
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
            Bk.stride(0), Bk.stride(1), Ck.stride(0), Ck.stride(1), dy.stride(0), dy.stride(1),
            N=N, BD=BD, S=S, T=CHUNK, PF=cfg["PF"], PB=cfg["PB"],
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
    One kernel (`_stitch_kernel`) rather than four torch steps a segment: at a batch-1 8k prefill those were
    ~1,200 of the ~3,500 kernels launched."""
    nseg = loc.shape[0] + 1
    out = torch.empty(nseg, *loc.shape[1:], dtype=torch.float32, device=loc.device)
    numel = out[0].numel()
    BLOCK = 1024
    _stitch_kernel[(triton.cdiv(numel, BLOCK),)](
        first if first is not None else loc, loc, dt_sum, a2, out, nseg, numel, a2.numel(),
        N=a2.shape[1], REVERSE=reverse, HAS_FIRST=first is not None, BLOCK=BLOCK, num_warps=4,
    )
    return out


# ---- autograd, as custom ops so that torch.compile treats them as opaque ------------------------------------
@torch.library.custom_op("hymba::selective_scan_fwd", mutates_args=())
def _scan_fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                 initial_state: torch.Tensor | None, delta_softplus: bool, save_states: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, ht, ckpt = scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, save_states)
    return y, ht, ckpt if ckpt is not None else ht.new_empty(0)


@_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, save_states):
    batch, L, d = u.shape
    N = A.shape[1]
    y = u.new_empty(batch, L, d)
    ht = u.new_empty(batch, d, N, dtype=torch.float32)
    ckpt = (u.new_empty(batch, -(-L // CHUNK), N, d, dtype=torch.float32) if save_states
            else u.new_empty(0, dtype=torch.float32))
    return y, ht, ckpt


@torch.library.custom_op("hymba::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                 ckpt: torch.Tensor, dy: torch.Tensor, dfinal: torch.Tensor | None, delta_softplus: bool
                 ) -> list[torch.Tensor]:
    grads = scan_bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, dy, dfinal)
    return [g if g is not None else u.new_empty(0) for g in grads]


@_scan_bwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, ckpt, dy, dfinal, delta_softplus):
    batch, L, d = u.shape
    N = A.shape[1]
    e = u.new_empty(0)
    return [u.new_empty(batch, L, d), delta.new_empty(batch, L, d), A.new_empty(d, N), B.new_empty(B.shape),
            C.new_empty(C.shape), D.new_empty(d) if D is not None else e,
            z.new_empty(batch, L, d) if z is not None else e,
            delta_bias.new_empty(d) if delta_bias is not None else e,
            u.new_empty(batch, d, N, dtype=torch.float32)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, save_states = inputs
    ctx.delta_softplus = delta_softplus
    ctx.has = (D is not None, z is not None, delta_bias is not None, initial_state is not None)
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])


def _backward(ctx, dy, dfinal, _dckpt):
    u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
    if ckpt.numel() == 0 and u.shape[1] > 0:
        raise RuntimeError("selective_scan: backward needs the forward to run with save_states=True")
    if dy is None:
        dy = torch.zeros_like(u)
    du, ddt, dA, dB, dC, dD, dz, dbias, dh0 = _scan_bwd_op(
        u, delta, A, B, C, D, z, delta_bias, ckpt, dy.contiguous(), dfinal, ctx.delta_softplus)
    has_d, has_z, has_bias, has_h0 = ctx.has
    return (du, ddt, dA, dB, dC, dD if has_d else None, dz if has_z else None, dbias if has_bias else None,
            dh0 if has_h0 else None, None, None)


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# Few rows, the older way: the rows cut into time segments that are scanned twice (scan/segmented.py), when
# the rows' channels fill fewer programs than the GPU has SMs, aiming at SEGMENT_PROGRAMS_PER_SM programs per
# SM in all, each segment at least SEGMENT_MIN_STEPS long. Off by default since the kernels segment time
# themselves (`_fwd_segments`, `_bwd_segments`): measured on an H100 at a batch-1 8k prefill, 0.82 ms for the
# scan in 10 such segments against 0.66 in 10 kernel segments; the prefill 50.3k against 54.6k tok/s
# (results/e2e_session7.log). For training it was never on (a batch-4 x 2176 forward + backward took 2.47 ms
# whole and 4.96 ms in 2 segments). SEGMENTS (or a per-SM count here) turns it on (tests, benchmarks).
SEGMENT_PROGRAMS_PER_SM = {"inference": 0, "training": 0}
SEGMENT_MIN_STEPS = 512
SEGMENTS: int | None = None


@contextlib.contextmanager
def forced_segments(count: int | None):
    """SEGMENTS = count inside the block (None: the heuristic's choice), the previous value restored after."""
    global SEGMENTS
    saved, SEGMENTS = SEGMENTS, count
    try:
        yield
    finally:
        SEGMENTS = saved


@contextlib.contextmanager
def forced_configs(fwd: dict | None = None, bwd: dict | None = None, split_below: int | None = None,
                   fwd_segments: int | None = None, bwd_segments: int | None = None):
    """FWD_CONFIG / BWD_CONFIG updated with `fwd` / `bwd`, FWD_SPLIT_BELOW set to `split_below`, FWD_SEGMENTS
    and BWD_SEGMENTS to `fwd_segments` and `bwd_segments` inside the block (benchmarks, checks; None keeps a
    setting), restored after."""
    global FWD_SPLIT_BELOW, FWD_SEGMENTS, BWD_SEGMENTS
    saved = dict(FWD_CONFIG), dict(BWD_CONFIG), FWD_SPLIT_BELOW, FWD_SEGMENTS, BWD_SEGMENTS
    FWD_CONFIG.update(fwd or {})
    BWD_CONFIG.update(bwd or {})
    FWD_SPLIT_BELOW = saved[2] if split_below is None else split_below
    FWD_SEGMENTS = saved[3] if fwd_segments is None else fwd_segments
    BWD_SEGMENTS = saved[4] if bwd_segments is None else bwd_segments
    try:
        yield
    finally:
        for cfg, old in zip((FWD_CONFIG, BWD_CONFIG), saved):
            cfg.clear()
            cfg.update(old)
        FWD_SPLIT_BELOW, FWD_SEGMENTS, BWD_SEGMENTS = saved[2:]


# Few rows: the forward splits each channel's states over two lanes (twice the warps for ~30% more
# instructions a step) when one lane per channel would give the SMs fewer than FWD_SPLIT_BELOW warps each.
# Measured on an H100 (benchmarks/bench_scan.py): at 8 x 4096 x 3200 (800 warps) one lane is faster, 1.29 ms
# against 1.46; a training step at batch 4 x 2176 (400 warps) takes 333 ms split, 338 not.
FWD_SPLIT = dict(BD=16, S=2)
FWD_SPLIT_BELOW = 4


def _forward_split(batch: int, d: int, device: torch.device) -> dict:
    if device.type != "cuda" or FWD_CONFIG["S"] != 1:
        return {}
    one_lane_warps = batch * triton.cdiv(d, FWD_CONFIG["BD"] * FWD_CONFIG["num_warps"]) * FWD_CONFIG["num_warps"]
    return FWD_SPLIT if one_lane_warps < FWD_SPLIT_BELOW * sm_count(device) else {}


# The backward in time segments (scan_bwd), for few rows: one-warp programs of 128 registers a thread, 16 of
# which an H100 SM holds, so segments are added while they all stay resident, each at least
# BWD_MIN_SEGMENT_CHUNKS chunks long (the adjoint pass and the stitching cost more than shorter ones gain).
# Measured on an H100 (benchmarks/bench_scan.py --bwd-segments, results/scan_bwd_segments.log), the backward
# alone at d_inner=3200: 1 x 8320 6.68 -> 1.89 ms in 10 segments (3.5x), 2 x 4224 3.15 -> 1.87 in 5 (1.7x),
# 1 x 2176 1.78 -> 0.99 in 4 (0.93 in 3); a training step's 4 x 2176 1.99 -> 1.94 in 2 (six warps an SM already
# keep it busy: the step took 323 against 324 ms); more programs than fit (6 x 2176 in 2, 8 x 4096) is slower.
BWD_RESIDENT_PER_SM = 16
BWD_MIN_SEGMENT_CHUNKS = 32
BWD_SEGMENTS: int | None = None


# The forward in time segments (scan_fwd), for few rows: FWD_PROGRAMS_PER_SM programs an SM in all (the
# segments are short and independent: a second wave costs little), each at least FWD_MIN_SEGMENT_CHUNKS
# chunks long, and at least FWD_MIN_SEGMENTS of them: the state pass walks K - 1 segments with only K - 1
# times the rows' parallelism, so 2 or 3 segments were slower than one pass at every shape measured.
# Measured on an H100 (benchmarks/bench_scan.py --fwd-segments, results/scan_fwd_segments.log; d_inner=3200):
# 1 x 8320 1.21 -> 0.66 ms in 10 segments (the rows scanned twice, segmented.py: 0.82), with checkpoints
# 1.41 -> 0.66; 1 x 2176 0.38 -> 0.28 in 4; 2 x 4224 0.76 -> 0.58 in 6; 4 x 2176 one pass is fastest.
# FWD_SEGMENTS overrides the choice.
FWD_PROGRAMS_PER_SM = 16
FWD_MIN_SEGMENT_CHUNKS = 32
FWD_MIN_SEGMENTS = 4
FWD_SEGMENTS: int | None = None


def _segment_count(override: int | None, per_sm: int, min_chunks: int, batch: int, d: int, n_chunks: int,
                   device: torch.device, cfg: dict) -> int:
    """Time segments for a launch of `cfg`'s programs: `override` (never more than the chunks), else as many
    as keep `per_sm` programs an SM in all, each at least `min_chunks` chunks long (1 off the GPU)."""
    if override is not None:
        return max(1, min(override, n_chunks))
    if device.type != "cuda":
        return 1
    programs = batch * triton.cdiv(d, cfg["BD"]) * cfg["num_warps"]
    return max(1, min(per_sm * sm_count(device) // programs, n_chunks // min_chunks))


def _segment_layout(n_chunks: int, count: int) -> tuple[int, int]:
    """(chunks a segment, segments) for `count` time segments (clamped to 1..n_chunks), none of them empty."""
    seg_chunks = max(1, triton.cdiv(n_chunks, max(1, min(count, n_chunks))))
    return seg_chunks, max(1, triton.cdiv(n_chunks, seg_chunks))


def _fwd_segments(batch: int, d: int, n_chunks: int, device: torch.device, cfg: dict) -> int:
    k = _segment_count(FWD_SEGMENTS, FWD_PROGRAMS_PER_SM, FWD_MIN_SEGMENT_CHUNKS, batch, d, n_chunks, device, cfg)
    return k if FWD_SEGMENTS is not None or k >= FWD_MIN_SEGMENTS else 1


def _bwd_segments(batch: int, d: int, n_chunks: int, device: torch.device, cfg: dict) -> int:
    return _segment_count(BWD_SEGMENTS, BWD_RESIDENT_PER_SM, BWD_MIN_SEGMENT_CHUNKS, batch, d, n_chunks, device, cfg)


def _segments(batch: int, L: int, d: int, device: torch.device, training: bool = False) -> int:
    if SEGMENTS is not None:
        return SEGMENTS
    per_sm = SEGMENT_PROGRAMS_PER_SM["training" if training else "inference"]
    if device.type != "cuda" or per_sm == 0:
        return 1
    sms = sm_count(device)
    programs = batch * triton.cdiv(d, FWD_CONFIG["BD"])
    if programs >= sms:
        return 1
    most = min(per_sm * sms // programs, L // SEGMENT_MIN_STEPS)
    # a count that divides L needs no padded copies of the inputs (they cost more than a few segments gain)
    exact = [p for p in range(most, 1, -1) if L % p == 0 and 2 * p > most]
    return exact[0] if exact else max(1, most)


def _scan_op(save_states: bool):
    """The `Kernels.selective_scan` contract on the forward op (differentiable when save_states)."""
    def scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
        y, ht, _ = _scan_fwd_op(u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus),
                                save_states)
        return y, ht
    return scan


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                          initial_state=None):
    """The `Kernels.selective_scan` contract on the Triton kernels (differentiable). Returns (y, final_state)."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias, initial_state))
    scan = _scan_op(save_states=needs_grad)
    if delta_softplus:
        segments = _segments(u.shape[0], u.shape[1], u.shape[2], u.device, training=needs_grad)
        if segments > 1:
            return segmented_scan(scan, u, delta, A, B, C, D, z, delta_bias, True, initial_state, segments=segments)
    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)


def ssm_step_triton(state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """One decode step (the `Kernels.ssm_step` contract): `state` [batch, d, N] fp32 is updated in place."""
    batch, d = u.shape
    N = A.shape[1]
    if state.shape != (batch, d, N) or state.dtype != torch.float32:
        raise ValueError(f"ssm_step: state must be float32 [{batch}, {d}, {N}], got {state.dtype} {tuple(state.shape)}")
    if state.stride(2) != 1 or state.stride(1) != N:
        raise ValueError("ssm_step: the state must be contiguous over (d, N) to be updated in place")
    u, delta, B, C = (_channels_last(t) for t in (u, delta, B, C))
    z = _channels_last(z) if z is not None else None
    a2 = (A.float() * LOG2E).contiguous()
    Df, biasf = _f32(D), _f32(delta_bias)
    y = torch.empty(batch, d, dtype=u.dtype, device=u.device)
    zz = z if z is not None else u
    BD = 64
    _ssm_step_kernel[(triton.cdiv(d, BD), batch)](
        state, u, delta, zz, B, C, a2, Df if Df is not None else a2, biasf if biasf is not None else a2, y,
        d, state.stride(0), u.stride(0), delta.stride(0), zz.stride(0), B.stride(0), C.stride(0), y.stride(0),
        N=N, NP=triton.next_power_of_2(N), BD=BD,
        HAS_Z=z is not None, HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        FAST=_fast(y), num_warps=4,
    )
    return y


def scan_bytes(batch: int, L: int, d: int, N: int, dtype: torch.dtype, with_z: bool = True) -> int:
    """The forward's floor in bytes: each input read once (u, delta, z, B, C), y written once."""
    es = torch.tensor([], dtype=dtype).element_size()
    return es * (batch * L * d * (3 + int(with_z)) + 2 * batch * L * N)


__all__ = ["selective_scan_triton", "ssm_step_triton", "scan_fwd", "scan_bwd", "scan_bytes", "CHUNK"]
