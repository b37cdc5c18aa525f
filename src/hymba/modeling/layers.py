"""The small building blocks: RMSNorm, the rotary position embedding's tables (default and NTK; the rotation itself
is a kernel, `ops.rotary`), the MLP, and the split of the mixer's input projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HymbaConfig
from ..ops.norm import rms_norm


class RMSNorm(nn.Module):
    """RMS norm with a learnable scale (`ops.norm.rms_norm` says how it rounds)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rope_inv_freq(config: HymbaConfig, length: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse frequencies (float64) of the rotary embedding over the query/key head dim: [head_dim / 2], or
    [B, head_dim / 2] for "dynamic_ntk" given each row's `length` [B].

    "default": base rope_theta. "ntk": the base stretched once for the extended context,
    base = theta * (2 * max_pos / orig_max_pos - 1) ** (d / (d - 2)). "dynamic_ntk": plain until a row's length
    (largest position + 1, meta tokens included) exceeds orig_max_pos, then the NTK base with that length in
    place of max_pos.
    """
    d = config.head_dim
    device = length.device if length is not None else None
    exponents = -torch.arange(0, d, 2, dtype=torch.float64, device=device) / d
    theta = float(config.rope_theta)
    if config.rope_type == "ntk":
        ratio = 2 * config.max_position_embeddings / config.orig_max_position_embeddings - 1
        return (theta * ratio ** (d / (d - 2))) ** exponents
    if config.rope_type == "dynamic_ntk" and length is not None:
        n = length.to(torch.float64)
        stretch = (2 * n / config.orig_max_position_embeddings - 1).clamp(min=1) ** (d / (d - 2))
        base = theta * torch.where(n > config.orig_max_position_embeddings, stretch, torch.ones_like(n))
        return base[:, None] ** exponents
    return theta ** exponents


class RotaryEmbedding(nn.Module):
    def __init__(self, config: HymbaConfig):
        super().__init__()
        self.config = config
        self.dynamic = config.rope_type == "dynamic_ntk"
        # float64 master copy: a model cast to another dtype keeps exact frequencies
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def _apply(self, fn, recurse=True):
        # keep the frequencies in float64 whatever dtype the model is cast to (device moves still apply)
        inv = self.inv_freq
        super()._apply(fn, recurse)
        self.inv_freq = inv.to(self.inv_freq.device)
        return self

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [batch, T, head_dim] for integer positions [batch, T] (padding, -1, is clamped to 0).

        With "dynamic_ntk" each row's base follows the largest position in this call (as the official code's
        does per forward): a decode step rotates with the base of the sequence's length so far."""
        ct = torch.promote_types(dtype, torch.float32)  # fp32 angles (float64 for a float64 model)
        if self.dynamic:
            inv = rope_inv_freq(self.config, positions.amax(dim=1) + 1)[:, None]
        else:
            inv = self.inv_freq
        angles = positions.clamp(min=0).to(ct)[..., None] * inv.to(ct)
        emb = torch.cat([angles, angles], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def split_last_dim(x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """x.split(sizes, dim=-1), whose backward concatenates the parts' gradients in one `torch.cat` that
    torch.compile leaves opaque. Traced as usual, inductor fuses the gradients' producers (the rotary's
    backward, the shared-KV sums) into the concatenation: one kernel evaluating every part's index arithmetic
    and masked loads for every element, several times slower than the bytes it moves (torch 2.11; torch 2.13
    has a setting for it)."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return x.split(sizes, dim=-1)
    return _SplitLastDim.apply(x, list(sizes))


@torch.library.custom_op("hymba::concat_last_dim", mutates_args=())
def _concat_last_dim(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts, dim=-1)


@_concat_last_dim.register_fake
def _(parts):
    return parts[0].new_empty(*parts[0].shape[:-1], sum(p.shape[-1] for p in parts))


class _SplitLastDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes):
        ctx.sizes = sizes
        return x.split(sizes, dim=-1)

    @staticmethod
    def backward(ctx, *grads):
        like = next(g for g in grads if g is not None)
        parts = [g if g is not None else like.new_zeros(*like.shape[:-1], n) for g, n in zip(grads, ctx.sizes)]
        return _concat_last_dim(parts), None


class MLP(nn.Module):
    """SiLU-gated (down(silu(gate(x)) * up(x))) or squared-ReLU (down(relu(up(x))^2)); no biases."""

    def __init__(self, config: HymbaConfig):
        super().__init__()
        d, ffn = config.hidden_size, config.intermediate_size
        self.act = config.mlp_hidden_act
        if self.act == "silu":
            self.gate_proj = nn.Linear(d, ffn, bias=False)
        self.up_proj = nn.Linear(d, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act == "silu":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.relu(self.up_proj(x)).square())


class Experts(nn.Module):
    """The release stores its single MLP as `moe.experts.0`; this container keeps those names."""

    def __init__(self, config: HymbaConfig):
        super().__init__()
        self.experts = nn.ModuleList([MLP(config)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts[0](x)
