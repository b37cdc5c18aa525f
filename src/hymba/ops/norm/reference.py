"""The RMS norms in plain torch: the reference, and the path autograd and torch.compile take."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Variance in fp32, normalise, cast back to the input dtype, then scale (the release's exact order).

    `F.rms_norm` does the first three steps (one fused kernel on CUDA instead of six elementwise ones); on the
    CPU it is bit-identical to writing them out. When the weight has the input's dtype it scales inside that
    kernel too (no separate broadcast multiply): the same bits in fp32, one rounding instead of two in bf16
    (within one bf16 step of the release's order, and nearer the exact value). With another dtype (fp32
    weights under autocast) the order matters and is kept: the fp32 weight times the bf16 normed x."""
    if x.dtype == weight.dtype:
        return F.rms_norm(x, (x.shape[-1],), weight, eps=eps)
    return weight * F.rms_norm(x, (x.shape[-1],), eps=eps)


def norm_average_ref(a: torch.Tensor, b: torch.Tensor, weight_a: torch.Tensor, weight_b: torch.Tensor,
                     eps_a: float, eps_b: float) -> torch.Tensor:
    """(rms_norm(a) + rms_norm(b)) / 2: the mixer's average of its attention and SSM branches."""
    return (rms_norm(a, weight_a, eps_a) + rms_norm(b, weight_b, eps_b)) / 2


def segment_norms_ref(x: torch.Tensor, sizes: Sequence[int], weights: Sequence[torch.Tensor],
                      eps: Sequence[float]) -> tuple[torch.Tensor, ...]:
    """x split along its last dim into `sizes`, each part RMS-normed with its own weight and eps."""
    return tuple(rms_norm(p, w, e) for p, w, e in zip(x.split(list(sizes), dim=-1), weights, eps))
