"""The mixer's groups of RMS norms as one Triton launch each (torch takes one kernel per norm, plus a sum and
a halving for the average): in a decode step of the 1.5B model that is 160 launches fewer.

One program per row (a token): every norm of the group reduces its own part of the row in fp32, scales it by
its weight, and rounds once to the dtype, as torch's fused `rms_norm` kernel does; the average sums the two
normed branches in fp32 and rounds once (torch rounds each branch and the sum: within a unit of the last
place of the reference, and nearer the exact value). Inference only: with gradients, weights of
another dtype (autocast) or under torch.compile (which fuses the reference itself), the reference runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..dynamo import reference_path
from .reference import norm_average_ref, segment_norms_ref

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _normed(x_ptr, w_ptr, cols, mask, n, eps):
    """x[cols] * rsqrt(mean(x^2) + eps) * w[cols] in fp32 (zero outside `mask`)."""
    x = tl.load(x_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.rsqrt(tl.sum(x * x, axis=0) / n + eps)
    return x * r * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _norm_average_kernel(a_ptr, b_ptr, wa_ptr, wb_ptr, y_ptr, D, s_a, s_b, s_y, eps_a, eps_b, BD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BD)
    m = cols < D
    na = _normed(a_ptr + row * s_a, wa_ptr, cols, m, D, eps_a)
    nb = _normed(b_ptr + row * s_b, wb_ptr, cols, m, D, eps_b)
    tl.store(y_ptr + row * s_y + cols, ((na + nb) * 0.5).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _three_norms_kernel(x_ptr, w0_ptr, w1_ptr, w2_ptr, y_ptr, N0, N1, N2, s_x, s_y, eps0, eps1, eps2,
                        B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row, y_row = x_ptr + row * s_x, y_ptr + row * s_y
    dt = y_ptr.dtype.element_ty
    c0 = tl.arange(0, B0)
    tl.store(y_row + c0, _normed(x_row, w0_ptr, c0, c0 < N0, N0, eps0).to(dt), mask=c0 < N0)
    c1 = tl.arange(0, B1)
    tl.store(y_row + N0 + c1, _normed(x_row + N0, w1_ptr, c1, c1 < N1, N1, eps1).to(dt), mask=c1 < N1)
    c2 = tl.arange(0, B2)
    tl.store(y_row + N0 + N1 + c2, _normed(x_row + N0 + N1, w2_ptr, c2, c2 < N2, N2, eps2).to(dt), mask=c2 < N2)


def _reference_only(inputs, weights) -> bool:
    """Gradients, a compile trace, an unsupported dtype, or weights of another dtype (autocast) or layout."""
    x = inputs[0]
    return (reference_path(*inputs, *weights) or x.dtype not in _DTYPES or any(t.dtype != x.dtype for t in inputs)
            or any(w.dtype != x.dtype or not w.is_contiguous() for w in weights))


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, D] with unit stride along D (a view where the layout allows)."""
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()


def norm_average_triton(a, b, weight_a, weight_b, eps_a: float, eps_b: float) -> torch.Tensor:
    """The `Kernels.norm_average` contract (see `norm_average_ref`) in one launch."""
    if a.shape != b.shape or _reference_only((a, b), (weight_a, weight_b)):
        return norm_average_ref(a, b, weight_a, weight_b, eps_a, eps_b)
    D = a.shape[-1]
    if weight_a.shape != (D,) or weight_b.shape != (D,):
        raise ValueError(f"norm_average: weights of shape {(D,)} expected, got {tuple(weight_a.shape)} and "
                         f"{tuple(weight_b.shape)}")
    a2, b2 = _rows(a), _rows(b)
    y = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    y2 = y.view(-1, D)
    if y2.shape[0]:
        _norm_average_kernel[(y2.shape[0],)](a2, b2, weight_a, weight_b, y2, D, a2.stride(0), b2.stride(0),
                                             y2.stride(0), float(eps_a), float(eps_b), BD=triton.next_power_of_2(D),
                                             num_warps=8 if D > 2048 else 4)
    return y


def segment_norms_triton(x, sizes: Sequence[int], weights: Sequence[torch.Tensor], eps: Sequence[float]):
    """The `Kernels.segment_norms` contract (see `segment_norms_ref`): three parts in one launch."""
    if len(sizes) != 3 or _reference_only((x,), weights):
        return segment_norms_ref(x, sizes, weights, eps)
    n0, n1, n2 = (int(n) for n in sizes)
    if n0 + n1 + n2 != x.shape[-1] or [tuple(w.shape) for w in weights] != [(n0,), (n1,), (n2,)]:
        raise ValueError(f"segment_norms: sizes {list(sizes)} must add up to the last dim of x {tuple(x.shape)} "
                         f"and match the weights' shapes {[tuple(w.shape) for w in weights]}")
    x2 = _rows(x)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    y2 = y.view(-1, x.shape[-1])
    if y2.shape[0]:
        _three_norms_kernel[(y2.shape[0],)](x2, *weights, y2, n0, n1, n2, x2.stride(0), y2.stride(0),
                                            *(float(e) for e in eps), B0=triton.next_power_of_2(n0),
                                            B1=triton.next_power_of_2(n1), B2=triton.next_power_of_2(n2), num_warps=4)
    return y.split([n0, n1, n2], dim=-1)
