"""The Triton decode-attention kernel (CPU interpreter) against the float64 SDPA reference with the mask
built from the same positions: grouped query heads, a value head twice the key head, window + meta and
global rules, empty cache slots, a padding query, key slices merged across programs ("split-K")."""

import pytest
import torch

pytest.importorskip("triton")

from hymba.ops.attention import build_sdpa_mask, sdpa_attention  # noqa: E402
from hymba.ops.attention import decode_triton  # noqa: E402
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


def _reference(q, k, v, q_pos, k_pos, window):
    mask = build_sdpa_mask(q_pos, k_pos, window, M, torch.float64)
    return sdpa_attention(q.double(), k.double(), v.double(), mask, 0.3)


@pytest.mark.parametrize("window", [None, W])
@pytest.mark.parametrize("splits", [1, 3, None])
def test_matches_reference(window, splits):
    q, k, v, q_pos, k_pos = _case()
    q_pos[1, 0] = -1  # a padding query sees every slot, as in the reference
    got = decode_triton.decode_attention(q, k, v, q_pos, k_pos, window, M, 0.3, num_splits=splits)
    want = _reference(q, k, v, q_pos, k_pos, window)
    assert got.shape == want.shape == (2, 6, 2, 32) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_hymba_shape_one_query_five_heads_per_kv_head():
    """The 1.5B layout: 5 query heads per K/V head, dk 64 -> dv 128 (tiles wider than the rows they hold)."""
    q, k, v, q_pos, k_pos = _case(B=1, Hkv=1, G=5, Tq=1, S=70, dk=64, dv=128, seed=3)
    got = decode_triton.decode_attention(q, k, v, q_pos, k_pos, W, M, 0.125)
    want = sdpa_attention(q.double(), k.double(), v.double(), build_sdpa_mask(q_pos, k_pos, W, M, torch.float64),
                          0.125)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # and head 3 by hand: softmax over the visible slots of kv head 0
    vis = (k_pos[0] >= 0) & (k_pos[0] <= q_pos[0, 0]) & ((q_pos[0, 0] - k_pos[0] <= W) | (k_pos[0] < M))
    s = (q[0, 3, 0].double() @ k[0, 0].double().T) * 0.125
    p = torch.where(vis, s, float("-inf")).softmax(-1)
    torch.testing.assert_close(got[0, 3, 0].double(), p @ v[0, 0].double(), rtol=1e-5, atol=1e-5)


def test_rows_beyond_one_block_of_queries():
    """G * Tq > 64 rows: several query-row blocks per K/V head."""
    q, k, v, q_pos, k_pos = _case(B=1, Hkv=1, G=5, Tq=14, S=90, seed=5)
    got = decode_triton.decode_attention(q, k, v, q_pos, k_pos, None, M, 0.3)
    torch.testing.assert_close(got.double(), _reference(q, k, v, q_pos, k_pos, None), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("launch", [{"BLOCK_N": 32}, {"BLOCK_N": 128, "num_warps": 8, "num_stages": 2}])
def test_other_launch_configurations_give_the_same_result(launch):
    """What bench_decode_attention.py sweeps: key blocks narrower and wider than the cache's tail."""
    q, k, v, q_pos, k_pos = _case(B=1, Hkv=1, G=5, Tq=1, S=150, dk=64, dv=128, seed=7)
    for window in (None, W):
        got = decode_triton.decode_attention(q, k, v, q_pos, k_pos, window, M, 0.125, launch=launch)
        want = sdpa_attention(q.double(), k.double(), v.double(),
                              build_sdpa_mask(q_pos, k_pos, window, M, torch.float64), 0.125)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
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
    torch.testing.assert_close(got, s.softmax(-1) @ v)


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
    q2 = q.detach().double().requires_grad_(True)
    want = sdpa_attention(q2, k.double(), v.double(), build_sdpa_mask(q_pos, k_pos, W, M, torch.float64), 0.3)
    want.square().sum().backward()
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.grad.double(), q2.grad, rtol=1e-4, atol=1e-5)
