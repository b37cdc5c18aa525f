"""Attention through torch's scaled_dot_product_attention with an explicit boolean mask (any device)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masks import allowed_keys
from .windowed import WindowedMask, plan_windowed, windowed_attention


def build_sdpa_mask(q_pos, k_pos, window, num_meta, dtype=torch.float32):
    """[batch, 1, Tq, Tk] additive mask (0 or -inf) in `dtype`, built once per forward and layer kind (the
    fused CPU/GPU kernels would otherwise convert a boolean mask on every call).

    A query that may see nothing (a padding query) is let see every key, so its (ignored) output stays
    finite instead of NaN, which would otherwise leak through 0 * NaN."""
    if window is not None:
        plan = plan_windowed(q_pos, k_pos, window, num_meta, dtype)
        if plan is not None:  # long plain forward: block by block, O(T * window)
            return plan
    ok = allowed_keys(q_pos, k_pos, window, num_meta)
    ok = ok | ~ok.any(dim=-1, keepdim=True)
    mask = torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill_(~ok, float("-inf"))
    return mask[:, None]


def sdpa_attention(q, k, v, mask, scale):
    """q [batch, H, Tq, dk]; k [batch, Hkv, Tk, dk]; v [batch, Hkv, Tk, dv] (dv may differ from dk).

    Grouped-query attention without materialising repeated K/V. Returns [batch, H, Tq, dv].
    """
    if k.dtype != q.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    if isinstance(mask, WindowedMask):
        return windowed_attention(q, k, v, mask, scale, _sdpa)
    return _sdpa(q, k, v, mask, scale)


def _few_queries(q, k, v, mask, scale):
    """Decode-sized attention (a few queries against many keys) in one pass: a head group's queries are
    stacked against their shared K/V (no repeated K/V), and values of any width are read once."""
    *lead, H, Tq, dk = q.shape
    Hkv, Tk = k.shape[-3], k.shape[-2]
    G = H // Hkv
    scores = (q.reshape(*lead, Hkv, G * Tq, dk) @ k.transpose(-1, -2)) * scale  # [..., Hkv, G*Tq, Tk]
    if mask is not None:
        scores = (scores.view(*lead, Hkv, G, Tq, Tk) + mask.unsqueeze(-3)).view(*lead, Hkv, G * Tq, Tk)
    probs = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(v.dtype)
    return (probs @ v).reshape(*lead, H, Tq, v.shape[-1])


def _sdpa(q, k, v, mask, scale, is_causal=False):
    """Heads at dim -3 (extra leading dims allowed). Fused SDPA kernels want equal q/k/v head dims, so a
    wider v is attended slice by slice (same attention weights for each dk-wide slice)."""
    gqa = q.shape[-3] != k.shape[-3]
    dk, dv = q.shape[-1], v.shape[-1]
    if q.shape[-2] <= 4 and not is_causal and dv != dk and q.device.type == "cpu":
        return _few_queries(q, k, v, mask, scale)
    if dv != dk and dv % dk == 0:
        return torch.cat([F.scaled_dot_product_attention(q, k, vs, attn_mask=mask, scale=scale, is_causal=is_causal,
                                                         enable_gqa=gqa) for vs in v.split(dk, dim=-1)], dim=-1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, is_causal=is_causal, enable_gqa=gqa)
