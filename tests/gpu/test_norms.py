"""The fused RMS-norm kernels (Triton's CPU interpreter) against float64: the mixer's branch average and its
dt / B / C norms, as the model calls them."""

import pytest
import torch

pytest.importorskip("triton")

from hymba.ops.norm import norm_average_ref, segment_norms_ref  # noqa: E402
from hymba.ops.norm.triton_norm import norm_average_triton, segment_norms_triton  # noqa: E402

EPS32 = torch.finfo(torch.float32).eps
EPS = {torch.float32: EPS32, torch.bfloat16: torch.finfo(torch.bfloat16).eps}


def normed64(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * w.double()


def reduction_slack(n: int) -> float:
    """The fp32 sum of n squares within n eps32 of its value (relative), the rsqrt and two products a few more."""
    return (n + 8) * EPS32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 1, 40), (2, 5, 3200)])
def test_norm_average_matches_float64(dtype, shape):
    """(n_a + n_b) / 2 with each normed branch and their sum rounded at most to the dtype (the kernel: in fp32,
    then once; torch: each to the dtype): within eps (|n_a| + |n_b| + |n_a + n_b|) / 2 of float64 (eps, not
    eps / 2: the interpreter truncates to bf16), plus the fp32 reduction's slack; torch's kernels obey the same."""
    g = torch.Generator().manual_seed(shape[-1])
    a, b = (torch.randn(*shape, generator=g).to(dtype) for _ in range(2))
    wa, wb = (torch.rand(shape[-1], generator=g).add(0.5).to(dtype) for _ in range(2))
    got = norm_average_triton(a, b, wa, wb, 1e-6, 1e-5)
    ref = norm_average_ref(a, b, wa, wb, 1e-6, 1e-5)
    na, nb = normed64(a, wa, 1e-6), normed64(b, wb, 1e-5)
    want = (na + nb) / 2
    bound = (EPS[dtype] * (na.abs() + nb.abs() + (na + nb).abs())
             + reduction_slack(shape[-1]) * (na.abs() + nb.abs())) / 2
    assert got.shape == a.shape and got.dtype == dtype
    assert bool(((got.double() - want).abs() <= bound).all())
    assert bool(((ref.double() - want).abs() <= bound).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sizes", [(100, 16, 16), (5, 3, 4)])
def test_segment_norms_match_float64(dtype, sizes):
    """Each part normed with its own weight and eps, rounded once: within eps |exact| plus the reduction's slack;
    the parts are views of one buffer in the layout of the input."""
    g = torch.Generator().manual_seed(sum(sizes))
    x = torch.randn(2, 3, sum(sizes) + 6, generator=g)[..., 3:-3].to(dtype)  # a strided slice, as split gives
    weights = [torch.rand(n, generator=g).add(0.5).to(dtype) for n in sizes]
    eps = [1e-6, 1e-5, 1e-4]
    got = segment_norms_triton(x, sizes, weights, eps)
    ref = segment_norms_ref(x, sizes, weights, eps)
    for part, r, xp, w, e in zip(got, ref, x.split(list(sizes), -1), weights, eps):
        want = normed64(xp, w, e)
        bound = (EPS[dtype] + reduction_slack(xp.shape[-1])) * want.abs()
        assert part.shape == xp.shape and part.dtype == dtype
        assert bool(((part.double() - want).abs() <= bound).all())
        assert bool(((r.double() - want).abs() <= bound).all())


def test_with_gradients_the_reference_runs():
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(2, 8, generator=g, requires_grad=True) for _ in range(2))
    w = torch.ones(8)
    out = norm_average_triton(a, b, w, w, 1e-6, 1e-6)
    assert torch.equal(out, norm_average_ref(a, b, w, w, 1e-6, 1e-6))
    out.sum().backward()
    assert a.grad is not None
    parts = segment_norms_triton(a, (4, 2, 2), [torch.ones(4), torch.ones(2), torch.ones(2)], [1e-6] * 3)
    assert all(p.requires_grad for p in parts)


def test_bad_shapes_are_named():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="segment_norms: sizes"):
        segment_norms_triton(x, (4, 2, 1), [torch.ones(4), torch.ones(2), torch.ones(1)], [1e-6] * 3)
    with pytest.raises(ValueError, match="norm_average: weights"):
        norm_average_triton(x, x, torch.ones(7), torch.ones(8), 1e-6, 1e-6)
