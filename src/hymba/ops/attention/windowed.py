"""Sliding-window attention computed block by block, so a long sequence costs O(T * (window + block)) instead
of O(T^2) in the reference backend.

Queries are cut into blocks of `block` tokens; each block attends over the meta tokens plus the `window`
keys before it and its own keys, with the exact mask of `masks.allowed_keys` on those keys. This is exact
whenever every allowed key of a query lies in that range, which holds when each row's real (non-meta)
tokens are contiguous in the sequence (no padding, or left/right padding); `plan_windowed` checks that and
returns None otherwise, and the dense mask is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .masks import allowed_keys


@dataclass
class WindowedMask:
    key_index: torch.Tensor  # [blocks, keys]: the sequence index each gathered key slot holds
    mask: torch.Tensor  # [batch, blocks, 1, block, keys] additive mask
    block: int
    num_meta: int


def plan_windowed(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int, num_meta: int, dtype: torch.dtype,
                  block: int | None = None) -> WindowedMask | None:
    """The blocked plan for a plain forward (keys = queries), or None where the dense mask must be used."""
    B, T = q_pos.shape
    M = num_meta
    block = block or max(64, window)
    if k_pos.shape != q_pos.shape or T < M + 2 * (block + window) or not torch.equal(k_pos, q_pos):
        return None  # short sequences: the dense mask is as cheap
    device = q_pos.device
    index = torch.arange(T, device=device)
    if not torch.equal(q_pos[:, :M], index[:M].expand(B, M)):
        return None  # meta tokens must lead every row
    # exactness: each row's real text tokens are contiguous <=> index - position is constant over them
    text = q_pos >= M
    offset = index - q_pos
    big = torch.iinfo(offset.dtype).max
    if (torch.where(text, offset, -big).amax(1) != torch.where(text, offset, big).amin(1))[text.any(1)].any():
        return None
    n_blocks = -(-(T - M) // block)
    starts = M + block * torch.arange(n_blocks, device=device)
    window_index = starts[:, None] - window + torch.arange(window + block, device=device)[None]
    meta_index = index[:M].expand(n_blocks, M)
    key_index = torch.cat([meta_index, window_index.clamp(M, T - 1)], dim=1)  # [blocks, M + window + block]
    key_valid = torch.cat([torch.ones_like(meta_index, dtype=torch.bool), (window_index >= M) & (window_index < T)], 1)
    k_pos_b = torch.where(key_valid, q_pos[:, key_index], -1)
    q_index = starts[:, None] + torch.arange(block, device=device)[None]
    q_pos_b = torch.where(q_index < T, q_pos[:, q_index.clamp(max=T - 1)], -1)
    ok = allowed_keys(q_pos_b.reshape(B * n_blocks, block), k_pos_b.reshape(B * n_blocks, -1), window, M)
    ok = ok | ~ok.any(dim=-1, keepdim=True)  # padding queries: finite garbage, never NaN
    mask = torch.zeros(ok.shape, dtype=dtype, device=device).masked_fill_(~ok, float("-inf"))
    return WindowedMask(key_index, mask.view(B, n_blocks, 1, block, -1), block, M)


def windowed_attention(q, k, v, plan: WindowedMask, scale: float, sdpa) -> torch.Tensor:
    """q [B, H, T, dk], k/v [B, Hkv, T, d] -> [B, H, T, dv], with `sdpa(q, k, v, mask, scale, is_causal)` the
    dense kernel. The meta tokens' own queries see only the meta tokens up to themselves: plain causal."""
    B, H, T, dk = q.shape
    M, block = plan.num_meta, plan.block
    n_blocks = plan.key_index.shape[0]
    text_q = q[:, :, M:]
    pad = n_blocks * block - text_q.shape[2]
    if pad:
        text_q = F.pad(text_q, (0, 0, 0, pad))
    qb = text_q.reshape(B, H, n_blocks, block, dk).transpose(1, 2)  # [B, blocks, H, block, dk]
    kb = k[:, :, plan.key_index].transpose(1, 2)  # [B, blocks, Hkv, keys, dk]
    vb = v[:, :, plan.key_index].transpose(1, 2)
    out = sdpa(qb, kb, vb, plan.mask, scale, False)
    out = out.transpose(1, 2).reshape(B, H, n_blocks * block, -1)[:, :, : T - M]
    if M == 0:
        return out
    return torch.cat([sdpa(q[:, :, :M], k[:, :, :M], v[:, :, :M], None, scale, True), out], dim=2)
