"""The Triton kernels against the float64 oracles, run by Triton's CPU interpreter (skipped without triton).

Sizes are tiny (the interpreter runs every program in numpy) but every path is crossed: several chunks and a
ragged last one, several channel blocks with a ragged last one, the optional inputs on and off, padding
(delta = -inf) as an exact no-op, the initial and final states, every gradient, the in-place decode steps."""

import pytest
import torch

pytest.importorskip("triton")

from hymba.ops.conv import (  # noqa: E402
    causal_conv1d_ref,
    causal_conv1d_step_ref,
    triton_conv,  # noqa: E402
)
from hymba.ops.scan import selective_scan_naive, selective_state_step  # noqa: E402
from hymba.ops.scan.triton import launch, scan_bwd, scan_fwd, selective_scan_triton, ssm_step_triton  # noqa: E402
from hymba.ops.scan.triton.common import _packed_bc  # noqa: E402
from hymba.ops.scan.triton.segments import _stitch  # noqa: E402

# Small tiles, so that 20 channels make two forward and two backward programs, the ragged one included.
FWD = dict(BD=16, PF=4, PB=2)
BWD = dict(BD=16)


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch):
    # The checkpoint interval is shared by the forward, the backward and the op's fake: a module constant with
    # no parameter. Short chunks put several of them (and a ragged last one) into these short sequences.
    monkeypatch.setattr(launch, "CHUNK", 8)
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


ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
GRADS = ARGS + ("initial_state",)  # scan_bwd's gradients, in order


def _kernel_grads(x, gy, gf, fwd=FWD, bwd=BWD, segments=None):
    """The forward (saving its checkpoints) and the backward launched directly with the given configurations and
    time segments, as the autograd op runs them: (y, final state, {input: gradient} for the inputs given)."""
    y, final, ckpt = scan_fwd(**x, save_states=True, config=fwd, segments=segments)
    grads = scan_bwd(*(x.get(k) for k in ARGS), True, ckpt, gy, gf, config=bwd, segments=segments)
    return y, final, {k: g for k, g in zip(GRADS, grads) if x.get(k) is not None}


def _naive_grads(x, gy, gf):
    """The same in float64 through autograd over the naive recurrence."""
    ref = {k: v.double().requires_grad_(True) for k, v in x.items() if v is not None}
    y, final = selective_scan_naive(**ref)
    ((y * gy.double()).sum() + (final * gf.double()).sum()).backward()
    return y, final, {k: v.grad for k, v in ref.items()}


@pytest.mark.parametrize("S", [1, 2])  # lanes per channel in the forward
@pytest.mark.parametrize("opts", [dict(), dict(z=None, D=None, delta_bias=None, initial_state=None)])
def test_scan_forward_matches_naive(opts, S):
    x = {**_scan_inputs(), **opts}
    y, final, _ = scan_fwd(**x, config=dict(FWD, S=S))
    y_ref, final_ref = selective_scan_naive(**{k: (v.double() if v is not None else None) for k, v in x.items()})
    assert _rel(y, y_ref) < 1e-5 and _rel(final, final_ref) < 1e-5


def test_scan_padding_is_an_exact_no_op():
    x = _scan_inputs(batch=1, L=12)
    x["delta"][0, 4:9] = float("-inf")
    y, final, _ = scan_fwd(**x, config=FWD)
    keep = [0, 1, 2, 3, 9, 10, 11]
    short = {k: v[:, keep] if k in ("u", "delta", "B", "C", "z") else v for k, v in x.items()}
    y_short, final_short, _ = scan_fwd(**short, config=FWD)
    assert torch.equal(final, final_short)
    assert torch.equal(y[:, keep], y_short)


# (N, BD channels a backward program, S lanes a channel): dB and dC by the reduce-scatter where 2N/S == BD
# (N=8 rows), else by separate sums; S=2 splits each channel's states over two lanes; an odd N runs on one.
@pytest.mark.parametrize("N, BD, S", [(4, 16, 1), (8, 16, 1), (4, 16, 2), (8, 8, 2), (3, 16, 2)])
def test_scan_gradients_match_naive(N, BD, S):
    x = _scan_inputs(N=N)
    x["delta"][1, 3:6] = float("-inf")
    gy, gf = torch.randn(2, 19, 20), torch.randn(2, 20, N)
    _, _, grads = _kernel_grads(x, gy, gf, bwd=dict(BD=BD, S=S))
    _, _, want = _naive_grads(x, gy, gf)
    for k in x:
        assert _rel(grads[k], want[k]) < 1e-5, k


def test_autograd_runs_the_kernels():
    """selective_scan_triton's backward (the custom ops' autograd) hands each input the gradient that scan_bwd
    gives for the forward's checkpoints, with the default launch configurations; and they match float64."""
    x = _scan_inputs()
    leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    y, final = selective_scan_triton(**leaves)
    gy, gf = torch.randn_like(y), torch.randn_like(final)
    ((y * gy).sum() + (final * gf).sum()).backward()
    _, _, grads = _kernel_grads(x, gy, gf, fwd=None, bwd=None)
    _, _, want = _naive_grads(x, gy, gf)
    for k in x:
        assert torch.equal(leaves[k].grad, grads[k]), k
        assert _rel(leaves[k].grad, want[k]) < 1e-5, k


@pytest.mark.parametrize("segments, opts", [(3, dict()), (5, dict(z=None, D=None, delta_bias=None, initial_state=None))])
def test_scan_in_time_segments(segments, opts):
    """The forward's and the backward's time segments side by side (forced: the CPU has no SMs to fill), each
    entered with the state / adjoint that the state / adjoint pass and the stitching hand it: the outputs,
    checkpoints and gradients of one pass, and float64's. 37 steps in chunks of 8 are 5 chunks: segments of
    2 (+ a ragged last one) or 1 chunk; padding inside. (Slow under the interpreter: two cases.)"""
    x = {**_scan_inputs(L=37, N=8), **opts}
    x["delta"][1, 3:6] = float("-inf")
    gy, gf = torch.randn(2, 37, 20), torch.randn(2, 20, 8)
    y, final, grads = _kernel_grads(x, gy, gf, segments=segments)
    y_ref, final_ref, want = _naive_grads(x, gy, gf)
    assert _rel(y, y_ref) < 1e-5 and _rel(final, final_ref) < 1e-5
    for k in grads:
        assert _rel(grads[k], want[k]) < 1e-5, k
    _, _, ckpt = scan_fwd(**x, save_states=True, config=FWD, segments=1)
    for a, b in zip(scan_fwd(**x, save_states=True, config=FWD, segments=segments), (y, final, ckpt)):
        assert _rel(a, b) < 1e-6
    args = [x[k] for k in ARGS]
    one = scan_bwd(*args, True, ckpt, gy, gf, config=BWD, segments=1)
    split = scan_bwd(*args, True, ckpt, gy, None if opts else gf, config=BWD, segments=segments)
    if opts:  # without the final state's gradient: the last segment starts from a zero adjoint
        one = scan_bwd(*args, True, ckpt, gy, None, config=BWD, segments=1)
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
    out = _stitch(first, loc, dt_sum, a2, reverse)
    want = [first.double() if with_first else torch.zeros(batch, d, N, dtype=torch.float64)]
    for k in (range(nseg - 2, -1, -1) if reverse else range(nseg - 1)):
        want.append(torch.exp2(dt_sum[k, ..., None].double() * a2.double()) * want[-1] + loc[k].double())
    torch.testing.assert_close(out.double(), torch.stack(want[::-1] if reverse else want), rtol=1e-6, atol=1e-6)


def test_forward_segments_fill_the_sms(monkeypatch):
    dev, cfg = torch.device("cuda", 0), dict(BD=16, S=2, num_warps=1)
    monkeypatch.setattr(launch, "sm_count", lambda device: 132)  # an H100, without one
    assert launch._fwd_segments(1, 3200, 520, dev, cfg) == 10  # 200 programs, 16 an SM in all
    assert launch._fwd_segments(2, 3200, 520, dev, cfg) == 5
    assert launch._fwd_segments(1, 3200, 136, dev, cfg) == 4  # segments of at least 32 chunks
    assert launch._fwd_segments(1, 3200, 100, dev, cfg) == 1  # 3 segments: slower than one pass
    assert launch._fwd_segments(4, 3200, 136, dev, cfg) == 1
    assert launch._fwd_segments(6, 3200, 136, dev, cfg) == 1
    assert launch._fwd_segments(1, 3200, 520, torch.device("cpu"), cfg) == 1


def test_backward_segments_fill_the_sms(monkeypatch):
    dev, cfg = torch.device("cuda", 0), dict(BD=16, S=2, num_warps=1)
    monkeypatch.setattr(launch, "sm_count", lambda device: 132)
    assert launch._bwd_segments(4, 3200, 136, dev, cfg) == 2  # 800 programs; 16 fit on an SM
    assert launch._bwd_segments(6, 3200, 136, dev, cfg) == 1  # 1,200: two segments would not fit
    assert launch._bwd_segments(1, 3200, 520, dev, cfg) == 10
    assert launch._bwd_segments(1, 3200, 136, dev, cfg) == 4  # segments of at least 32 chunks
    assert launch._bwd_segments(1, 3200, 40, dev, cfg) == 1
    assert launch._bwd_segments(1, 3200, 520, torch.device("cpu"), cfg) == 1


def test_segment_layout_never_has_empty_segments():
    """What scan_fwd / scan_bwd make of a segment count (the heuristic's or the caller's): (chunks a segment,
    segments), never more segments than chunks, the last one ragged."""
    assert launch._segment_layout(136, 4) == (34, 4)
    assert launch._segment_layout(5, 3) == (2, 3)  # 2 + 2 + 1 chunks
    assert launch._segment_layout(3, 7) == (1, 3)  # never more segments than chunks
    assert launch._segment_layout(3, 0) == (3, 1)


def test_scan_bf16_packed_inputs_forward_and_gradients():
    """bf16 activations (B and C read as packed int64 words, four values per load) against float64 on the
    same rounded values: only the rounding of the bf16 outputs remains (fp32 parameters stay exact)."""
    x = _scan_inputs(N=8)
    x = {k: v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v for k, v in x.items()}
    assert _packed_bc(x["B"], x["C"], 8)[2]
    leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    y, final = selective_scan_triton(**leaves)
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
        y, _ = selective_scan_triton(**x)
    y2, _, ckpt = scan_fwd(**x, save_states=False)
    assert ckpt is None and torch.equal(y, y2)
    _, _, ckpt = scan_fwd(**x, save_states=True)
    assert ckpt.shape == (2, 2, 4, 20)  # 9 steps in chunks of 8; the state at the start of each
    torch.testing.assert_close(ckpt[:, 0], x["initial_state"].transpose(1, 2))


def test_scan_rejects_bad_shapes():
    x = _scan_inputs()
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan_triton(**{**x, "B": x["B"][:, :, :3]})
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_triton(**{**x, "A": x["A"].t()})


def test_ssm_step_updates_state_in_place():
    x = _scan_inputs(batch=3, L=1, d=20, N=4)
    step = {k: (v[:, 0] if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items() if k != "initial_state"}
    step["A_log"] = torch.log(-step.pop("A"))  # the step takes the stored parameter
    s1, s2 = x["initial_state"].clone(), x["initial_state"].clone()
    y1 = ssm_step_triton(s1, **step)
    y2 = selective_state_step(s2, **step)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="float32"):
        ssm_step_triton(s1.double(), **step)


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


def test_forward_splits_states_only_for_few_rows(monkeypatch):
    dev = torch.device("cuda", 0)
    monkeypatch.setattr(launch, "sm_count", lambda device: 132)
    assert launch.FWD_CONFIG["BD"] == 32 and launch.FWD_SPLIT_BELOW == 4  # the defaults these counts assume
    # a training step's 4 x 3200 channels are 400 one-lane warps, under 4 per SM: two lanes per channel
    assert launch._forward_split(4, 3200, dev) == dict(BD=16, S=2)
    assert launch._forward_split(8, 3200, dev) == {}  # 800 warps: one lane per channel measured faster
    assert launch._forward_split(1, 3200, torch.device("cpu")) == {}
    assert launch._forward_split(1, 3200, dev, below=0) == {}
    assert launch._forward_split(1, 3200, dev) == dict(BD=16, S=2)
    # a configuration that already splits is left alone
    assert launch._forward_split(1, 3200, dev, config=dict(launch.FWD_CONFIG, S=2)) == {}
