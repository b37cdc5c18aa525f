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
    torch.testing.assert_close(out, ref)
