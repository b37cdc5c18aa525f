"""The scan's decode step: one token, each program's [BD, N] tile of the state read and updated in place."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import _LOG2E, _channels_last, _fast, _sigmoid, _softplus


@triton.jit
def _ssm_step_kernel(
    state_ptr, u_ptr, dt_ptr, z_ptr, b_ptr, c_ptr, alog_ptr, dskip_ptr, bias_ptr, y_ptr,
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
    a2 = -tl.exp(tl.load(alog_ptr + cols[:, None] * N + ns[None, :], mask=m2, other=0.0).to(tl.float32)) * _LOG2E
    u = tl.load(u_ptr + b * s_ub + cols, mask=cm, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * s_db + cols, mask=cm, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + cols, mask=cm, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt, FAST)
    bv = tl.load(b_ptr + b * s_bb + ns, mask=nm, other=0.0).to(tl.float32)
    cv = tl.load(c_ptr + b * s_cb + ns, mask=nm, other=0.0).to(tl.float32)
    h = tl.exp2(dt[:, None] * a2) * h + (dt * u)[:, None] * bv[None, :]
    tl.store(sp, h, mask=m2)
    y = tl.sum(h * cv[None, :], axis=1)
    if HAS_D:
        y += u * tl.load(dskip_ptr + cols, mask=cm, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + b * s_zb + cols, mask=cm, other=0.0).to(tl.float32)
        y = y * z * _sigmoid(z, FAST)
    tl.store(y_ptr + b * s_yb + cols, y.to(y_ptr.dtype.element_ty), mask=cm)


def ssm_step_triton(state, u, delta, A_log, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """One decode step (the `Kernels.ssm_step` contract): `state` [batch, d, N] fp32 is updated in place.
    A = -exp(A_log), D and delta_bias are read in their stored dtype and derived in the kernel (fp32)."""
    batch, d = u.shape
    N = A_log.shape[1]
    if state.shape != (batch, d, N) or state.dtype != torch.float32:
        raise ValueError(f"ssm_step: state must be float32 [{batch}, {d}, {N}], got {state.dtype} {tuple(state.shape)}")
    if state.stride(2) != 1 or state.stride(1) != N:
        raise ValueError("ssm_step: the state must be contiguous over (d, N) to be updated in place")
    u, delta, B, C = (_channels_last(t) for t in (u, delta, B, C))
    z = _channels_last(z) if z is not None else None
    A_log, D, delta_bias = (t.contiguous() if t is not None else None for t in (A_log, D, delta_bias))
    y = torch.empty(batch, d, dtype=u.dtype, device=u.device)
    zz = z if z is not None else u
    BD = 64
    _ssm_step_kernel[(triton.cdiv(d, BD), batch)](
        state, u, delta, zz, B, C, A_log, D if D is not None else A_log,
        delta_bias if delta_bias is not None else A_log, y,
        d, state.stride(0), u.stride(0), delta.stride(0), zz.stride(0), B.stride(0), C.stride(0), y.stride(0),
        N=N, NP=triton.next_power_of_2(N), BD=BD,
        HAS_Z=z is not None, HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        FAST=_fast(y), num_warps=4,
    )
    return y
