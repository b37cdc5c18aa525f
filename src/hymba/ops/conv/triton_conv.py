"""Depthwise causal conv1d of the SSM branch on the GPU: fla-core's Triton kernel when it is installed, our
own Triton kernels otherwise (forward, backward, in-place decode step).

Same contract as `causal_conv1d_ref`: channels-last x [batch, L, d]; weight [d, K]; bias [d];
initial_state [batch, K-1, d] (the K-1 inputs before x); returns (y, final_state [batch, K-1, d]). The final
state is a slice of the inputs, taken in torch so that it stays differentiable.

Our forward reads K shifted [BL, BD] tiles of x (the shifts hit L1/L2, so DRAM sees x about once) and
writes y once. The backward recomputes the pre-activation instead of storing it, in two passes: the gradient
at the pre-activation once per row (with per-program partial sums of the weight and bias gradients, from the
same x tiles), then dx from K shifted reads of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

BL, BD = 64, 64  # tile: time steps x channels


@triton.jit
def _x_at(x_ptr, init_ptr, i, cols, cm, L, s_xl, s_il, K: tl.constexpr, HAS_INIT: tl.constexpr):
    """Input rows i (a vector of indices; -K+1..-1 are the initial state), zeros outside, fp32 [len(i), BD]."""
    m = ((i >= 0) & (i < L))[:, None] & cm[None, :]
    v = tl.load(x_ptr + i[:, None] * s_xl + cols[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_INIT:
        mi = ((i < 0) & (i >= 1 - K))[:, None] & cm[None, :]
        v += tl.load(init_ptr + (i + K - 1)[:, None] * s_il + cols[None, :], mask=mi, other=0.0).to(tl.float32)
    return v


@triton.jit
def _pre_at(x_ptr, init_ptr, w_ptr, bias_ptr, t, cols, cm, L, s_xl, s_il,
            K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr):
    """Pre-activation at output rows t: bias + sum_k w[:, k] * x[t - K + 1 + k]."""
    if HAS_BIAS:
        acc = tl.load(bias_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :] + tl.zeros([t.shape[0], cols.shape[0]], tl.float32)
    else:
        acc = tl.zeros([t.shape[0], cols.shape[0]], tl.float32)
    for k in tl.static_range(K):
        wk = tl.load(w_ptr + cols * K + k, mask=cm, other=0.0).to(tl.float32)
        acc += wk[None, :] * _x_at(x_ptr, init_ptr, t - (K - 1) + k, cols, cm, L, s_xl, s_il, K, HAS_INIT)
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, y_ptr, L, d, s_xb, s_xl, s_ib, s_il,
                     K: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr):
    pid_d, pid_l = tl.program_id(0), tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    cols = pid_d * BD + tl.arange(0, BD)
    cm = cols < d
    t = pid_l * BL + tl.arange(0, BL)
    x_ptr += b * s_xb
    init_ptr += b * s_ib
    acc = _pre_at(x_ptr, init_ptr, w_ptr, bias_ptr, t, cols, cm, L, s_xl, s_il, K, HAS_BIAS, HAS_INIT)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    m = (t < L)[:, None] & cm[None, :]
    tl.store(y_ptr + (b * L + t[:, None]) * d + cols[None, :], acc.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _conv_bwd_gate_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, dy_ptr, g_ptr, dwp_ptr, dbp_ptr,
                          L, d, nbatch, s_xb, s_xl, s_ib, s_il,
                          K: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr,
                          HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr):
    """Over output rows t: g = dL/d(pre-activation) = dy * act'(pre), and this tile's share of the weight
    and bias gradients (its K input tiles are the ones the pre-activation needs anyway)."""
    pid_d, pid_l = tl.program_id(0), tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    cols = pid_d * BD + tl.arange(0, BD)
    cm = cols < d
    t = pid_l * BL + tl.arange(0, BL)
    x_ptr += b * s_xb
    init_ptr += b * s_ib
    tm = (t < L)[:, None] & cm[None, :]
    g = tl.load(dy_ptr + (b * L + t[:, None]) * d + cols[None, :], mask=tm, other=0.0).to(tl.float32)
    xs = ()
    for k in tl.static_range(K):
        xs = xs + (_x_at(x_ptr, init_ptr, t - (K - 1) + k, cols, cm, L, s_xl, s_il, K, HAS_INIT),)
    if SILU:
        if HAS_BIAS:
            pre = tl.load(bias_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :] + tl.zeros([BL, BD], tl.float32)
        else:
            pre = tl.zeros([BL, BD], tl.float32)
        for k in tl.static_range(K):
            pre += tl.load(w_ptr + cols * K + k, mask=cm, other=0.0).to(tl.float32)[None, :] * xs[k]
        sg = tl.sigmoid(pre)
        g = g * sg * (1.0 + pre * (1.0 - sg))
    g = tl.where(tm, g, 0.0)
    tl.store(g_ptr + (b * L + t[:, None]) * d + cols[None, :], g, mask=tm)
    part = (pid_l * nbatch + b) * K
    for k in tl.static_range(K):
        tl.store(dwp_ptr + (part + k) * d + cols, tl.sum(g * xs[k], axis=0), mask=cm)
    tl.store(dbp_ptr + (pid_l * nbatch + b) * d + cols, tl.sum(g, axis=0), mask=cm)


@triton.jit
def _conv_bwd_input_kernel(g_ptr, w_ptr, dx_ptr, dinit_ptr, L, d,
                           K: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr, HAS_INIT: tl.constexpr):
    """dx[s] = sum_j w[:, K-1-j] * g[s + j] over input rows s (negative: the initial state's rows)."""
    pid_d, pid_l = tl.program_id(0), tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    cols = pid_d * BD + tl.arange(0, BD)
    cm = cols < d
    off = K - 1 if HAS_INIT else 0
    s = pid_l * BL + tl.arange(0, BL) - off
    dx = tl.zeros([BL, BD], tl.float32)
    for j in tl.static_range(K):
        t = s + j
        tm = ((t >= 0) & (t < L))[:, None] & cm[None, :]
        gj = tl.load(g_ptr + (b * L + t[:, None]) * d + cols[None, :], mask=tm, other=0.0)
        dx += tl.load(w_ptr + cols * K + (K - 1 - j), mask=cm, other=0.0).to(tl.float32)[None, :] * gj
    mx = ((s >= 0) & (s < L))[:, None] & cm[None, :]
    tl.store(dx_ptr + (b * L + s[:, None]) * d + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mx)
    if HAS_INIT:
        mi = (s < 0)[:, None] & cm[None, :]
        tl.store(dinit_ptr + (b * (K - 1) + (s + K - 1)[:, None]) * d + cols[None, :], dx, mask=mi)


@triton.jit
def _conv_step_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, y_ptr, d, s_xb, s_sb, s_sk, s_yb,
                      K: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cols = pid_d * BD + tl.arange(0, BD)
    cm = cols < d
    sp = state_ptr + b * s_sb + cols
    xv = tl.load(x_ptr + b * s_xb + cols, mask=cm, other=0.0)
    acc = tl.load(w_ptr + cols * K + (K - 1), mask=cm, other=0.0).to(tl.float32) * xv.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cm, other=0.0).to(tl.float32)
    for k in tl.static_range(K - 1):
        sk = tl.load(sp + k * s_sk, mask=cm, other=0.0)
        acc += tl.load(w_ptr + cols * K + k, mask=cm, other=0.0).to(tl.float32) * sk.to(tl.float32)
        if k > 0:
            tl.store(sp + (k - 1) * s_sk, sk, mask=cm)  # shift left: row k-1 takes row k
    if K > 1:
        tl.store(sp + (K - 2) * s_sk, xv.to(state_ptr.dtype.element_ty), mask=cm)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + b * s_yb + cols, acc.to(y_ptr.dtype.element_ty), mask=cm)


# ---- Python side ------------------------------------------------------------------------------------------
def _check(x, weight, bias, initial_state, activation) -> tuple[int, int, int, int]:
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: x must be [batch, L, d], got shape {tuple(x.shape)}")
    batch, L, d = x.shape
    if weight.dim() != 2 or weight.shape[0] != d:
        raise ValueError(f"causal_conv1d: weight must be [d={d}, K], got shape {tuple(weight.shape)}")
    K = weight.shape[1]
    if bias is not None and tuple(bias.shape) != (d,):
        raise ValueError(f"causal_conv1d: bias must be [{d}], got shape {tuple(bias.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, K - 1, d):
        raise ValueError(f"causal_conv1d: initial_state must be [{batch}, {K - 1}, {d}], "
                         f"got shape {tuple(initial_state.shape)}")
    if activation not in (None, "silu"):
        raise ValueError(f"causal_conv1d: unsupported activation {activation!r} (None or 'silu')")
    return batch, L, d, K


def final_state(x: torch.Tensor, initial_state: torch.Tensor | None, K: int) -> torch.Tensor:
    """The last K-1 inputs (from the initial state when x is shorter), for continuing the conv."""
    batch, L, d = x.shape
    if K == 1:
        return x.new_zeros(batch, 0, d)
    if L >= K - 1:
        return x[:, L - K + 1:].clone()
    prev = initial_state.to(x.dtype) if initial_state is not None else x.new_zeros(batch, K - 1, d)
    return torch.cat([prev[:, L:], x], dim=1)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@torch.library.custom_op("hymba::causal_conv1d_fwd", mutates_args=())
def _conv_fwd_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 initial_state: torch.Tensor | None, silu: bool) -> torch.Tensor:
    batch, L, d = x.shape
    K = weight.shape[1]
    x = _rows(x)
    w = weight.contiguous()
    init = _rows(initial_state) if initial_state is not None else None
    y = torch.empty(batch, L, d, dtype=x.dtype, device=x.device)
    if L == 0:
        return y
    _conv_fwd_kernel[(triton.cdiv(d, BD), triton.cdiv(L, BL), batch)](
        x, w, bias if bias is not None else w, init if init is not None else x, y, L, d,
        x.stride(0), x.stride(1), init.stride(0) if init is not None else 0, init.stride(1) if init is not None else 0,
        K=K, BL=BL, BD=BD, HAS_BIAS=bias is not None, HAS_INIT=init is not None, SILU=silu, num_warps=4)
    return y


@_conv_fwd_op.register_fake
def _(x, weight, bias, initial_state, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("hymba::causal_conv1d_bwd", mutates_args=())
def _conv_bwd_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 initial_state: torch.Tensor | None, dy: torch.Tensor, silu: bool) -> list[torch.Tensor]:
    batch, L, d = x.shape
    K = weight.shape[1]
    x = _rows(x)
    dy = dy.contiguous()
    w = weight.contiguous()
    init = _rows(initial_state) if initial_state is not None else None
    off = K - 1 if init is not None else 0
    nl = triton.cdiv(L, BL)
    dx = torch.empty(batch, L, d, dtype=x.dtype, device=x.device)
    dinit = torch.empty(batch, K - 1, d, dtype=torch.float32, device=x.device)
    dwp = torch.zeros(nl, batch, K, d, dtype=torch.float32, device=x.device)
    dbp = torch.zeros(nl, batch, d, dtype=torch.float32, device=x.device)
    if L > 0:  # two passes: g = dy * act'(pre) once per row, then dx from K shifted reads of g
        g = torch.empty(batch, L, d, dtype=torch.float32, device=x.device)
        _conv_bwd_gate_kernel[(triton.cdiv(d, BD), nl, batch)](
            x, w, bias if bias is not None else w, init if init is not None else x, dy, g, dwp, dbp,
            L, d, batch, x.stride(0), x.stride(1),
            init.stride(0) if init is not None else 0, init.stride(1) if init is not None else 0,
            K=K, BL=BL, BD=BD, HAS_BIAS=bias is not None, HAS_INIT=init is not None, SILU=silu, num_warps=4)
        _conv_bwd_input_kernel[(triton.cdiv(d, BD), triton.cdiv(L + off, BL), batch)](
            g, w, dx, dinit, L, d, K=K, BL=BL, BD=BD, HAS_INIT=init is not None, num_warps=4)
    elif init is not None:
        dinit.zero_()
    dw = dwp.sum((0, 1)).t().contiguous().to(weight.dtype)  # [d, K]
    db = dbp.sum((0, 1)).to(bias.dtype) if bias is not None else x.new_empty(0)
    di = dinit.to(initial_state.dtype) if initial_state is not None else x.new_empty(0)
    return [dx, dw, db, di]


@_conv_bwd_op.register_fake
def _(x, weight, bias, initial_state, dy, silu):
    e = x.new_empty(0)
    return [x.new_empty(x.shape), weight.new_empty(weight.shape),
            bias.new_empty(bias.shape) if bias is not None else e,
            initial_state.new_empty(initial_state.shape) if initial_state is not None else e]


def _setup(ctx, inputs, output):
    x, weight, bias, initial_state, silu = inputs
    ctx.silu = silu
    ctx.has = (bias is not None, initial_state is not None)
    ctx.save_for_backward(x, weight, bias, initial_state)


def _backward(ctx, dy):
    x, weight, bias, initial_state = ctx.saved_tensors
    dx, dw, db, di = _conv_bwd_op(x, weight, bias, initial_state, dy, ctx.silu)
    return dx, dw, db if ctx.has[0] else None, di if ctx.has[1] else None, None


_conv_fwd_op.register_autograd(_backward, setup_context=_setup)


def causal_conv1d_triton(x, weight, bias=None, initial_state=None, activation: str | None = "silu"):
    """Our Triton kernels (differentiable). Returns (y, final_state)."""
    _, _, _, K = _check(x, weight, bias, initial_state, activation)
    y = _conv_fwd_op(x, weight, bias, initial_state, activation == "silu")
    return y, final_state(x, initial_state, K)


def fla_causal_conv1d():
    """fla-core's Triton causal conv under our contract; raises ImportError when fla-core is missing."""
    from fla.modules.causal_conv1d import causal_conv1d as fla_conv

    @torch.compiler.disable
    def conv(x, weight, bias=None, initial_state=None, activation: str | None = "silu"):
        _, _, _, K = _check(x, weight, bias, initial_state, activation)
        init = None
        if initial_state is not None:  # fla keeps K columns per channel, the first unused: [batch, d, K]
            init = F.pad(initial_state.transpose(1, 2), (1, 0)).to(x.dtype).contiguous()
        y, _ = fla_conv(x, weight, bias, initial_state=init, activation=activation)
        return y, final_state(x, initial_state, K)

    return conv


def conv_step_triton(x, state, weight, bias=None, activation: str | None = "silu"):
    """One decode step: x [batch, d]; `state` [batch, K-1, d] shifted in place. Returns y [batch, d]."""
    batch, d = x.shape
    K = weight.shape[-1]
    if state.shape != (batch, K - 1, d) or state.stride(-1) != 1:
        raise ValueError(f"conv_step: state must be [{batch}, {K - 1}, {d}] with unit channel stride, "
                         f"got shape {tuple(state.shape)}")
    if activation not in (None, "silu"):
        raise ValueError(f"conv_step: unsupported activation {activation!r}")
    x = _rows(x)
    w = weight.reshape(d, K).contiguous()
    y = torch.empty(batch, d, dtype=x.dtype, device=x.device)
    BDS = 256
    _conv_step_kernel[(triton.cdiv(d, BDS), batch)](
        x, state, w, bias if bias is not None else w, y, d, x.stride(0), state.stride(0), state.stride(1), y.stride(0),
        K=K, BD=BDS, HAS_BIAS=bias is not None, SILU=activation == "silu", num_warps=4)
    return y


__all__ = ["causal_conv1d_triton", "conv_step_triton", "fla_causal_conv1d", "final_state"]
