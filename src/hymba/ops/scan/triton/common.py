"""What the scan kernels share: device helpers (loads and unpacking, the lane layout, softplus and the fast
transcendentals, sums across a channel's lanes), their constants, and the host-side checks and argument
preparation.

Inputs are read unmasked with clamped indices: steps outside the sequence and channels past d re-read valid
elements whose results are never stored or are zeroed before any sum, so the loops carry no predicates or
zero-fills. For 16-bit outputs, lg2 and tanh come from the MUFU's approximations, exact below the output's
own precision (`FAST`).
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


# ---- device helpers ---------------------------------------------------------------------------------------
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


# ---- host helpers -----------------------------------------------------------------------------------------
def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """The kernels need unit stride on the last axis; rows may be strided (views into a projection)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _fast(out: torch.Tensor) -> bool:
    """Approximate transcendentals (below the output's own precision) for 16-bit outputs on a real GPU."""
    return out.element_size() == 2 and os.environ.get("TRITON_INTERPRET", "0") != "1"


def _packed_bc(B: torch.Tensor, C: torch.Tensor, N: int):
    """bf16 B/C viewed as int64 words (4 values each) when the layout allows it (N: the values a lane reads):
    a quarter of the loads. fp32 B/C stay one load per value (words of two values were slower)."""
    if B.dtype == C.dtype == torch.bfloat16 and N % 4 == 0:
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
