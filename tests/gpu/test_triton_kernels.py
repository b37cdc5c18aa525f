"""The Triton kernels against the float64 oracles, run by Triton's CPU interpreter (skipped without triton).

Sizes are tiny (the interpreter runs every program in numpy) but every path is crossed: several chunks and a
ragged last one, several channel blocks with a ragged last one, the optional inputs on and off, padding
(delta = -inf) as an exact no-op, the initial and final states, every gradient, the in-place decode steps."""

import pytest
import torch

pytest.importorskip("triton")

from hymba.ops.conv import causal_conv1d_ref, causal_conv1d_step_ref  # noqa: E402
from hymba.ops.conv import triton_conv  # noqa: E402
from hymba.ops.scan import selective_scan_naive, selective_state_step  # noqa: E402
from hymba.ops.scan import triton_scan  # noqa: E402


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch):
    monkeypatch.setattr(triton_scan, "CHUNK", 8)
    monkeypatch.setitem(triton_scan.FWD_CONFIG, "BD", 16)
    monkeypatch.setitem(triton_scan.FWD_CONFIG, "PF", 4)
    monkeypatch.setitem(triton_scan.FWD_CONFIG, "PB", 2)
    monkeypatch.setitem(triton_scan.BWD_CONFIG, "BD", 16)
    monkeypatch.setattr(triton_conv, "BL", 8)
    monkeypatch.setattr(triton_conv, "BD", 16)


def _scan_inputs(batch=2, L=19, d=20, N=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(u=r(batch, L, d), delta=r(batch, L, d) - 1, A=-torch.rand(d, N, generator=g) * 2 - 0.1,
                B=r(batch, L, N), C=r(batch, L, N), D=r(d), z=r(batch, L, d), delta_bias=r(d) * 0.5,
                initial_state=r(batch, d, N))


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("S", [1, 2])  # lanes per channel in the forward
@pytest.mark.parametrize("opts", [dict(), dict(z=None, D=None, delta_bias=None, initial_state=None)])
def test_scan_forward_matches_naive(opts, S, monkeypatch):
    monkeypatch.setitem(triton_scan.FWD_CONFIG, "S", S)
    x = {**_scan_inputs(), **opts}
    y, final = triton_scan.selective_scan_triton(**x)
    y_ref, final_ref = selective_scan_naive(**{k: (v.double() if v is not None else None) for k, v in x.items()})
    assert _rel(y, y_ref) < 1e-5 and _rel(final, final_ref) < 1e-5


def test_scan_padding_is_an_exact_no_op():
    x = _scan_inputs(batch=1, L=12)
    x["delta"][0, 4:9] = float("-inf")
    y, final = triton_scan.selective_scan_triton(**x)
    keep = [0, 1, 2, 3, 9, 10, 11]
    short = {k: v[:, keep] if k in ("u", "delta", "B", "C", "z") else v for k, v in x.items()}
    y_short, final_short = triton_scan.selective_scan_triton(**short)
    assert torch.equal(final, final_short)
    assert torch.equal(y[:, keep], y_short)


# (N, BD channels a backward program, S lanes a channel): dB and dC by the reduce-scatter where 2N/S == BD
# (N=8 rows), else by separate sums; S=2 splits each channel's states over two lanes; an odd N runs on one.
@pytest.mark.parametrize("N, BD, S", [(4, 16, 1), (8, 16, 1), (4, 16, 2), (8, 8, 2), (3, 16, 2)])
def test_scan_gradients_match_naive(N, BD, S, monkeypatch):
    monkeypatch.setitem(triton_scan.BWD_CONFIG, "BD", BD)
    monkeypatch.setitem(triton_scan.BWD_CONFIG, "S", S)
    x = _scan_inputs(N=N)
    x["delta"][1, 3:6] = float("-inf")
    leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    y, final = triton_scan.selective_scan_triton(**leaves)
    gy, gf = torch.randn_like(y), torch.randn_like(final)
    ((y * gy).sum() + (final * gf).sum()).backward()
    ref = {k: v.double().requires_grad_(True) for k, v in x.items()}
    y_ref, final_ref = selective_scan_naive(**ref)
    ((y_ref * gy.double()).sum() + (final_ref * gf.double()).sum()).backward()
    for k in x:
        assert _rel(leaves[k].grad, ref[k].grad) < 1e-5, k


@pytest.mark.parametrize("segments, opts", [(3, dict()), (5, dict(z=None, D=None, delta_bias=None, initial_state=None))])
def test_scan_in_time_segments(segments, opts):
    """The forward's and the backward's time segments side by side (forced: the CPU has no SMs to fill), each
    entered with the state / adjoint that the state / adjoint pass and the stitching hand it: the outputs,
    checkpoints and gradients of one pass, and float64's. 37 steps in chunks of 8 are 5 chunks: segments of
    2 (+ a ragged last one) or 1 chunk; padding inside. (Slow under the interpreter: two cases.)"""
    x = {**_scan_inputs(L=37, N=8), **opts}
    x["delta"][1, 3:6] = float("-inf")
    given = [k for k, v in x.items() if v is not None]
    leaves = {k: x[k].clone().requires_grad_(True) for k in given}
    with triton_scan.forced_configs(fwd_segments=segments, bwd_segments=segments):
        y, final = triton_scan.selective_scan_triton(**{**x, **leaves})
        gy, gf = torch.randn_like(y), torch.randn_like(final)
        ((y * gy).sum() + (final * gf).sum()).backward()
    assert triton_scan.FWD_SEGMENTS is None and triton_scan.BWD_SEGMENTS is None  # restored
    ref = {k: x[k].double().requires_grad_(True) for k in given}
    y_ref, final_ref = selective_scan_naive(**{**x, **ref})
    ((y_ref * gy.double()).sum() + (final_ref * gf.double()).sum()).backward()
    assert _rel(y, y_ref) < 1e-5 and _rel(final, final_ref) < 1e-5
    for k in given:
        assert _rel(leaves[k].grad, ref[k].grad) < 1e-5, k
    _, _, ckpt = triton_scan.scan_fwd(**x, save_states=True)
    for a, b in zip(triton_scan.scan_fwd(**x, save_states=True, segments=segments), (y, final, ckpt)):
        assert _rel(a, b) < 1e-6
    args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    one = triton_scan.scan_bwd(*args, True, ckpt, gy, gf, segments=1)
    split = triton_scan.scan_bwd(*args, True, ckpt, gy, None if opts else gf, segments=segments)
    if opts:  # without the final state's gradient: the last segment starts from a zero adjoint
        one = triton_scan.scan_bwd(*args, True, ckpt, gy, None, segments=1)
    for a, b in zip(split, one):
        if b is not None:
            assert _rel(a, b) < 1e-6


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_first", [True, False])
def test_stitch_chains_the_segments_like_the_recurrence(reverse, with_first):
    """The stitching kernel against the recurrence over segments written out in float64: out[k + 1] =
    exp2(a2 dt_sum[k]) out[k] + loc[k] (states), out[k] = loc[k] + exp2(a2 dt_sum[k]) out[k + 1] (adjoints)."""
    g = torch.Generator().manual_seed(3)
    nseg, batch, d, N = 4, 2, 37, 4  # 296 elements: a ragged block
    loc = torch.randn(nseg - 1, batch, d, N, generator=g)
    dt_sum = torch.rand(nseg - 1, batch, d, generator=g) * 3
    a2 = -torch.rand(d, N, generator=g) * 2
    first = torch.randn(batch, d, N, generator=g) if with_first else None
    out = triton_scan._stitch(first, loc, dt_sum, a2, reverse)
    want = [first.double() if with_first else torch.zeros(batch, d, N, dtype=torch.float64)]
    for k in (range(nseg - 2, -1, -1) if reverse else range(nseg - 1)):
        want.append(torch.exp2(dt_sum[k, ..., None].double() * a2.double()) * want[-1] + loc[k].double())
    torch.testing.assert_close(out.double(), torch.stack(want[::-1] if reverse else want), rtol=1e-6, atol=1e-6)


def test_forward_segments_fill_the_sms(monkeypatch):
    dev, cfg = torch.device("cuda", 0), dict(BD=16, S=2, num_warps=1)
    monkeypatch.setattr(triton_scan, "sm_count", lambda device: 132)
    assert triton_scan._fwd_segments(1, 3200, 520, dev, cfg) == 10  # 200 programs, 16 an SM in all
    assert triton_scan._fwd_segments(2, 3200, 520, dev, cfg) == 5
    assert triton_scan._fwd_segments(1, 3200, 136, dev, cfg) == 4  # segments of at least 32 chunks
    assert triton_scan._fwd_segments(1, 3200, 100, dev, cfg) == 1  # 3 segments: slower than one pass
    assert triton_scan._fwd_segments(4, 3200, 136, dev, cfg) == 1
    assert triton_scan._fwd_segments(6, 3200, 136, dev, cfg) == 1
    assert triton_scan._fwd_segments(1, 3200, 520, torch.device("cpu"), cfg) == 1
    with triton_scan.forced_configs(fwd_segments=7):
        assert triton_scan._fwd_segments(6, 3200, 3, dev, cfg) == 3  # never more segments than chunks
    assert triton_scan.FWD_SEGMENTS is None


def test_backward_segments_fill_the_sms(monkeypatch):
    dev, cfg = torch.device("cuda", 0), dict(BD=16, S=2, num_warps=1)
    monkeypatch.setattr(triton_scan, "sm_count", lambda device: 132)
    assert triton_scan._bwd_segments(4, 3200, 136, dev, cfg) == 2  # 800 programs; 16 fit on an SM
    assert triton_scan._bwd_segments(6, 3200, 136, dev, cfg) == 1  # 1,200: two segments would not fit
    assert triton_scan._bwd_segments(1, 3200, 520, dev, cfg) == 10
    assert triton_scan._bwd_segments(1, 3200, 136, dev, cfg) == 4  # segments of at least 32 chunks
    assert triton_scan._bwd_segments(1, 3200, 40, dev, cfg) == 1
    assert triton_scan._bwd_segments(1, 3200, 520, torch.device("cpu"), cfg) == 1
    with triton_scan.forced_configs(bwd_segments=4):
        assert triton_scan._bwd_segments(6, 3200, 136, torch.device("cpu"), cfg) == 4
        assert triton_scan._bwd_segments(6, 3200, 3, dev, cfg) == 3  # never more segments than chunks


def test_scan_bf16_packed_inputs_forward_and_gradients():
    """bf16 activations (B and C read as packed int64 words, four values per load) against float64 on the
    same rounded values: only the rounding of the bf16 outputs remains (fp32 parameters stay exact)."""
    x = _scan_inputs(N=8)
    x = {k: v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v for k, v in x.items()}
    assert triton_scan._packed_bc(x["B"], x["C"], 8)[2]
    leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    y, final = triton_scan.selective_scan_triton(**leaves)
    gy, gf = torch.randn_like(y), torch.randn_like(final)  # gy in bf16: what autograd hands the backward
    ((y.float() * gy.float()).sum() + (final * gf).sum()).backward()
    ref = {k: v.double().requires_grad_(True) for k, v in x.items()}
    y_ref, final_ref = selective_scan_naive(**ref)
    ((y_ref * gy.double()).sum() + (final_ref * gf.double()).sum()).backward()
    assert _rel(y, y_ref) < 1e-2 and _rel(final, final_ref) < 1e-5
    for k in x:
        assert _rel(leaves[k].grad, ref[k].grad) < (1e-2 if x[k].dtype == torch.bfloat16 else 1e-5), k


def test_scan_without_grad_saves_nothing_and_backward_refuses_if_needed():
    x = _scan_inputs(L=9)
    with torch.no_grad():
        y, _ = triton_scan.selective_scan_triton(**x)
    y2, _, ckpt = triton_scan.scan_fwd(**x, save_states=False)
    assert ckpt is None and torch.equal(y, y2)
    _, _, ckpt = triton_scan.scan_fwd(**x, save_states=True)
    assert ckpt.shape == (2, 2, 4, 20)  # 9 steps in chunks of 8; the state at the start of each
    torch.testing.assert_close(ckpt[:, 0], x["initial_state"].transpose(1, 2))


def test_scan_rejects_bad_shapes():
    x = _scan_inputs()
    with pytest.raises(ValueError, match="B must have shape"):
        triton_scan.selective_scan_triton(**{**x, "B": x["B"][:, :, :3]})
    with pytest.raises(ValueError, match="A must be"):
        triton_scan.selective_scan_triton(**{**x, "A": x["A"].t()})


def test_ssm_step_updates_state_in_place():
    x = _scan_inputs(batch=3, L=1, d=20, N=4)
    step = {k: (v[:, 0] if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items() if k != "initial_state"}
    s1, s2 = x["initial_state"].clone(), x["initial_state"].clone()
    y1 = triton_scan.ssm_step_triton(s1, **step)
    y2 = selective_state_step(s2, **step)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="float32"):
        triton_scan.ssm_step_triton(s1.double(), **step)


@pytest.mark.parametrize("L,with_state,with_bias", [(21, True, True), (2, True, False), (17, False, True)])
def test_conv_forward_and_gradients(L, with_state, with_bias):
    g = torch.Generator().manual_seed(L)
    B, d, K = 2, 20, 4
    x = torch.randn(B, L, d, generator=g)
    w = torch.randn(d, K, generator=g)
    b = torch.randn(d, generator=g) if with_bias else None
    s0 = torch.randn(B, K - 1, d, generator=g) if with_state else None
    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in (x, w, b, s0)]
    y, fs = triton_conv.causal_conv1d_triton(*leaves, "silu")
    ref = [t.double().requires_grad_(True) if t is not None else None for t in (x, w, b, s0)]
    y_ref, fs_ref = causal_conv1d_ref(*ref, "silu")
    assert _rel(y, y_ref) < 1e-6 and torch.equal(fs.double(), fs_ref)
    gy, gf = torch.randn_like(y), torch.randn_like(fs)
    ((y * gy).sum() + (fs * gf).sum()).backward()
    ((y_ref * gy.double()).sum() + (fs_ref * gf.double()).sum()).backward()
    for a, r in zip(leaves, ref):
        if a is not None:
            assert _rel(a.grad, r.grad) < 1e-6


def test_conv_step_updates_state_in_place():
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(3, 40, generator=g), torch.randn(40, 4, generator=g), torch.randn(40, generator=g)
    s1 = torch.randn(3, 3, 40, generator=g)
    s2 = s1.clone()
    torch.testing.assert_close(triton_conv.conv_step_triton(x, s1, w, b), causal_conv1d_step_ref(x, s2, w, b))
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)


def test_segmented_scan_on_the_kernels(monkeypatch):
    """Few rows run as time segments side by side (forced here: the CPU has no SMs to fill), for inference and
    for training: same outputs, final state and gradients as the sequential kernel, padding inside and a
    ragged last segment included."""
    x = _scan_inputs(batch=1, L=23)
    x["delta"][0, 3:6] = float("-inf")
    want_y, want_h = selective_scan_naive(**{k: v.double() for k, v in x.items()})
    calls = []
    original = triton_scan.segmented_scan
    monkeypatch.setattr(triton_scan, "segmented_scan", lambda *a, **k: calls.append(k["segments"]) or original(*a, **k))
    monkeypatch.setattr(triton_scan, "SEGMENTS", 4)
    with torch.no_grad():
        y, h = triton_scan.selective_scan_triton(**x)
    assert calls == [4]
    assert _rel(y, want_y) < 1e-5 and _rel(h, want_h) < 1e-5

    wy, wh = torch.randn_like(y), torch.randn_like(h)
    grads = {}
    for segments in (1, 4):
        monkeypatch.setattr(triton_scan, "SEGMENTS", segments)
        leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
        y, h = triton_scan.selective_scan_triton(**leaves)
        assert _rel(y, want_y) < 1e-5 and _rel(h, want_h) < 1e-5
        ((y * wy).sum() + (h * wh).sum()).backward()
        grads[segments] = {k: v.grad for k, v in leaves.items()}
    assert calls == [4, 4]
    for k in x:
        assert _rel(grads[4][k], grads[1][k]) < 1e-5, k


def test_segments_are_chosen_only_for_underfilled_gpus(monkeypatch):
    dev = torch.device("cuda", 0)
    monkeypatch.setattr(triton_scan, "sm_count", lambda device: 132)
    monkeypatch.setitem(triton_scan.FWD_CONFIG, "BD", 32)
    assert triton_scan._segments(1, 8320, 3200, dev) == 1  # off by default: the kernels segment time themselves
    monkeypatch.setitem(triton_scan.SEGMENT_PROGRAMS_PER_SM, "inference", 8)
    assert triton_scan._segments(1, 8320, 3200, dev) == 10  # the best count measured (H100) when it was on
    monkeypatch.setitem(triton_scan.SEGMENT_PROGRAMS_PER_SM, "inference", 6)
    # 100 programs of 32 channels, 6 per SM wanted: up to 7 segments, and 5 is the most that divides 8320
    assert triton_scan._segments(1, 8320, 3200, dev) == 5
    assert triton_scan._segments(1, 8316, 3200, dev) == 7  # 7 divides 8316
    assert triton_scan._segments(1, 8321, 3200, dev) == 7  # no divisor above 3: padded
    assert triton_scan._segments(1, 700, 3200, dev) == 1  # too short to split
    assert triton_scan._segments(2, 8320, 3200, dev) == 1  # 200 programs: more than the SMs already
    assert triton_scan._segments(8, 8320, 3200, dev) == 1  # 800 programs already
    assert triton_scan._segments(1, 8320, 3200, torch.device("cpu")) == 1
    assert triton_scan._segments(1, 8320, 3200, dev, training=True) == 1  # off for training (measured slower)
    monkeypatch.setitem(triton_scan.SEGMENT_PROGRAMS_PER_SM, "training", 12)
    assert triton_scan._segments(1, 2176, 3200, dev, training=True) == 4
    assert triton_scan._segments(4, 2176, 3200, dev, training=True) == 1
    with triton_scan.forced_segments(3):  # the override the benchmarks use, restored after the block
        assert triton_scan._segments(8, 8320, 3200, dev) == 3
    assert triton_scan.SEGMENTS is None and triton_scan._segments(8, 8320, 3200, dev) == 1


def test_forward_splits_states_only_for_few_rows(monkeypatch):
    dev = torch.device("cuda", 0)
    monkeypatch.setattr(triton_scan, "sm_count", lambda device: 132)
    monkeypatch.setitem(triton_scan.FWD_CONFIG, "BD", 32)
    # a training step's 4 x 3200 channels are 400 one-lane warps, under 4 per SM: two lanes per channel
    assert triton_scan._forward_split(4, 3200, dev) == dict(BD=16, S=2)
    assert triton_scan._forward_split(8, 3200, dev) == {}  # 800 warps: one lane per channel measured faster
    assert triton_scan._forward_split(1, 3200, torch.device("cpu")) == {}
    with triton_scan.forced_configs(split_below=0):  # the checks' way to force one lane, restored after
        assert triton_scan._forward_split(1, 3200, dev) == {}
    assert triton_scan.FWD_SPLIT_BELOW == 4 and triton_scan._forward_split(1, 3200, dev) == dict(BD=16, S=2)
    monkeypatch.setitem(triton_scan.FWD_CONFIG, "S", 2)  # a configuration that already splits is left alone
    assert triton_scan._forward_split(1, 3200, dev) == {}
