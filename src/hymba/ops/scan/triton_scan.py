"""The selective scan in Triton: forward, backward and the single decode step.

Forward (`_scan_fwd_kernel`): one thread per channel, the N states of that channel in registers (a tuple of
N vectors), the sequence walked in order. Each program owns BD channels of one batch row; the inputs of the
next PF time steps are loaded ahead (a ring of register tuples, unrolled), so that memory latency hides
behind the arithmetic. Every input element is read once and every output written once. Above the bytes sit
one exp2 per (step, channel, state), and the few warps a batch x d_inner problem offers to hide latency: see
benchmarks/README.md for what was measured on an H100 and why.

Backward (`_scan_bwd_kernel`): the states are recomputed, not stored. When the forward runs for training
it also writes the state at the start of every CHUNK steps (fp32, N x d per chunk: CHUNK=64 adds
N * 4 / (64 * 2) = 1/2 byte per input element). The backward walks the chunks from last to first; inside a
chunk, time is a tensor axis: per state n it rebuilds h_t with a forward associative scan from the
checkpoint, and the adjoint g_t = C_t dy_t + a_{t+1} g_{t+1} with a reverse one, carrying a_0 g_0 to the
chunk before. Reductions over channels (dB, dC) are written as per-program partial sums and added in torch
(deterministic, no atomics).

Step (`_ssm_step_kernel`): one token, the [BD, N] state tile read and written in place.

Semantics are those of `selective_scan_chunked` (the oracle): channels-last u/delta/z [batch, L, d],
B/C [batch, L, N], A [d, N] (negative), fp32 state, a delta of -inf (before softplus) is an exact no-op.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
_LN2 = tl.constexpr(LN2)
_LOG2E = tl.constexpr(LOG2E)

# Launch configurations (benchmarks/bench_scan.py measures alternatives). On an H100, PF=8 measured best of
# the forward configurations tried with PB=1; PB=4 (B/C fetched 4 steps ahead) is the default since, not yet
# micro-benchmarked.
FWD_CONFIG = dict(BD=32, num_warps=1, PF=8, PB=4)
BWD_CONFIG = dict(BD=32, num_warps=4)
CHUNK = 64  # steps between saved states; also the backward's time tile


# ---- shared device helpers --------------------------------------------------------------------------------
@triton.jit
def _softplus(x):
    """log(1 + e^x), linear above 20 like torch's; e^x itself far to the left (keeps its relative precision);
    softplus(-inf) = 0 exactly, which makes a step with delta = -inf a no-op."""
    e = tl.exp2(x * _LOG2E)
    sp = tl.where(x < -15.0, e, tl.log2(1.0 + e) * _LN2)
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
def _load_x(u_ptr, dt_ptr, z_ptr, t, L, cols, cmask, s_ul, s_dl, s_zl, HAS_Z: tl.constexpr):
    """u, delta, z of time step t for this program's channels (zeros past the end)."""
    m = cmask & (t < L)
    u = tl.load(u_ptr + t * s_ul + cols, mask=m, other=0.0)
    dt = tl.load(dt_ptr + t * s_dl + cols, mask=m, other=0.0)
    if HAS_Z:
        z = tl.load(z_ptr + t * s_zl + cols, mask=m, other=0.0)
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
def _load_bc(b_ptr, c_ptr, t, L, s_bl, s_cl, N: tl.constexpr, PACK: tl.constexpr):
    """B_t and C_t as loaded (the same for every channel): with PACK, bf16 rows read as int64 words, four
    values per load, kept packed until used (a quarter of the loads and of the registers in flight)."""
    tm = t < L
    bs = ()
    cs = ()
    if PACK:
        for q in tl.static_range(N // 4):
            bs = bs + (tl.load(b_ptr + t * s_bl + q, mask=tm, other=0),)
            cs = cs + (tl.load(c_ptr + t * s_cl + q, mask=tm, other=0),)
    else:
        for n in tl.static_range(N):
            bs = bs + (tl.load(b_ptr + t * s_bl + n, mask=tm, other=0.0),)
            cs = cs + (tl.load(c_ptr + t * s_cl + n, mask=tm, other=0.0),)
    return bs, cs


@triton.jit
def _unpack_bc(bs, cs, N: tl.constexpr, PACK: tl.constexpr):
    """-> 2N fp32 scalars."""
    bf = ()
    cf = ()
    if PACK:
        for q in tl.static_range(N // 4):
            bf = bf + _unpack_bf16x4(bs[q])
            cf = cf + _unpack_bf16x4(cs[q])
    else:
        for n in tl.static_range(N):
            bf = bf + (bs[n].to(tl.float32),)
            cf = cf + (cs[n].to(tl.float32),)
    return bf, cf


# ---- forward ----------------------------------------------------------------------------------------------
@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, a2_ptr, dskip_ptr, bias_ptr, h0_ptr,
    y_ptr, ht_ptr, ckpt_ptr,
    L, d, n_chunks,
    s_ub, s_ul, s_db, s_dl, s_zb, s_zl, s_bb, s_bl, s_cb, s_cl, s_yb, s_yl,
    N: tl.constexpr, BD: tl.constexpr, PF: tl.constexpr, PB: tl.constexpr, CHUNK: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    SOFTPLUS: tl.constexpr, SAVE: tl.constexpr, FAST: tl.constexpr, PACK: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cols = pid_d * BD + tl.arange(0, BD)
    cm = cols < d
    u_ptr += b * s_ub
    dt_ptr += b * s_db
    z_ptr += b * s_zb
    b_ptr += b * s_bb
    c_ptr += b * s_cb
    y_ptr += b * s_yb

    a2 = ()
    h = ()
    for n in tl.static_range(N):
        a2 = a2 + (tl.load(a2_ptr + cols * N + n, mask=cm, other=0.0),)
        if HAS_H0:
            h = h + (tl.load(h0_ptr + (b * d + cols) * N + n, mask=cm, other=0.0),)
        else:
            h = h + (tl.zeros([BD], tl.float32),)
    if HAS_D:
        dskip = tl.load(dskip_ptr + cols, mask=cm, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=cm, other=0.0)

    # Software pipeline: the inputs of the next PF steps (and B, C of the next PB) are already in flight.
    ring_x = ()
    for i in tl.static_range(PF):
        ring_x = ring_x + (_load_x(u_ptr, dt_ptr, z_ptr, i, L, cols, cm, s_ul, s_dl, s_zl, HAS_Z),)
    ring_bc = ()
    for i in tl.static_range(PB):
        ring_bc = ring_bc + (_load_bc(b_ptr, c_ptr, i, L, s_bl, s_cl, N, PACK),)

    for t0 in range(0, L, PF):
        if SAVE:
            if t0 % CHUNK == 0:
                base = (b * n_chunks + t0 // CHUNK) * N
                for n in tl.static_range(N):
                    tl.store(ckpt_ptr + (base + n) * d + cols, h[n], mask=cm)
        for i in tl.static_range(PF):
            t = t0 + i
            u, dt, z = ring_x[0]
            bs, cs = _unpack_bc(ring_bc[0][0], ring_bc[0][1], N, PACK)
            ring_x = ring_x[1:] + (_load_x(u_ptr, dt_ptr, z_ptr, t + PF, L, cols, cm, s_ul, s_dl, s_zl, HAS_Z),)
            ring_bc = ring_bc[1:] + (_load_bc(b_ptr, c_ptr, t + PB, L, s_bl, s_cl, N, PACK),)
            u = u.to(tl.float32)
            dt = dt.to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = tl.where(t < L, dt, 0.0)  # steps past the end leave the state alone
            du = dt * u
            if HAS_D:
                y = u * dskip
            else:
                y = tl.zeros([BD], tl.float32)
            new_h = ()
            for n in tl.static_range(N):
                hn = tl.exp2(dt * a2[n]) * h[n] + du * bs[n]
                y += hn * cs[n]
                new_h = new_h + (hn,)
            h = new_h
            if HAS_Z:
                zf = z.to(tl.float32)
                y = y * zf * _sigmoid(zf, FAST)
            tl.store(y_ptr + t * s_yl + cols, y.to(y_ptr.dtype.element_ty), mask=cm & (t < L))

    for n in tl.static_range(N):
        tl.store(ht_ptr + (b * d + cols) * N + n, h[n], mask=cm)


# ---- backward ---------------------------------------------------------------------------------------------
@triton.jit
def _lin_combine(a1, b1, a2, b2):
    """(earlier segment, later segment) of h -> a h + b."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _adjoint_combine(al, pl, vl, ae, pe, ve):
    """Reverse scan of g_t = c_t + a_{t+1} g_{t+1}: (later segment, earlier segment) -> joined segment.

    A segment [t, m) is (a_t: its first decay, P: product of the decays after its first, V: g_t from inside
    the segment). Joining: V = V_e + P_e * a_first(later) * V_l. No shifted copy of `a` is needed."""
    return ae, pe * al * pl, ve + pe * al * vl


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, a2_ptr, dskip_ptr, bias_ptr, ckpt_ptr, dy_ptr, dht_ptr,
    du_ptr, ddt_ptr, dz_ptr, da_ptr, dbp_ptr, dcp_ptr, dd_ptr, dbias_ptr, dh0_ptr,
    L, d, n_chunks, nb,
    s_ub, s_ul, s_db, s_dl, s_zb, s_zl, s_bb, s_bl, s_cb, s_cl, s_gb, s_gl,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DHT: tl.constexpr,
    SOFTPLUS: tl.constexpr, FAST: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cols = pid_d * BD + tl.arange(0, BD)
    cm = cols < d
    rows = tl.arange(0, T)
    u_ptr += b * s_ub
    dt_ptr += b * s_db
    z_ptr += b * s_zb
    b_ptr += b * s_bb
    c_ptr += b * s_cb
    dy_ptr += b * s_gb
    # gradient outputs are contiguous [batch, L, d]
    du_ptr += b * L * d
    ddt_ptr += b * L * d
    dz_ptr += b * L * d

    # Per-state carries as [BD, NP] tiles (the state loop below is a runtime loop, so the kernel compiles
    # once per state, not N times): g = a_first * g_first of the chunk after the current one, da = dA so far.
    ns = tl.arange(0, NP)
    m_dn = cm[:, None] & (ns < N)[None, :]
    if HAS_DHT:
        g = tl.load(dht_ptr + (b * d + cols[:, None]) * N + ns[None, :], mask=m_dn, other=0.0)
    else:
        g = tl.zeros([BD, NP], tl.float32)
    da = tl.zeros([BD, NP], tl.float32)
    if HAS_D:
        dskip = tl.load(dskip_ptr + cols, mask=cm, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=cm, other=0.0)
    dd_acc = tl.zeros([BD], tl.float32)
    dbias_acc = tl.zeros([BD], tl.float32)

    for k in range(0, n_chunks):
        ci = n_chunks - 1 - k
        t = ci * T + rows
        tm = t < L
        m2 = tm[:, None] & cm[None, :]
        u = tl.load(u_ptr + t[:, None] * s_ul + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        dtr = tl.load(dt_ptr + t[:, None] * s_dl + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dtr = dtr + bias[None, :]
        if SOFTPLUS:
            dt = _softplus(dtr)
        else:
            dt = dtr
        dt = tl.where(m2, dt, 0.0)
        dy = tl.load(dy_ptr + t[:, None] * s_gl + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + t[:, None] * s_zl + cols[None, :], mask=m2, other=0.0).to(tl.float32)
            sz = _sigmoid(z, FAST)
            dyg = dy * z * sz
        else:
            dyg = dy
        dtu = dt * u
        if HAS_D:
            ypre = u * dskip[None, :]
        else:
            ypre = tl.zeros([T, BD], tl.float32)
        dug = tl.zeros([T, BD], tl.float32)
        ddt = tl.zeros([T, BD], tl.float32)
        ones = tl.full([T, BD], 1.0, tl.float32)
        for n in range(0, N):
            sel = (ns == n)[None, :]
            a2n = tl.load(a2_ptr + cols * N + n, mask=cm, other=0.0)
            bn = tl.load(b_ptr + t * s_bl + n, mask=tm, other=0.0).to(tl.float32)
            cn = tl.load(c_ptr + t * s_cl + n, mask=tm, other=0.0).to(tl.float32)
            h0 = tl.load(ckpt_ptr + ((b * n_chunks + ci) * N + n) * d + cols, mask=cm, other=0.0)
            a = tl.exp2(dt * a2n[None, :])
            bx = dtu * bn[:, None]
            ap, hl = tl.associative_scan((a, bx), 0, _lin_combine)
            h = hl + ap * h0[None, :]
            ypre += h * cn[:, None]
            c = cn[:, None] * dyg
            _, p, v = tl.associative_scan((a, ones, c), 0, _adjoint_combine, reverse=True)
            gn = tl.sum(tl.where(sel, g, 0.0), axis=1)
            gg = v + p * gn[None, :]
            g_first = tl.sum(tl.where(rows[:, None] == 0, a * gg, 0.0), axis=0)
            g = tl.where(sel, g_first[:, None], g)
            hm = h - bx  # a_t * h_{t-1}
            dug += gg * bn[:, None]
            ddt += gg * ((a2n * _LN2)[None, :] * hm + u * bn[:, None])
            da += tl.where(sel, tl.sum(gg * dt * hm, axis=0)[:, None], 0.0)
            part = ((pid_d * nb + b) * L + t) * N + n
            tl.store(dbp_ptr + part, tl.sum(gg * dtu, axis=1), mask=tm)
            tl.store(dcp_ptr + part, tl.sum(h * dyg, axis=1), mask=tm)

        du = dug * dt
        if HAS_D:
            du += dskip[None, :] * dyg
            dd_acc += tl.sum(dyg * u, axis=0)
        if SOFTPLUS:
            ddt = ddt * _sigmoid(dtr, FAST)
        ddt = tl.where(m2, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=0)
        off = t[:, None] * d + cols[None, :]
        tl.store(du_ptr + off, du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddt_ptr + off, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)
        if HAS_Z:
            dz = dy * ypre * sz * (1.0 + z * (1.0 - sz))
            tl.store(dz_ptr + off, dz.to(dz_ptr.dtype.element_ty), mask=m2)

    out = (b * d + cols[:, None]) * N + ns[None, :]
    tl.store(da_ptr + out, da, mask=m_dn)
    tl.store(dh0_ptr + out, g, mask=m_dn)
    tl.store(dd_ptr + b * d + cols, dd_acc, mask=cm)
    tl.store(dbias_ptr + b * d + cols, dbias_acc, mask=cm)


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
        dt = _softplus(dt)
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
    """bf16 B/C viewed as int64 words (4 values each) when the layout allows it."""
    if B.dtype == C.dtype == torch.bfloat16 and N % 4 == 0 and os.environ.get("TRITON_HYMBA_NO_PACK") != "1":
        try:
            return B.view(torch.int64), C.view(torch.int64), True
        except RuntimeError:  # misaligned rows: fall back to one load per value
            pass
    return B, C, False


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
             save_states=False, config: dict | None = None):
    """Runs the forward kernel. Returns (y, final_state, checkpoints or None)."""
    batch, L, d, N = _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    cfg = dict(FWD_CONFIG, **(config or {}))
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
    zz = z if z is not None else u
    Bk, Ck, pack = _packed_bc(B, C, N)
    grid = (triton.cdiv(d, cfg["BD"]), batch)
    _scan_fwd_kernel[grid](
        u, delta, zz, Bk, Ck, a2, D if D is not None else a2, delta_bias if delta_bias is not None else a2,
        h0 if h0 is not None else ht, y, ht, ckpt if ckpt is not None else ht,
        L, d, n_chunks,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
        Bk.stride(0), Bk.stride(1), Ck.stride(0), Ck.stride(1), y.stride(0), y.stride(1),
        N=N, BD=cfg["BD"], PF=cfg["PF"], PB=cfg["PB"], CHUNK=CHUNK,
        HAS_Z=z is not None, HAS_D=D is not None, HAS_BIAS=delta_bias is not None, HAS_H0=h0 is not None,
        SOFTPLUS=bool(delta_softplus), SAVE=save_states, FAST=_fast(y), PACK=pack, num_warps=cfg["num_warps"],
    )
    return y, ht, ckpt


def scan_bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, dy, dfinal=None,
             config: dict | None = None):
    """Gradients of `scan_fwd` (which must have run with save_states=True and given `ckpt`).

    Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state); None where the input was None."""
    batch, L, d = u.shape
    N = A.shape[1]
    cfg = dict(BWD_CONFIG, **(config or {}))
    u, delta, B, C, dy = (_channels_last(t) for t in (u, delta, B, C, dy))
    z = _channels_last(z) if z is not None else None
    a2 = (A.float() * LOG2E).contiguous()
    Df, biasf = _f32(D), _f32(delta_bias)
    dht = _f32(dfinal)
    dev = u.device
    nb = triton.cdiv(d, cfg["BD"])
    n_chunks = triton.cdiv(L, CHUNK)
    du = torch.empty(batch, L, d, dtype=u.dtype, device=dev)
    ddt = torch.empty(batch, L, d, dtype=delta.dtype, device=dev)
    dz = torch.empty(batch, L, d, dtype=z.dtype, device=dev) if z is not None else None
    da = torch.empty(batch, d, N, dtype=torch.float32, device=dev)
    dbp = torch.empty(nb, batch, L, N, dtype=torch.float32, device=dev)
    dcp = torch.empty(nb, batch, L, N, dtype=torch.float32, device=dev)
    dd = torch.empty(batch, d, dtype=torch.float32, device=dev)
    dbias = torch.empty(batch, d, dtype=torch.float32, device=dev)
    dh0 = torch.empty(batch, d, N, dtype=torch.float32, device=dev)
    if L > 0:
        zz = z if z is not None else u
        _scan_bwd_kernel[(nb, batch)](
            u, delta, zz, B, C, a2, Df if Df is not None else a2, biasf if biasf is not None else a2, ckpt, dy,
            dht if dht is not None else a2,
            du, ddt, dz if dz is not None else du, da, dbp, dcp, dd, dbias, dh0,
            L, d, n_chunks, batch,
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
            B.stride(0), B.stride(1), C.stride(0), C.stride(1), dy.stride(0), dy.stride(1),
            N=N, NP=triton.next_power_of_2(N), BD=cfg["BD"], T=CHUNK,
            HAS_Z=z is not None, HAS_D=D is not None, HAS_BIAS=delta_bias is not None, HAS_DHT=dht is not None,
            SOFTPLUS=bool(delta_softplus), FAST=_fast(du), num_warps=cfg["num_warps"],
        )
    else:
        for t in (da, dbp, dcp, dd, dbias):
            t.zero_()
        dh0.copy_(dht if dht is not None else torch.zeros_like(dh0))
    dA = da.sum(0).to(A.dtype)
    dB = dbp.sum(0).to(B.dtype)
    dC = dcp.sum(0).to(C.dtype)
    dD = dd.sum(0).to(D.dtype) if D is not None else None
    dbias_out = dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddt, dA, dB, dC, dD, dz, dbias_out, dh0


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


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                          initial_state=None):
    """The `Kernels.selective_scan` contract on the Triton kernels (differentiable). Returns (y, final_state)."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias, initial_state))
    y, ht, _ = _scan_fwd_op(u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus), needs_grad)
    return y, ht


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
