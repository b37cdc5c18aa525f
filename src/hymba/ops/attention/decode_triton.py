"""Attention for a few queries against a long cache (decode steps), as one Triton kernel.

A decode step is bandwidth-bound: all it must do is read each cached key and value once. cuDNN's fused SDPA
does not take Hymba's value head (twice the key head) with grouped K/V and a mask in one call: it would
attend the value head in two halves, each reading all of K again, with the mask materialised in memory.
This kernel reads K and V once per K/V head, serving all G query heads that share it (GQA without repeated
K/V), and evaluates the visibility rule (`masks.visible`) from the slots' positions on the fly, so no mask
is built at all.

Grid: one program per (batch row, K/V head, block of G*Tq query rows) and, when that gives too few programs
to fill the GPU (small batches), per slice of the keys ("split-K"); a second small kernel merges the slices'
partial softmaxes (one launch instead of the dozen elementwise ones `merge_splits`, its reference, takes) and
writes the output [B, Tq, H, dv], so the mixer's transpose back to [B, Tq, H * dv] is a view, not a copy.
Accumulation in fp32 with an online softmax.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..gpu.device import sm_count


@triton.jit
def _decode_attn_kernel(q_ptr, k_ptr, v_ptr, qpos_ptr, kpos_ptr, o_ptr, m_ptr, l_ptr,
                        s_qb, s_qh, s_qt, s_kb, s_kh, s_ks, s_vb, s_vh, s_vs,
                        s_ob, s_oh, s_ot, s_os, s_qpb, s_kpb,
                        Hkv, G, Tq, S, keys_per_split, scale, window, num_meta,
                        DK: tl.constexpr, DV: tl.constexpr, BDK: tl.constexpr, BDV: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr,
                        IEEE: tl.constexpr):
    pid_bh, pid_m, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = (pid_bh // Hkv).to(tl.int64)
    kvh = (pid_bh % Hkv).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # row r = g * Tq + t, query head kvh * G + g
    row_ok = rows < G * Tq
    g = rows // Tq
    t = rows % Tq
    h = kvh * G + g
    dk = tl.arange(0, BDK)
    dv = tl.arange(0, BDV)
    q = tl.load(q_ptr + b * s_qb + h[:, None] * s_qh + t[:, None] * s_qt + dk[None, :],
                mask=row_ok[:, None] & (dk[None, :] < DK), other=0.0)
    qp = tl.load(qpos_ptr + b * s_qpb + t, mask=row_ok, other=-1)

    k_base = k_ptr + b * s_kb + kvh * s_kh
    v_base = v_ptr + b * s_vb + kvh * s_vh
    start = pid_s * keys_per_split
    stop = tl.minimum(start + keys_per_split, S)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BDV], tl.float32)
    for n0 in range(start, stop, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < stop
        kp = tl.load(kpos_ptr + b * s_kpb + n, mask=n_ok, other=-1)
        k = tl.load(k_base + n[:, None] * s_ks + dk[None, :], mask=n_ok[:, None] & (dk[None, :] < DK), other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        # masks.visible, on positions; a padding query (qp < 0) sees every slot, like the reference
        ok = (kp[None, :] >= 0) & (kp[None, :] <= qp[:, None])
        if HAS_WINDOW:
            ok = ok & (((qp[:, None] - kp[None, :]) <= window) | (kp[None, :] < num_meta))
        ok = (ok | (qp[:, None] < 0)) & n_ok[None, :]
        s = tl.where(ok, (s * scale).to(tl.float32), float("-inf"))  # (scale is an fp64 scalar when compiled)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + n[:, None] * s_vs + dv[None, :], mask=n_ok[:, None] & (dv[None, :] < DV), other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    o_rows = b * s_ob + h * s_oh + t * s_ot + pid_s * s_os
    tl.store(o_ptr + o_rows[:, None] + dv[None, :], acc, mask=row_ok[:, None] & (dv[None, :] < DV))
    ml = (b * Hkv * G + h) * Tq * tl.num_programs(2) + t * tl.num_programs(2) + pid_s
    tl.store(m_ptr + ml, m_i, mask=row_ok)
    tl.store(l_ptr + ml, l_i, mask=row_ok)


@triton.jit
def _merge_kernel(o_ptr, m_ptr, l_ptr, y_ptr, H, Tq, num_splits, DV: tl.constexpr, BDV: tl.constexpr,
                  BLOCK_S: tl.constexpr):
    """One program per (batch row, query head, query): y[b, t, h] = sum_s w_s o_s / sum_s w_s l_s with
    w_s = exp(m_s - max m), the partials of slices that saw no key weighing 0."""
    pid = tl.program_id(0).to(tl.int64)  # = (b * H + h) * Tq + t, the row of o, m, l
    b, h, t = pid // (H * Tq), (pid // Tq) % H, pid % Tq
    sp = tl.arange(0, BLOCK_S)
    dv = tl.arange(0, BDV)
    s_ok = sp < num_splits
    m = tl.load(m_ptr + pid * num_splits + sp, mask=s_ok, other=float("-inf"))
    l_ = tl.load(l_ptr + pid * num_splits + sp, mask=s_ok, other=0.0)
    top = tl.max(m, 0)
    top = tl.where(top == float("-inf"), 0.0, top)
    w = tl.where(m == float("-inf"), 0.0, tl.exp(m - top))
    o = tl.load(o_ptr + (pid * num_splits + sp[:, None]) * DV + dv[None, :],
                mask=s_ok[:, None] & (dv[None, :] < DV), other=0.0)
    y = tl.sum(o * w[:, None], 0) / tl.sum(l_ * w, 0)
    tl.store(y_ptr + ((b * Tq + t) * H + h) * DV + dv, y.to(y_ptr.dtype.element_ty), mask=dv < DV)


# The launch configuration (keys per loop iteration, warps, pipeline stages); `launch=` overrides it per call.
# Global layers (no window: the whole cache) take LAUNCH_GLOBAL's entries over it: with gigabytes of K/V per
# layer, fewer warps and stages per program keep more programs resident and the copy engine busier (the
# benchmark suite's decode-attention numbers).
LAUNCH = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
LAUNCH_GLOBAL = {"num_warps": 2, "num_stages": 2}


def _programs_wanted(device: torch.device) -> int:
    """Twice the SMs: enough programs in flight to keep the memory system busy."""
    return 2 * sm_count(device) if device.type == "cuda" else 8


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                     window: int | None, num_meta: int, scale: float, num_splits: int | None = None,
                     launch: dict | None = None) -> torch.Tensor:
    """q [B, H, Tq, dk]; k [B, Hkv, S, dk]; v [B, Hkv, S, dv]; q_pos [B, Tq], k_pos [B, S] (-1: empty slot or
    padding). Returns [B, H, Tq, dv] in q's dtype. K/V may be in another dtype than q (a cache kept wider):
    they are cast to q's dtype first, like the reference. `launch`: entries of LAUNCH to override (for a
    global layer, over LAUNCH_GLOBAL's)."""
    B, H, Tq, DK = q.shape
    Hkv, S, DV = k.shape[1], k.shape[2], v.shape[3]
    if k.shape != (B, Hkv, S, DK) or v.shape[:3] != (B, Hkv, S) or H % Hkv:
        raise ValueError(f"decode_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit "
                         "([B, H, Tq, dk], [B, Hkv, S, dk], [B, Hkv, S, dv], H a multiple of Hkv)")
    if q_pos.shape != (B, Tq) or k_pos.shape != (B, S):
        raise ValueError(f"decode_attention: positions {tuple(q_pos.shape)} / {tuple(k_pos.shape)}, expected "
                         f"{(B, Tq)} / {(B, S)}")
    if k.dtype != q.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    if launch is not None and not set(launch) <= set(LAUNCH):
        raise ValueError(f"decode_attention: launch keys {sorted(set(launch) - set(LAUNCH))} unknown; "
                         f"expected some of {sorted(LAUNCH)}")
    cfg = {**LAUNCH, **(LAUNCH_GLOBAL if window is None else {}), **(launch or {})}
    BLOCK_N = cfg["BLOCK_N"]
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    q_pos = q_pos.to(torch.int32).contiguous()
    k_pos = k_pos.to(torch.int32).contiguous()
    G = H // Hkv
    BLOCK_M = max(16, triton.next_power_of_2(min(G * Tq, 64)))
    m_blocks = triton.cdiv(G * Tq, BLOCK_M)
    if num_splits is None:
        programs = B * Hkv * m_blocks
        num_splits = max(1, min(triton.cdiv(_programs_wanted(q.device), programs), triton.cdiv(S, 4 * BLOCK_N)))
    keys_per_split = triton.cdiv(triton.cdiv(S, num_splits), BLOCK_N) * BLOCK_N
    num_splits = triton.cdiv(S, keys_per_split)
    # contiguous: the merge kernel reads each row's slices at row * num_splits
    out = torch.empty(B, H, Tq, num_splits, DV, device=q.device, dtype=torch.float32)
    m = torch.empty(B, H, Tq, num_splits, device=q.device, dtype=torch.float32)
    l_ = torch.empty_like(m)
    _decode_attn_kernel[(B * Hkv, m_blocks, num_splits)](
        q, k, v, q_pos, k_pos, out, m, l_,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        q_pos.stride(0), k_pos.stride(0),
        Hkv, G, Tq, S, keys_per_split, scale, window if window is not None else 0, num_meta,
        DK=DK, DV=DV, BDK=max(16, triton.next_power_of_2(DK)), BDV=max(16, triton.next_power_of_2(DV)),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, HAS_WINDOW=window is not None, IEEE=q.dtype == torch.float32,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    y = torch.empty(B, Tq, H, DV, device=q.device, dtype=q.dtype)
    _merge_kernel[(B * H * Tq,)](out, m, l_, y, H, Tq, num_splits, DV=DV, BDV=max(16, triton.next_power_of_2(DV)),
                                 BLOCK_S=max(2, triton.next_power_of_2(num_splits)), num_warps=4)
    return y.transpose(1, 2)


def merge_splits(out: torch.Tensor, m: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    """The reference of `_merge_kernel`: combine per-slice softmax partials, out [..., splits, dv]
    (unnormalised), m and l [..., splits]."""
    top = m.amax(-1, keepdim=True)
    w = torch.exp(m - top.masked_fill(top == float("-inf"), 0)).nan_to_num_(0.0)  # empty slices weigh 0
    return (out * w[..., None]).sum(-2) / (l_ * w).sum(-1, keepdim=True)


__all__ = ["decode_attention", "merge_splits"]
