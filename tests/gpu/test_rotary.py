"""The one-launch rotary kernel (Triton's CPU interpreter) against the float64 rotation: queries and keys of one
layer together, as head views of the input projection's output, in every shape the model gives it."""

import pytest
import torch

pytest.importorskip("triton")

from hymba import HymbaConfig  # noqa: E402
from hymba.modeling.layers import RotaryEmbedding  # noqa: E402
from hymba.ops.rotary import rotary_ref, rotate_half  # noqa: E402
from hymba.ops.rotary.triton_rotary import rotary_triton  # noqa: E402

EPS = {torch.float32: torch.finfo(torch.float32).eps, torch.bfloat16: torch.finfo(torch.bfloat16).eps}


def heads_of_a_projection(B, T, H, Hk, d, dtype, seed=0):
    """q [B, H, T, d] and k [B, Hk, T, d] as the mixer makes them: head views of one [B, T, ...] projection."""
    g = torch.Generator().manual_seed(seed)
    slab = torch.randn(B, T, (H + 2 * Hk) * d + 3, generator=g).to(dtype)
    q = slab[..., :H * d].view(B, T, H, d).transpose(1, 2)
    k = slab[..., H * d:(H + Hk) * d].view(B, T, Hk, d).transpose(1, 2)
    return q, k


def tables(B, T, d, dtype, seed=0):
    c = HymbaConfig.from_preset("tiny", rope_type="default", num_attention_heads=2, num_key_value_heads=1,
                                hidden_size=2 * d)
    assert c.head_dim == d
    positions = torch.randint(0, 4000, (B, T), generator=torch.Generator().manual_seed(seed + 1))
    return RotaryEmbedding(c)(positions, dtype)


def layout(t: torch.Tensor) -> tuple:
    return tuple(st for st, n in zip(t.stride(), t.shape) if n > 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,H,Hk,d", [(3, 1, 5, 1, 16), (2, 7, 30, 5, 8), (1, 4, 3, 0, 32)])
def test_rotary_matches_the_float64_rotation(dtype, B, T, H, Hk, d):
    """Each output is x1 c1 - x2 s1 (or x2 c2 + x1 s2): two products and their sum, each rounded at most to the
    dtype (the kernel: in fp32, then once to the dtype; torch: each to the dtype), so within
    eps (|x1 c1| + |x2 s1| + |y|) of the float64 value on the same inputs and tables (eps, not eps / 2: the
    interpreter truncates to bf16 where a GPU rounds to nearest). torch's own rotation obeys the same bound."""
    q, k = heads_of_a_projection(B, T, H, Hk, d, dtype)
    k = k if Hk else None
    cos, sin = tables(B, T, d, dtype)
    got_q, got_k = rotary_triton(q, k, cos, sin)
    ref_q, ref_k = rotary_ref(q, k, cos, sin)
    c64, s64 = cos.double()[:, None], sin.double()[:, None]
    for x, got, ref in [(q, got_q, ref_q)] + ([(k, got_k, ref_k)] if k is not None else []):
        x = x.double()
        want = x * c64 + rotate_half(x) * s64
        bound = EPS[dtype] * (x.abs() * c64.abs() + rotate_half(x).abs() * s64.abs() + want.abs())
        assert got.shape == want.shape and got.dtype == dtype
        assert layout(got) == layout(ref)  # the layout torch's elementwise kernels give the head view
        assert bool(((got.double() - want).abs() <= bound).all())
        assert bool(((ref.double() - want).abs() <= bound).all())
    if k is None:
        assert got_k is None


def test_rotary_with_gradients_takes_the_reference():
    q, k = heads_of_a_projection(2, 3, 4, 2, 8, torch.float32)
    q = q.detach().requires_grad_()
    cos, sin = tables(2, 3, 8, torch.float32)
    got_q, got_k = rotary_triton(q, k, cos, sin)
    want_q, want_k = rotary_ref(q, k, cos, sin)
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    got_q.sum().backward()
    assert q.grad is not None


def test_rotary_names_a_bad_table():
    q, k = heads_of_a_projection(2, 3, 4, 2, 8, torch.float32)
    cos, sin = tables(2, 3, 8, torch.float32)
    with pytest.raises(ValueError, match="cos/sin of shape"):
        rotary_triton(q, k, cos[:, :2], sin[:, :2])
