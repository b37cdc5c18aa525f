"""The rotary embedding of a layer's queries and keys in one Triton kernel (torch takes five elementwise
kernels per tensor: two products, a negation, a concatenation and a sum).

Each program rotates one (batch row, position) pair for a block of heads, the query heads and then the key
heads of the same position, reading the halves (x1, x2) of each head and the rows of the cos/sin tables:
    out1 = x1 * cos1 - x2 * sin1,    out2 = x2 * cos2 + x1 * sin2
The arithmetic is fp32 with one rounding to the input's dtype at the end (torch's kernels round each product
and the sum: within a unit of the last place of the reference, and nearer the exact value). Inference only:
with gradients, or under torch.compile (which fuses the reference itself), the reference runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dynamo import reference_path
from .reference import rotary_ref


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr,
                   T, H, Hk, s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_ob, s_oh, s_ot, s_pb, s_ph, s_pt, s_cb, s_ct,
                   HALF: tl.constexpr, BHALF: tl.constexpr, BH: tl.constexpr):
    bt = tl.program_id(0)
    b = (bt // T).to(tl.int64)
    t = (bt % T).to(tl.int64)
    heads = tl.program_id(1) * BH + tl.arange(0, BH)
    j = tl.arange(0, BHALF)
    jm = j < HALF
    is_q = heads < H
    is_k = (heads >= H) & (heads < H + Hk)
    kh = tl.where(is_k, heads - H, 0)
    qh = tl.where(is_q, heads, 0)
    mq = is_q[:, None] & jm[None, :]
    mk = is_k[:, None] & jm[None, :]
    q_off = b * s_qb + qh[:, None] * s_qh + t * s_qt + j[None, :]
    k_off = b * s_kb + kh[:, None] * s_kh + t * s_kt + j[None, :]
    x1 = tl.where(mq, tl.load(q_ptr + q_off, mask=mq, other=0.0), tl.load(k_ptr + k_off, mask=mk, other=0.0))
    x2 = tl.where(mq, tl.load(q_ptr + q_off + HALF, mask=mq, other=0.0),
                  tl.load(k_ptr + k_off + HALF, mask=mk, other=0.0))
    c_off = b * s_cb + t * s_ct + j
    c1 = tl.load(cos_ptr + c_off, mask=jm, other=0.0).to(tl.float32)[None, :]
    c2 = tl.load(cos_ptr + c_off + HALF, mask=jm, other=0.0).to(tl.float32)[None, :]
    s1 = tl.load(sin_ptr + c_off, mask=jm, other=0.0).to(tl.float32)[None, :]
    s2 = tl.load(sin_ptr + c_off + HALF, mask=jm, other=0.0).to(tl.float32)[None, :]
    dt = x1.dtype
    x1 = x1.to(tl.float32)
    x2 = x2.to(tl.float32)
    y1 = x1 * c1 - x2 * s1
    y2 = x2 * c2 + x1 * s2
    o_off = b * s_ob + qh[:, None] * s_oh + t * s_ot + j[None, :]
    p_off = b * s_pb + kh[:, None] * s_ph + t * s_pt + j[None, :]
    tl.store(qo_ptr + o_off, y1.to(dt), mask=mq)
    tl.store(qo_ptr + o_off + HALF, y2.to(dt), mask=mq)
    tl.store(ko_ptr + p_off, y1.to(dt), mask=mk)
    tl.store(ko_ptr + p_off + HALF, y2.to(dt), mask=mk)


def _out_like(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, d] laid out as [B, T, H, d], the layout torch's elementwise kernels give a head view."""
    B, H, T, d = x.shape
    return x.new_empty(B, T, H, d).transpose(1, 2)


def rotary_triton(q: torch.Tensor, k: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor):
    """The `Kernels.rotary` contract (see `rotary_ref`) in one launch for q and k."""
    if reference_path(q, k) or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return rotary_ref(q, k, cos, sin)
    B, H, T, d = q.shape
    if d % 2 or cos.shape != (B, T, d) or sin.shape != cos.shape:
        raise ValueError(f"rotary: q {tuple(q.shape)} needs an even head dim and cos/sin of shape {(B, T, d)}, "
                         f"got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if k is not None and (k.shape[0] != B or k.shape[2:] != (T, d) or k.dtype != q.dtype):
        raise ValueError(f"rotary: k {tuple(k.shape)} {k.dtype} does not match q {tuple(q.shape)} {q.dtype}")
    if (q.stride(-1) != 1 or (k is not None and k.stride(-1) != 1) or cos.stride(-1) != 1
            or sin.stride() != cos.stride()):
        return rotary_ref(q, k, cos, sin)
    Hk = k.shape[1] if k is not None else 0
    qo = _out_like(q)
    ko = _out_like(k) if k is not None else qo
    kk = k if k is not None else q
    half = d // 2
    BH = min(triton.next_power_of_2(H + Hk), 32)
    _rotary_kernel[(B * T, triton.cdiv(H + Hk, BH))](
        q, kk, cos, sin, qo, ko, T, H, Hk,
        q.stride(0), q.stride(1), q.stride(2), kk.stride(0), kk.stride(1), kk.stride(2),
        qo.stride(0), qo.stride(1), qo.stride(2), ko.stride(0), ko.stride(1), ko.stride(2), cos.stride(0), cos.stride(1),
        HALF=half, BHALF=triton.next_power_of_2(half), BH=BH, num_warps=4)
    return qo, (ko if k is not None else None)
