"""Attention masks against boolean masks built by hand, element by element."""

import torch

from hymba.ops.attention import allowed_keys, build_sdpa_mask, sdpa_attention


def hand_mask(T, window, M):
    m = torch.zeros(T, T, dtype=torch.bool)
    for q in range(T):
        for k in range(T):
            if k > q:
                continue
            if window is None or q - k <= window or k < M:
                m[q, k] = True
    return m


def test_global_is_causal():
    pos = torch.arange(10)[None]
    assert torch.equal(allowed_keys(pos, pos, None, 3)[0], torch.ones(10, 10, dtype=torch.bool).tril())


def test_window_plus_meta():
    T, W, M = 30, 5, 4
    pos = torch.arange(T)[None]
    got = allowed_keys(pos, pos, W, M)[0]
    assert torch.equal(got, hand_mask(T, W, M))
    # a query far from the start sees W + 1 keys (itself included) plus the M meta tokens
    assert got[T - 1].sum().item() == (W + 1) + M


def test_padding_positions():
    # meta (2), two pads, three tokens: positions 0 1 -1 -1 2 3 4
    pos = torch.tensor([[0, 1, -1, -1, 2, 3, 4]])
    got = allowed_keys(pos, pos, 1, 2)[0]
    real = [0, 1, 4, 5, 6]
    ref = hand_mask(5, 1, 2)
    assert torch.equal(got[real][:, real], ref)
    assert not got[:, [2, 3]].any()  # pads are never keys


def test_padding_queries_stay_finite():
    pos = torch.tensor([[-1, -1, 0, 1]])
    mask = build_sdpa_mask(pos, pos, None, 0)
    q = torch.randn(1, 2, 4, 8)
    out = sdpa_attention(q, torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 16), mask, 8 ** -0.5)
    assert torch.isfinite(out).all()


def test_sdpa_attention_against_explicit_softmax():
    B, H, Hkv, T, dk, dv = 2, 4, 2, 9, 8, 16
    q, k, v = torch.randn(B, H, T, dk, dtype=torch.float64), torch.randn(B, Hkv, T, dk, dtype=torch.float64), \
        torch.randn(B, Hkv, T, dv, dtype=torch.float64)
    pos = torch.arange(T)[None].expand(B, -1)
    out = sdpa_attention(q, k, v, build_sdpa_mask(pos, pos, 3, 2, dtype=torch.float64), dk ** -0.5)
    ref = torch.zeros(B, H, T, dv, dtype=torch.float64)
    allowed = hand_mask(T, 3, 2)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                keys = allowed[t].nonzero().flatten()
                s = torch.stack([q[b, h, t] @ k[b, h // 2, j] for j in keys]) * dk ** -0.5
                ref[b, h, t] = (s.softmax(0)[:, None] * v[b, h // 2, keys]).sum(0)
    # float64: softmax-weighted sums of <= 9 values of size ~1, rounding ~1e-15; far below 1e-12 (so below)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def dense_only(q_pos, k_pos, window, M, dtype):
    ok = allowed_keys(q_pos, k_pos, window, M)
    ok = ok | ~ok.any(-1, keepdim=True)
    return torch.zeros(ok.shape, dtype=dtype).masked_fill_(~ok, float("-inf"))[:, None]


import pytest  # noqa: E402

from hymba.ops.attention.windowed import WindowedMask, plan_windowed  # noqa: E402


@pytest.mark.parametrize("M, W, block, pads", [(8, 16, None, (0, 0)), (0, 5, 7, (0, 0)), (3, 4, 9, (11, 0)),
                                                (4, 6, 8, (0, 13))])
def test_blocked_window_attention_equals_dense(M, W, block, pads):
    B, H, Hkv, T, dk = 2, 4, 2, 190, 8
    left, right = pads
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[0, M:M + left] = False
    if right:
        valid[1, T - right:] = False
    pos = torch.where(valid, torch.cumsum(valid.long(), 1) - 1, -1)
    plan = plan_windowed(pos, pos, W, M, torch.float64, block=block)
    assert isinstance(plan, WindowedMask)
    q = torch.randn(B, H, T, dk, dtype=torch.float64)
    k, v = torch.randn(B, Hkv, T, dk, dtype=torch.float64), torch.randn(B, Hkv, T, 2 * dk, dtype=torch.float64)
    got = sdpa_attention(q, k, v, plan, 0.4)
    want = sdpa_attention(q, k, v, dense_only(pos, pos, W, M, torch.float64), 0.4)
    torch.testing.assert_close(got[valid.nonzero(as_tuple=True)[0], :, valid.nonzero(as_tuple=True)[1]],
                               want[valid.nonzero(as_tuple=True)[0], :, valid.nonzero(as_tuple=True)[1]],
                               rtol=1e-12, atol=1e-12)  # float64: softmax-weighted sums of <= 190 values


def test_blocked_plan_refuses_non_contiguous_rows():
    T, M = 200, 4
    valid = torch.ones(1, T, dtype=torch.bool)
    valid[0, 50:60] = False  # a hole in the middle: the key range of a block would miss allowed keys
    pos = torch.where(valid, torch.cumsum(valid.long(), 1) - 1, -1)
    assert plan_windowed(pos, pos, 8, M, torch.float32, block=16) is None
    assert isinstance(build_sdpa_mask(pos, pos, 8, M), torch.Tensor)  # the dense mask serves instead


@pytest.mark.parametrize("Tq", [1, 3])
def test_decode_sized_attention_against_explicit_softmax(Tq):
    """A few queries against a long cache take the one-pass path; it must equal the plain definition."""
    B, H, Hkv, Tk, dk = 2, 6, 2, 40, 8
    q = torch.randn(B, H, Tq, dk, dtype=torch.float64)
    k, v = torch.randn(B, Hkv, Tk, dk, dtype=torch.float64), torch.randn(B, Hkv, Tk, 2 * dk, dtype=torch.float64)
    q_pos = torch.arange(Tk - Tq, Tk)[None].expand(B, -1)
    k_pos = torch.arange(Tk)[None].expand(B, -1).clone()
    k_pos[1, :5] = -1  # row 1 is left padded
    out = sdpa_attention(q, k, v, build_sdpa_mask(q_pos, k_pos, 7, 3, dtype=torch.float64), 0.3)
    ok = allowed_keys(q_pos, k_pos, 7, 3)
    for b in range(B):
        for h in range(H):
            for t in range(Tq):
                keys = ok[b, t].nonzero().flatten()
                p = (torch.stack([q[b, h, t] @ k[b, h // 3, j] for j in keys]) * 0.3).softmax(0)
                torch.testing.assert_close(out[b, h, t], (p[:, None] * v[b, h // 3, keys]).sum(0), rtol=1e-12,
                                           atol=1e-12)  # float64: weighted sums of <= 40 values, as above
