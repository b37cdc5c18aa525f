"""The chunked selective scan and the decode step against the naive per-step recurrence (float64)."""

import pytest
import torch

from hymba.ops.scan import selective_scan_chunked, selective_scan_naive, selective_state_step


def random_scan_inputs(batch=2, L=37, d=5, N=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(u=r(batch, L, d), delta=r(batch, L, d), A=-torch.rand(d, N, generator=g, dtype=dtype) * 4,
                B=r(batch, L, N), C=r(batch, L, N), D=r(d), z=r(batch, L, d), delta_bias=r(d))


@pytest.mark.parametrize("L", [1, 2, 3, 16, 37, 100, 257])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_matches_naive(L, with_state):
    x = random_scan_inputs(L=L, seed=L)
    h0 = torch.randn(2, 5, 4, dtype=torch.float64) if with_state else None
    y_ref, h_ref = selective_scan_naive(**x, initial_state=h0)
    y, h = selective_scan_chunked(**x, initial_state=h0)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 4, 7, 50])
def test_any_chunk_size(chunk):
    x = random_scan_inputs(L=45)
    y_ref, h_ref = selective_scan_naive(**x)
    y, h = selective_scan_chunked(**x, chunk_size=chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)


def test_options_off():
    x = random_scan_inputs(L=20)
    for drop in ("D", "z", "delta_bias"):
        args = dict(x, **{drop: None})
        torch.testing.assert_close(selective_scan_chunked(**args)[0], selective_scan_naive(**args)[0])
    args = dict(x, delta_softplus=False)
    args["delta"] = args["delta"].abs()
    torch.testing.assert_close(selective_scan_chunked(**args)[0], selective_scan_naive(**args)[0])


def test_recurrence_by_hand():
    """One channel, one state, two steps, every number written out."""
    u = torch.tensor([[[2.0], [3.0]]], dtype=torch.float64)
    delta = torch.tensor([[[0.5], [0.25]]], dtype=torch.float64)
    A = torch.tensor([[-2.0]], dtype=torch.float64)
    B = torch.tensor([[[1.5], [-1.0]]], dtype=torch.float64)
    C = torch.tensor([[[2.0], [4.0]]], dtype=torch.float64)
    D = torch.tensor([0.5], dtype=torch.float64)
    y, h = selective_scan_chunked(u, delta, A, B, C, D, delta_softplus=False)
    h1 = 0.5 * 2.0 * 1.5                                   # exp(.)*0 + delta*u*B
    h2 = torch.exp(torch.tensor(0.25 * -2.0)).item() * h1 + 0.25 * 3.0 * -1.0
    expected = torch.tensor([[[h1 * 2.0 + 0.5 * 2.0], [h2 * 4.0 + 0.5 * 3.0]]], dtype=torch.float64)
    torch.testing.assert_close(y, expected)
    assert h.item() == pytest.approx(h2)


def test_minus_inf_delta_is_exact_noop():
    """Padding rule: delta = -inf before softplus leaves the state untouched at that step."""
    x = random_scan_inputs(batch=1, L=12)
    masked = dict(x)
    masked["delta"] = x["delta"].clone()
    masked["delta"][:, 5:8] = float("-inf")
    kept = [i for i in range(12) if not 5 <= i < 8]
    short = {k: (v[:, kept] if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items()}
    y_m, h_m = selective_scan_chunked(**masked)
    y_s, h_s = selective_scan_naive(**short)
    torch.testing.assert_close(y_m[:, kept], y_s)
    torch.testing.assert_close(h_m, h_s)


def test_step_matches_naive():
    x = random_scan_inputs(L=6)
    state = torch.randn(2, 5, 4, dtype=torch.float64)
    y_ref, h_ref = selective_scan_naive(**x, initial_state=state.clone())
    ys = []
    for t in range(6):
        ys.append(selective_state_step(state, x["u"][:, t], x["delta"][:, t], torch.log(-x["A"]), x["B"][:, t], x["C"][:, t],
                                       x["D"], x["z"][:, t], x["delta_bias"]))
    torch.testing.assert_close(torch.stack(ys, 1), y_ref)
    torch.testing.assert_close(state, h_ref)


def test_gradients_match_naive():
    x = random_scan_inputs(L=23)
    h0 = torch.randn(2, 5, 4, dtype=torch.float64)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    h0a = h0.clone().requires_grad_()
    y, h = selective_scan_chunked(**leaves, initial_state=h0a)
    (y.sin().sum() + h.cos().sum()).backward()
    leaves_ref = {k: v.clone().requires_grad_() for k, v in x.items()}
    h0b = h0.clone().requires_grad_()
    y2, h2 = selective_scan_naive(**leaves_ref, initial_state=h0b)
    (y2.sin().sum() + h2.cos().sum()).backward()
    for k in x:
        torch.testing.assert_close(leaves[k].grad, leaves_ref[k].grad, msg=k)
    torch.testing.assert_close(h0a.grad, h0b.grad)


def test_low_precision_inputs_keep_fp32_state():
    x = {k: v.to(torch.bfloat16) for k, v in random_scan_inputs(L=30).items()}
    x["A"], x["D"], x["delta_bias"] = x["A"].float(), x["D"].float(), x["delta_bias"].float()
    y, h = selective_scan_chunked(**x)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    y64, _ = selective_scan_naive(**{k: v.double() for k, v in x.items()})
    assert (y.double() - y64).norm() / y64.norm() < 1e-2
