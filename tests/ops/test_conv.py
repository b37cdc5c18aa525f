"""Depthwise causal conv against torch.nn.functional.conv1d and against itself split in pieces."""

import torch
import torch.nn.functional as F

from hymba.ops.conv import causal_conv1d_ref, causal_conv1d_step_ref


def test_matches_conv1d_with_left_zero_padding():
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    w = torch.randn(6, 4, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    y, state = causal_conv1d_ref(x, w, b, activation=None)
    expected = F.conv1d(F.pad(x.transpose(1, 2), (3, 0)), w[:, None, :], b, groups=6).transpose(1, 2)
    # float64: sums of 5 terms of size ~1-10, rounding ~1e-15; far below 1e-12 (so in every test here)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(state, x[:, -3:])  # the last inputs, copied
    y_silu, _ = causal_conv1d_ref(x, w, b)
    torch.testing.assert_close(y_silu, F.silu(expected), rtol=1e-12, atol=1e-12)


def test_by_hand():
    x = torch.tensor([[[1.0], [2.0], [3.0]]])
    w = torch.tensor([[0.5, -1.0, 2.0]])  # y_t = 0.5 x_{t-2} - x_{t-1} + 2 x_t
    y, _ = causal_conv1d_ref(x, w, None, activation=None)
    assert y.flatten().tolist() == [2.0, 4 - 1, 6 - 2 + 0.5]


def test_initial_state_continues_exactly():
    x = torch.randn(3, 20, 5, dtype=torch.float64)
    w = torch.randn(5, 4, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    full, full_state = causal_conv1d_ref(x, w, b)
    a, s = causal_conv1d_ref(x[:, :7], w, b)
    c, s2 = causal_conv1d_ref(x[:, 7:9], w, b, initial_state=s)  # shorter than the kernel
    d, s3 = causal_conv1d_ref(x[:, 9:], w, b, initial_state=s2)
    torch.testing.assert_close(torch.cat([a, c, d], 1), full, rtol=1e-12, atol=1e-12)
    assert torch.equal(s3, full_state)  # the last inputs, copied


def test_step_updates_state_in_place():
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    w = torch.randn(5, 4, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    full, full_state = causal_conv1d_ref(x, w, b)
    state = torch.zeros(2, 3, 5, dtype=torch.float64)
    ys = [causal_conv1d_step_ref(x[:, t], state, w, b) for t in range(9)]
    torch.testing.assert_close(torch.stack(ys, 1), full, rtol=1e-12, atol=1e-12)
    assert torch.equal(state, full_state)  # the last inputs, copied
