"""Attention on CUDA: FlexAttention for prefill and training, a Triton kernel for decode steps.

The mask rule is the one of `masks.allowed_keys`, written as a FlexAttention `mask_mod` over token positions
(meta tokens 0..M-1, text M+j, padding -1), so one rule serves plain forwards, padded batches, chunked
prefill and a cache. Block masks are built once per forward and layer kind; when the positions are those of
a plain unpadded forward (0..T-1 in every row) the mask depends only on (T, window, M) and is cached across
forwards: causal for global layers, sliding window + meta tokens for the others. FlexAttention handles GQA
without repeating K/V and a value head dim twice the query's.

Lengths go to FlexAttention padded to multiples of its 128-token blocks and shaped [B, H, n, 128, d], so that
inductor knows every block is whole (its template's `IS_DIVISIBLE`) even when torch.compile traces the
lengths as dynamic, which it does from the second length it sees (in a process, the meta tokens' 128 are the
first). With dynamic lengths it cannot, and masks every block, several times slower at prefill shapes. What is
added to reach a multiple takes no part.

Decode steps (a handful of query tokens against a long cache) skip block masks: on CUDA they go through
our Triton decode kernel (`decode_triton`), which reads each cached K/V once for all the query heads sharing
it and evaluates the rule from the slots' positions (no mask in memory; CUDA-graph friendly). Elsewhere the
query heads of a K/V group are folded into the query axis ([B, Hkv, G*Tq, dk]) and go through SDPA with an
additive mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask
from torch.nn.attention.flex_attention import flex_attention as flex

from ..dynamo import allow_recompiles
from ..gpu.device import capability
from .masks import visible
from .sdpa import build_sdpa_mask, sdpa_attention

# Queries per forward below which attention runs as a decode step (decode kernel) rather than FlexAttention.
FLEX_MIN_QUERIES = 64
FLEX_RECOMPILE_LIMIT = 64
FLEX_BLOCK = 128  # FlexAttention's lengths are padded to multiples of its (default) block size
ALIGNMENT_PAD = -2  # the position of the queries and keys added to reach a multiple: none sees or is seen

# FlexAttention's Triton options per (GPU capability, key head dim, value head dim), for 16-bit inputs: what
# inductor's max-autotune picks at a hymba-1.5b training step's shape (25/5 heads, 2k tokens). Inductor's
# defaults for sm_90 size the backward's blocks for the value head (128), which is slower here.
FLEX_KERNEL_OPTIONS = {
    ((9, 0), 64, 128): dict(fwd_BLOCK_M=128, fwd_BLOCK_N=64, fwd_num_warps=4, fwd_num_stages=3,
                            bwd_BLOCK_M1=64, bwd_BLOCK_N1=64, bwd_BLOCK_M2=64, bwd_BLOCK_N2=64,
                            bwd_num_warps=4, bwd_num_stages=3),
}


def kernel_options(q: torch.Tensor, v: torch.Tensor) -> dict | None:
    """The tuned options for these inputs, or None (inductor's defaults). Below 128 queries inductor runs its
    flex-decoding kernel instead, whose blocks these options are not for (our padded lengths never are)."""
    if q.device.type != "cuda" or q.dtype not in (torch.bfloat16, torch.float16) or q.shape[-2] < 128:
        return None

    return FLEX_KERNEL_OPTIONS.get((capability(q.device), q.shape[-1], v.shape[-1]))


@dataclass
class AttentionMask:
    """What `build_flex_mask` returns: a FlexAttention block mask, the positions for the decode kernel, or an
    additive mask for SDPA."""

    block_mask: object | None = None  # torch.nn.attention.flex_attention.BlockMask
    additive: object | None = None  # what build_sdpa_mask returns: [B, 1, Tq, Tk] additive, or its own plan
    positions: tuple | None = None  # (q_pos, k_pos, window, num_meta) for decode_triton.decode_attention
    _grouped: dict = field(default_factory=dict)  # G -> additive mask repeated for G folded query heads

    def grouped(self, G: int) -> torch.Tensor:
        if G not in self._grouped:
            B, _, Tq, Tk = self.additive.shape
            self._grouped[G] = self.additive[:, :, None].expand(B, 1, G, Tq, Tk).reshape(B, 1, G * Tq, Tk)
        return self._grouped[G]


def _plain_mask_mod(window: int | None, num_meta: int):
    """Positions are the indices themselves (a plain forward without padding)."""
    def mask_mod(b, h, q, k):
        return visible(q, k, window, num_meta)
    return mask_mod


def positions_mask_mod(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, num_meta: int):
    """`allowed_keys` as a mask_mod: reads each row's query and key positions. A padding query (-1) sees
    every key, as in the SDPA reference: its output is never used, but this keeps every backend's outputs
    equal at every position (a loss that reads a prediction made at a pad then does not depend on the
    backend). Queries and keys added for the block alignment (ALIGNMENT_PAD) see and are seen by none."""
    def mask_mod(b, h, qi, ki):
        q, k = q_pos[b, qi], k_pos[b, ki]
        return visible(q, k, window, num_meta) | ((q == -1) & (k != ALIGNMENT_PAD))
    return mask_mod


def aligned(n: int) -> int:
    """n rounded up to a multiple of FLEX_BLOCK."""
    return -(-n // FLEX_BLOCK) * FLEX_BLOCK


def flex_block_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, num_meta: int):
    """The block mask of the position rule for these positions (any device), over lengths padded to
    multiples of FLEX_BLOCK with queries and keys at ALIGNMENT_PAD."""
    q_pos, k_pos = (F.pad(p.to(torch.int32), (0, aligned(p.shape[1]) - p.shape[1]), value=ALIGNMENT_PAD)
                    for p in (q_pos, k_pos))
    mod = positions_mask_mod(q_pos, k_pos, window, num_meta)
    return create_block_mask(mod, q_pos.shape[0], None, q_pos.shape[1], k_pos.shape[1], device=q_pos.device)


def _plain_block_mask(T: int, window: int | None, num_meta: int, device: str):
    """Over aligned(T) (cached per aligned length): the keys added after T are in every real query's future,
    so the plain rule hides them; the queries added see only the keys before them (their outputs are
    dropped)."""
    return _plain_block_mask_aligned(aligned(T), window, num_meta, device)


@lru_cache(maxsize=32)
def _plain_block_mask_aligned(T: int, window: int | None, num_meta: int, device: str):
    return create_block_mask(_plain_mask_mod(window, num_meta), None, None, T, T, device=device)


def _is_plain(q_pos: torch.Tensor, k_pos: torch.Tensor) -> bool:
    """Positions 0..T-1 in every row, keys = queries (a no-cache forward without padding). Positions are
    non-decreasing with -1 for pads, so it is enough that each row starts at 0 and ends at T-1."""
    if q_pos is not k_pos and not (q_pos.shape == k_pos.shape and torch.equal(q_pos, k_pos)):
        return False
    T = q_pos.shape[1]
    ends = torch.stack([q_pos[:, 0], q_pos[:, -1]])
    return bool((ends == torch.tensor([[0], [T - 1]], device=ends.device)).all())


def build_flex_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, num_meta: int,
                    dtype: torch.dtype = torch.float32, *, decode_kernel: bool | None = None) -> AttentionMask:
    """The `Kernels.build_attention_mask` contract: once per forward and layer kind. decode_kernel: use the
    Triton decode kernel for few queries (default: on CUDA; True also runs it under Triton's CPU interpreter)."""
    Tq = q_pos.shape[1]
    on_cuda = q_pos.device.type == "cuda"
    if Tq < FLEX_MIN_QUERIES and (on_cuda if decode_kernel is None else decode_kernel) and dtype != torch.float64:
        # int32 once per forward, not in each layer's kernel call
        return AttentionMask(positions=(q_pos.to(torch.int32).contiguous(), k_pos.to(torch.int32).contiguous(),
                                        window, num_meta))
    if not on_cuda or Tq < FLEX_MIN_QUERIES:
        return AttentionMask(additive=build_sdpa_mask(q_pos, k_pos, window, num_meta, dtype))
    if _is_plain(q_pos, k_pos):
        return AttentionMask(block_mask=_plain_block_mask(Tq, window, num_meta, str(q_pos.device)))
    return AttentionMask(block_mask=flex_block_mask(q_pos, k_pos, window, num_meta))


def _blocked_flex(q, k, v, block_mask, scale: float, kernel_options: dict | None):
    """flex_attention on [B, H, n, FLEX_BLOCK, d] inputs: the lengths it sees are FLEX_BLOCK * n. (Inductor's
    CPU template takes 4-d inputs only: there they come as [B, H, T, d].)"""
    if q.dim() == 5:
        q, k, v = (t.flatten(2, 3) for t in (q, k, v))
    return flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1],
                kernel_options=kernel_options)


_compiled_flex = None


def _flex():
    """`_blocked_flex` compiled once per process. Past dynamo's recompile limit (8 by default) it would
    silently run the unfused eager version, slow and with an unsupported backward, so the limit is raised
    (dtypes, mask kinds and the first lengths before they are traced as dynamic each take a variant)."""
    global _compiled_flex
    if _compiled_flex is None:
        allow_recompiles(FLEX_RECOMPILE_LIMIT)
        _compiled_flex = torch.compile(_blocked_flex)
    return _compiled_flex


def _pad_length(t: torch.Tensor, n: int) -> torch.Tensor:
    return t if t.shape[2] == n else F.pad(t, (0, 0, 0, n - t.shape[2]))


def flex_attention(q, k, v, mask: AttentionMask, scale: float):
    """The `Kernels.attention` contract. q [B, H, Tq, dk]; k [B, Hkv, Tk, dk]; v [B, Hkv, Tk, dv]."""
    if k.dtype != q.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    if mask.block_mask is not None:
        Tq = q.shape[2]
        Lq, Lk = mask.block_mask.shape[-2:]  # the lengths padded to whole blocks
        if (Lq, Lk) != (aligned(Tq), aligned(k.shape[2])):
            raise ValueError(f"flex_attention: the block mask covers {Lq} queries x {Lk} keys, made for other "
                             f"lengths than these {Tq} x {k.shape[2]} (padded: {aligned(Tq)} x {aligned(k.shape[2])})")
        q, k, v = _pad_length(q, Lq), _pad_length(k, Lk), _pad_length(v, Lk)
        # Inside a region torch.compile is tracing (compiled layers), the function itself: the enclosing compile
        # fuses it. Tracing through our compiled wrapper instead would leave that wrapper running the unfused
        # eager version in every later call outside a compiled region (seen with torch 2.11 and 2.13).
        flex = _blocked_flex if torch.compiler.is_compiling() else _flex()
        views = (t.unflatten(2, (-1, FLEX_BLOCK)) for t in (q, k, v)) if q.is_cuda else (q, k, v)
        out = flex(*views, mask.block_mask, scale, kernel_options(q, v))
        return out[:, :, :Tq]
    if mask.positions is not None:
        if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
            from .decode_triton import decode_attention

            return decode_attention(q, k, v, *mask.positions, scale)
        # a short sequence in training: the decode kernel has no backward
        mask = AttentionMask(additive=build_sdpa_mask(*mask.positions, dtype=q.dtype))
    return grouped_sdpa(q, k, v, mask, scale)


def grouped_sdpa(q, k, v, mask: AttentionMask, scale: float):
    """Attention for a few queries: the G query heads sharing a K/V head become G query rows of that head,
    so SDPA sees plain multi-head attention and no K/V is repeated."""
    B, H, Tq, dk = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    if G == 1 or not isinstance(mask.additive, torch.Tensor):  # (the reference's own block-by-block plans)
        return sdpa_attention(q, k, v, mask.additive, scale)
    qg = q.reshape(B, Hkv, G * Tq, dk)  # head h = kv * G + g  ->  row g * Tq + t of kv head `kv`
    return sdpa_attention(qg, k, v, mask.grouped(G), scale).view(B, H, Tq, v.shape[-1])


__all__ = ["AttentionMask", "build_flex_mask", "flex_attention", "flex_block_mask", "grouped_sdpa",
           "positions_mask_mod", "FLEX_BLOCK", "FLEX_MIN_QUERIES"]
