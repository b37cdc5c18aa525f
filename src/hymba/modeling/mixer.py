"""The hybrid mixer: one input projection feeds attention heads and SSM heads in parallel; their outputs are
RMS-normed (the learnable scales beta1, beta2 of the paper are the norms' weights), averaged and projected.

    p = in_proj(u) = [q | k | v | x | z]            (k, v only in layers that make their own K/V)
    attn = attention(rope(q), rope(k), v)             (window + meta, or global; K/V maybe from the producer)
    ssm  = scan(silu(conv(x)), dt, B, C) * silu(z)    (x_proj -> dt, B, C; dt_proj; A = -exp(A_log))
    out  = out_proj((norm1(attn) + norm2(ssm)) / 2)

Module names follow the released checkpoint (`mamba.in_proj`, `mamba.x_proj.0`, ...): the `.0` suffixes are
the release's lists holding its single SSM head group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HymbaConfig
from ..ops import Kernels
from .layers import RMSNorm, split_last_dim


@dataclass
class ForwardContext:
    """What every layer of one forward shares, computed once per forward."""

    kernels: Kernels
    positions: torch.Tensor  # [B, T] meta+text positions, -1 for padding
    valid: torch.Tensor | None  # [B, T] bool, None when nothing is padding
    cos: torch.Tensor | None  # rotary tables [B, T, head_dim]
    sin: torch.Tensor | None
    masks: dict[bool, Any]  # is_global -> backend mask
    cache: Any = None  # cache.HybridCache, or None for a plain forward
    conv_order: torch.Tensor | None = None  # padding: per-row permutation putting pads first (see _conv)
    conv_inverse: torch.Tensor | None = None


class QKNorms(nn.Module):
    """Optional RMSNorm over the head dim of q and k (one weight vector each, shared by all heads)."""

    def __init__(self, head_dim: int, with_k: bool):
        super().__init__()
        self.q_norm = RMSNorm(head_dim, eps=1e-6)
        if with_k:
            self.k_norm = RMSNorm(head_dim, eps=1e-6)


class HymbaMixer(nn.Module):
    def __init__(self, config: HymbaConfig, layer_idx: int):
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.use_attention, self.use_ssm = c.use_attention, c.use_ssm
        self.is_global = c.is_global(layer_idx)
        self.makes_kv = c.makes_kv(layer_idx)
        self.num_heads, self.num_kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim, self.v_head_dim = c.head_dim, c.v_head_dim
        self.d_inner, self.d_state, self.dt_rank = c.d_inner, c.mamba_d_state, c.mamba_dt_rank
        self.rope = c.rope
        self.scale = self.head_dim ** -0.5

        sizes: list[int] = []
        if self.use_attention:
            sizes.append(self.num_heads * self.head_dim)
            if self.makes_kv:
                sizes += [self.num_kv_heads * self.head_dim, self.num_kv_heads * self.v_head_dim]
        if self.use_ssm:
            sizes += [self.d_inner, self.d_inner]
        self.split_sizes = sizes
        self.in_proj = nn.Linear(c.hidden_size, sum(sizes), bias=c.mamba_proj_bias)
        self.out_proj = nn.Linear(self.d_inner, c.hidden_size, bias=c.mamba_proj_bias)

        if self.use_attention and c.kq_norm == "rms":
            self.self_attn = QKNorms(self.head_dim, with_k=self.makes_kv)
        if self.use_ssm:
            d, N, R = self.d_inner, self.d_state, self.dt_rank
            self.conv1d = nn.Conv1d(d, d, c.mamba_d_conv, groups=d, bias=c.mamba_conv_bias)
            self.x_proj = nn.ModuleList([nn.Linear(d, R + 2 * N, bias=False)])
            self.dt_proj = nn.ModuleList([nn.Linear(R, d, bias=True)])
            self.A_log = nn.ParameterList([nn.Parameter(torch.empty(d, N))])
            self.D = nn.ParameterList([nn.Parameter(torch.empty(d))])
            self.inner_norms = c.mamba_inner_layernorms
            if self.inner_norms:
                self.dt_layernorm = RMSNorm(R, eps=c.rms_norm_eps)
                self.B_layernorm = RMSNorm(N, eps=c.rms_norm_eps)
                self.C_layernorm = RMSNorm(N, eps=c.rms_norm_eps)
        if self.use_attention and self.use_ssm:
            self.pre_avg_layernorm1 = RMSNorm(self.d_inner, eps=c.rms_norm_eps)  # attention branch (beta1)
            self.pre_avg_layernorm2 = RMSNorm(self.d_inner, eps=c.rms_norm_eps)  # SSM branch (beta2)

    def forward(self, u: torch.Tensor, ctx: ForwardContext, shared_kv=None):
        """u [B, T, hidden] -> (out [B, T, hidden], the (k, v) this layer attended with, or None)."""
        parts = split_last_dim(self.in_proj(u), self.split_sizes)
        attn = ssm = kv = None
        if self.use_attention:
            attn, kv = self._attention(parts, ctx, shared_kv)
        if self.use_ssm:
            ssm = self._ssm(parts[-2], parts[-1], ctx)
        if attn is not None and ssm is not None:
            n1, n2 = self.pre_avg_layernorm1, self.pre_avg_layernorm2
            fused = ctx.kernels.norm_average(attn, ssm, n1.weight, n2.weight, n1.eps, n2.eps)
        else:
            fused = attn if attn is not None else ssm
        return self.out_proj(fused), kv

    def _heads(self, t: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
        B, T, _ = t.shape
        return t.view(B, T, heads, dim).transpose(1, 2)

    def _attention(self, parts, ctx: ForwardContext, shared_kv):
        B, T = parts[0].shape[:2]
        norms = getattr(self, "self_attn", None)
        q = self._heads(parts[0], self.num_heads, self.head_dim)
        if norms is not None:
            q = norms.q_norm(q)
        k = v = None
        if self.makes_kv:
            k = self._heads(parts[1], self.num_kv_heads, self.head_dim)
            v = self._heads(parts[2], self.num_kv_heads, self.v_head_dim)
            if norms is not None:
                k = norms.k_norm(k)
        if self.rope:
            q, k = ctx.kernels.rotary(q, k, ctx.cos, ctx.sin)
        if self.makes_kv:
            kv = (k, v) if ctx.cache is None else ctx.cache.attention_kv(self.layer_idx, k, v)
        else:
            kv = shared_kv
        out = ctx.kernels.attention(q, kv[0], kv[1], ctx.masks[self.is_global], self.scale)
        return out.transpose(1, 2).reshape(B, T, self.num_heads * self.v_head_dim), kv

    def _ssm(self, x: torch.Tensor, z: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        kern, cache, valid = ctx.kernels, ctx.cache, ctx.valid
        conv_w = self.conv1d.weight.view(self.d_inner, -1)
        conv_b = self.conv1d.bias
        conv_state = cache.conv_state[self.layer_idx] if cache is not None else None
        ssm_state = cache.ssm_state[self.layer_idx] if cache is not None else None
        step = cache is not None and x.shape[1] == 1 and valid is None

        if step:  # decode: update the states in place
            xc = kern.conv_step(x[:, 0], conv_state, conv_w, conv_b, "silu")[:, None]
        else:
            xc, new_conv = self._conv(x, conv_w, conv_b, conv_state, ctx)
            if cache is not None:
                conv_state.copy_(new_conv)

        sizes = [self.dt_rank, self.d_state, self.d_state]
        if self.inner_norms:
            norms = (self.dt_layernorm, self.B_layernorm, self.C_layernorm)
            dt, B, C = ctx.kernels.segment_norms(self.x_proj[0](xc), sizes, [n.weight for n in norms],
                                                 [n.eps for n in norms])
            # under autocast the norms return fp32; B and C go to the scan in the activations' dtype, as
            # without the norms (the fast scan reads 16-bit B/C packed, far faster than fp32)
            B, C = B.to(xc.dtype), C.to(xc.dtype)
        else:
            dt, B, C = self.x_proj[0](xc).split(sizes, dim=-1)
        dt = F.linear(dt, self.dt_proj[0].weight)  # the bias is added in fp32 inside the scan, before softplus
        if valid is not None:  # softplus(-inf) = 0: padding leaves the state exactly unchanged
            dt = dt.masked_fill(~valid[..., None], float("-inf"))
        if step:  # (the step derives A, D and the bias in fp32 itself)
            y = kern.ssm_step(ssm_state, xc[:, 0], dt[:, 0], self.A_log[0], B[:, 0], C[:, 0], self.D[0], z[:, 0],
                              self.dt_proj[0].bias, True)
            return y[:, None]
        ct = torch.promote_types(x.dtype, torch.float32)  # SSM parameters in fp32 (float64 for a float64 model)
        A = -torch.exp(self.A_log[0].to(ct))
        D, dt_bias = self.D[0].to(ct), self.dt_proj[0].bias.to(ct)
        y, final = kern.selective_scan(xc, dt, A, B, C, D, z, dt_bias, True, ssm_state)
        if cache is not None:
            ssm_state.copy_(final)
        return y

    def _conv(self, x, weight, bias, state, ctx: ForwardContext):
        """Causal conv that skips padding exactly: each row's real inputs see the real inputs (or the cached
        state) before them, as if the pads were not there. The pads are zeroed and moved in front of the
        state, the conv runs from zeros, and the outputs are put back in place."""
        conv = ctx.kernels.causal_conv1d
        if ctx.valid is None:
            return conv(x, weight, bias, state, "silu")
        B, T, d = x.shape
        x = x.masked_fill(~ctx.valid[..., None], 0)
        if state is None:
            state = x.new_zeros(B, weight.shape[-1] - 1, d)
        seq = torch.cat([state.to(x.dtype), x], dim=1)
        seq = seq.gather(1, ctx.conv_order[..., None].expand(-1, -1, d))
        y, final = conv(seq, weight, bias, None, "silu")
        y = y.gather(1, ctx.conv_inverse[..., None].expand(-1, -1, d))[:, state.shape[1]:]
        return y, final
