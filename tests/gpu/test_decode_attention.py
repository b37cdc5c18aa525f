"""The Triton decode-attention kernel (CPU interpreter) against the float64 SDPA reference with the mask
built from the same positions: grouped query heads, a value head twice the key head, window + meta and
global rules, empty cache slots, a padding query, key slices merged across programs ("split-K")."""

import pytest
import torch
from helpers import assert_as_accurate_as_reference

pytest.importorskip("triton")

from hymba.ops.attention import (  # noqa: E402
    build_sdpa_mask,
    decode_triton,  # noqa: E402
    sdpa_attention,
)
from hymba.ops.attention.flex import AttentionMask, flex_attention  # noqa: E402

M, W = 4, 20


def _case(B=2, Hkv=2, G=3, Tq=2, S=150, dk=16, dv=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hkv * G, Tq, dk, generator=g)
    k = torch.randn(B, Hkv, S, dk, generator=g)
    v = torch.randn(B, Hkv, S, dv, generator=g)
    k_pos = torch.randint(-1, 120, (B, S), generator=g)  # a ring in any order, empty slots (-1) among them
    k_pos[:, :M] = torch.arange(M)  # the meta tokens
    q_pos = torch.arange(120 - Tq, 120).repeat(B, 1)
    return q, k, v, q_pos, k_pos


def _reference(q, k, v, q_pos, k_pos, window, scale=0.3, dtype=torch.float64):
    mask = build_sdpa_mask(q_pos, k_pos, window, M, dtype)
    return sdpa_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask, scale)


def _check(got, q, k, v, q_pos, k_pos, window, scale=0.3, msg=""):
    """The kernel's float32 output as close to the float64 SDPA reference as the float32 SDPA reference is."""
    ref32 = _reference(q, k, v, q_pos, k_pos, window, scale, torch.float32)
    ref64 = _reference(q, k, v, q_pos, k_pos, window, scale)
    assert_as_accurate_as_reference(got, ref32, ref64, msg=msg)
    return ref32, ref64


@pytest.mark.parametrize("window", [None, W])
@pytest.mark.parametrize("splits", [1, 3, None])
def test_matches_reference(window, splits):
    q, k, v, q_pos, k_pos = _case()
    q_pos[1, 0] = -1  # a padding query sees every slot, as in the reference
    got = decode_triton.decode_attention(q, k, v, q_pos, k_pos, window, M, 0.3, num_splits=splits)
    assert got.shape == (2, 6, 2, 32) and got.dtype == torch.float32
    _check(got, q, k, v, q_pos, k_pos, window)


def test_hymba_shape_one_query_five_heads_per_kv_head():
    """The 1.5B layout: 5 query heads per K/V head, dk 64 -> dv 128 (tiles wider than the rows they hold)."""
    q, k, v, q_pos, k_pos = _case(B=1, Hkv=1, G=5, Tq=1, S=70, dk=64, dv=128, seed=3)
    got = decode_triton.decode_attention(q, k, v, q_pos, k_pos, W, M, 0.125)
    ref32, _ = _check(got, q, k, v, q_pos, k_pos, W, 0.125)
    # and head 3 by hand (float64): softmax over the visible slots of kv head 0
    vis = (k_pos[0] >= 0) & (k_pos[0] <= q_pos[0, 0]) & ((q_pos[0, 0] - k_pos[0] <= W) | (k_pos[0] < M))
    s = (q[0, 3, 0].double() @ k[0, 0].double().T) * 0.125
    p = torch.where(vis, s, float("-inf")).softmax(-1)
    assert_as_accurate_as_reference(got[0, 3, 0], ref32[0, 3, 0], p @ v[0, 0].double(), msg="head 3")


def test_rows_beyond_one_block_of_queries():
    """G * Tq > 64 rows: several query-row blocks per K/V head."""
    q, k, v, q_pos, k_pos = _case(B=1, Hkv=1, G=5, Tq=14, S=90, seed=5)
    got = decode_triton.decode_attention(q, k, v, q_pos, k_pos, None, M, 0.3)
    _check(got, q, k, v, q_pos, k_pos, None)


@pytest.mark.parametrize("launch", [{"BLOCK_N": 32}, {"BLOCK_N": 128, "num_warps": 8, "num_stages": 2}])
def test_other_launch_configurations_give_the_same_result(launch):
    """What bench_decode_attention.py sweeps: key blocks narrower and wider than the cache's tail."""
    q, k, v, q_pos, k_pos = _case(B=1, Hkv=1, G=5, Tq=1, S=150, dk=64, dv=128, seed=7)
    for window in (None, W):
        got = decode_triton.decode_attention(q, k, v, q_pos, k_pos, window, M, 0.125, launch=launch)
        _check(got, q, k, v, q_pos, k_pos, window, 0.125, msg=f"window {window}")
    with pytest.raises(ValueError, match=r"launch keys \['BLOCK_M'\] unknown"):
        decode_triton.decode_attention(q, k, v, q_pos, k_pos, None, M, 0.125, launch={"BLOCK_M": 16})


def test_merge_splits_is_the_softmax_of_the_whole():
    g = torch.Generator().manual_seed(0)
    s, v = torch.randn(3, 12, generator=g, dtype=torch.float64), torch.randn(12, 4, generator=g, dtype=torch.float64)
    s[1, 4:8] = float("-inf")  # row 1: the middle slice sees nothing
    parts = s.view(3, 3, 4)
    m = parts.amax(-1)
    p = torch.exp(parts - m.clamp_min(-1e300)[..., None].nan_to_num(0))
    out = torch.einsum("rsk,skd->rsd", p.nan_to_num(0), v.view(3, 4, 4))
    got = decode_triton.merge_splits(out, m, p.nan_to_num(0).sum(-1))
    # float64: sums of 12 terms of size ~1 in two groupings, rounding ~1e-15; far below 1e-12
    torch.testing.assert_close(got, s.softmax(-1) @ v, rtol=1e-12, atol=1e-12)


def test_merge_kernel_equals_merge_splits_with_slices_that_saw_nothing():
    """The kernel that merges the split-K partials against `merge_splits` (float64 in the kernel's fp32 inputs):
    the last slices cover only empty slots, one query sees no key at all in its first slice; the output comes
    back as a [B, H, Tq, dv] view of a [B, Tq, H, dv] tensor."""
    q, k, v, q_pos, k_pos = _case(B=2, Hkv=1, G=3, Tq=2, S=160, seed=11)
    k_pos[:, 100:] = -1  # slices past slot 100 see nothing
    got = decode_triton.decode_attention(q, k, v, q_pos, k_pos, W, M, 0.3, num_splits=5)
    assert got.shape == (2, 3, 2, 32) and got.transpose(1, 2).is_contiguous()
    _check(got, q, k, v, q_pos, k_pos, W)
    g = torch.Generator().manual_seed(12)
    out = torch.randn(2, 3, 2, 5, 32, generator=g)
    m = torch.randn(2, 3, 2, 5, generator=g)
    l_ = torch.rand(2, 3, 2, 5, generator=g) + 0.5
    m[0, 1, 1, 2:] = float("-inf")
    l_[0, 1, 1, 2:], out[0, 1, 1, 2:] = 0, 0
    y = torch.empty(2, 2, 3, 32)
    decode_triton._merge_kernel[(12,)](out, m, l_, y, 3, 2, 5, DV=32, BDV=32, BLOCK_S=8)
    want = decode_triton.merge_splits(out.double(), m.double(), l_.double())
    # fp32 sums of 5 terms ~1 and a division: a few fp32 ulps of values ~1
    torch.testing.assert_close(y.transpose(1, 2).double(), want, rtol=8 * 2**-23, atol=8 * 2**-23)


def test_bad_shapes_are_named():
    q, k, v, q_pos, k_pos = _case()
    with pytest.raises(ValueError, match="do not fit"):
        decode_triton.decode_attention(q[:, :5], k, v, q_pos, k_pos, None, M, 0.3)
    with pytest.raises(ValueError, match="positions"):
        decode_triton.decode_attention(q, k, v, q_pos[:, :1], k_pos, None, M, 0.3)


def test_training_falls_back_to_sdpa_with_gradients():
    """The decode kernel has no backward: a few-query forward that needs gradients uses the SDPA path."""
    q, k, v, q_pos, k_pos = _case()
    q.requires_grad_(True)
    mask = AttentionMask(positions=(q_pos, k_pos, W, M))
    got = flex_attention(q, k, v, mask, 0.3)
    got.square().sum().backward()
    refs = []
    for dtype in (torch.float32, torch.float64):
        q2 = q.detach().to(dtype).requires_grad_(True)
        out = sdpa_attention(q2, k.to(dtype), v.to(dtype), build_sdpa_mask(q_pos, k_pos, W, M, dtype), 0.3)
        out.square().sum().backward()
        refs.append((out.detach(), q2.grad))
    (out32, grad32), (out64, grad64) = refs
    assert_as_accurate_as_reference(got.detach(), out32, out64, msg="output")
    assert_as_accurate_as_reference(q.grad, grad32, grad64, msg="query gradient")
