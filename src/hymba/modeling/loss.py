"""Next-token cross entropy straight from the final hidden states, never holding the [tokens, vocab] logits.

The logits of one 2k-token row over hymba's 32k vocabulary take 262 MB in fp32, and a training step through
full logits keeps several such tensors at once (the matmul's output, its fp32 copy, log-softmax saved for the
backward, their gradients). Here the LM head's matmul runs over chunks of tokens: the forward keeps only each
token's log-sum-exp; the backward recomputes a chunk's logits (one more matmul, ~1/3 of the head's FLOPs)
and turns them into their gradient in place. The numerics are those of the plain path: logits from the matmul
in the compute dtype, softmax in fp32, its gradient cast back to the compute dtype for the matmuls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Tokens per chunk: the fp32 logits of a chunk stay near 2^26 values (256 MB), and at least this many rows.
CHUNK_VALUES = 2**26
MIN_CHUNK = 256


def pads_vocab(hidden: torch.Tensor) -> bool:
    """Whether the LM head's matmul pads the vocabulary (`pad_vocab_for_matmul`): on CUDA, for more than a
    few tokens."""
    return hidden.is_cuda and hidden.shape[:-1].numel() >= 256


def pad_vocab_for_matmul(weight: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head's weight with its rows padded to a multiple of 64 when `pads_vocab`: with an odd
    vocabulary (the release's 32001) cuBLAS falls back to unaligned kernels, several times slower than the
    FLOPs need. Callers drop the padded columns of the product."""
    pad = -weight.shape[0] % 64
    return F.pad(weight, (0, 0, 0, pad)) if pad and pads_vocab(hidden) else weight


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, chunk: int):
        V = weight.shape[0]
        dtype = _compute_dtype(hidden, weight)
        acc = torch.promote_types(dtype, torch.float32)  # softmax in fp32 (float64 stays float64)
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(dtype)
            w = pad_vocab_for_matmul(weight.to(dtype), h)
            lse = torch.empty(h.shape[0], dtype=acc, device=h.device)
            losses = torch.empty_like(lse)
            valid = targets != ignore_index
            picked = torch.where(valid, targets, 0)
            for s in range(0, h.shape[0], chunk):
                logits = (h[s:s + chunk] @ w.T)[:, :V].to(acc)
                lse[s:s + chunk] = torch.logsumexp(logits, dim=-1)
                target_logit = logits.gather(1, picked[s:s + chunk, None]).squeeze(1)
                losses[s:s + chunk] = torch.where(valid[s:s + chunk], lse[s:s + chunk] - target_logit, 0.0)
        ctx.save_for_backward(h, w, picked, valid, lse)
        ctx.meta = (V, chunk, hidden.dtype, weight.dtype)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        h, w, picked, valid, lse = ctx.saved_tensors
        V, chunk, hidden_dtype, weight_dtype = ctx.meta
        acc = lse.dtype
        g = torch.where(valid, grad_losses.to(acc), 0.0)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(w.shape, dtype=acc, device=w.device)
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, h.shape[0], chunk):
                hc = h[s:s + chunk]
                p = (hc @ w.T).to(acc).sub_(lse[s:s + chunk, None]).exp_()  # softmax, padded columns too
                p[:, V:] = 0
                rows = torch.arange(p.shape[0], device=p.device)
                p[rows, picked[s:s + chunk]] -= valid[s:s + chunk].to(acc)
                dlogits = p.mul_(g[s:s + chunk, None]).to(h.dtype)
                grad_h[s:s + chunk] = dlogits @ w
                grad_w += (dlogits.T @ hc).to(acc)
        return grad_h.to(hidden_dtype), grad_w[:V].to(weight_dtype), None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, chunk_tokens: int | None = None) -> torch.Tensor:
    """Per-token cross entropy of softmax(hidden @ weight.T) against `targets`: hidden [N, H], weight [V, H],
    targets [N] -> losses [N] in fp32 (float64 for float64 inputs), 0 where targets == ignore_index.
    Differentiable in hidden and weight; under autocast the matmuls run in its dtype, as an `nn.Linear` head's
    would. `chunk_tokens`: rows per chunk (default: ~2^26 logits a chunk)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: hidden [N, H] and weight [V, H] expected, got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"linear_cross_entropy: targets must have shape {tuple(hidden.shape[:1])}, "
                         f"got {tuple(targets.shape)}")
    V = weight.shape[0]
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
    if bool(bad.any()):
        raise ValueError(f"linear_cross_entropy: targets hold ids outside the vocabulary [0, {V}) "
                         f"(ignore_index {ignore_index} aside), e.g. {targets[bad][0].item()}")
    chunk = chunk_tokens or max(MIN_CHUNK, CHUNK_VALUES // (V + 63))
    return _LinearCrossEntropy.apply(hidden, weight, targets.to(hidden.device), ignore_index, chunk)


__all__ = ["linear_cross_entropy", "pad_vocab_for_matmul"]
