"""FlexAttention's mask_mod implements the position rule of `allowed_keys` exactly, for every way positions
arise (plain, padded, chunked prefill against a cache, a decode step against a ring), and the attention
wrappers compute what the SDPA reference computes (GQA, value heads twice as wide)."""

import pytest
import torch
from helpers import assert_as_accurate_as_reference
from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention

from hymba.ops.attention import allowed_keys, build_sdpa_mask, sdpa_attention
from hymba.ops.attention.flex import (
    AttentionMask,
    _is_plain,
    _plain_mask_mod,
    build_flex_mask,
    grouped_sdpa,
    positions_mask_mod,
)

M, W = 3, 4


def position_cases():
    plain = torch.arange(12)[None].expand(2, -1)
    left_pad = torch.tensor([[-1, -1, 0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
    holes = torch.tensor([[0, 1, -1, 2, 3, -1, -1, 4, 5, 6]])
    # a chunk of 3 queries at positions 9..11 against a cache of 12 keys (ring slots, one empty)
    chunk_q = torch.tensor([[9, 10, 11]])
    chunk_k = torch.tensor([[0, 1, 2, 8, 5, 6, 7, -1, 9, 10, 11, 4]])
    decode_q = torch.tensor([[20], [15]])
    decode_k = torch.tensor([[0, 1, 2, 17, 18, 19, 20, 16], [0, 1, 2, -1, 13, 14, 15, 12]])
    return [(plain, plain), (left_pad, left_pad), (holes, holes), (chunk_q, chunk_k), (decode_q, decode_k)]


@pytest.mark.parametrize("window", [None, W])
@pytest.mark.parametrize("case", range(5))
def test_mask_mod_is_allowed_keys(case, window):
    q_pos, k_pos = position_cases()[case]
    mod = positions_mask_mod(q_pos, k_pos, window, M)
    got = create_mask(mod, q_pos.shape[0], 1, q_pos.shape[1], k_pos.shape[1], device="cpu")[:, 0]
    want = allowed_keys(q_pos, k_pos, window, M)
    assert torch.equal(got[q_pos >= 0], want[q_pos >= 0])
    assert got[q_pos < 0].all()  # a padding query sees every key, like the SDPA reference's
    assert torch.equal(got, torch.isfinite(build_sdpa_mask(q_pos, k_pos, window, M)[:, 0]))
    # the hand-checked corner: window layers see the meta tokens plus exactly window + 1 keys
    if case == 0 and window is not None:
        assert want[0, 11].nonzero().squeeze(1).tolist() == [0, 1, 2, 7, 8, 9, 10, 11]


@pytest.mark.parametrize("window", [None, W])
def test_plain_mask_mod_matches_positions(window):
    pos = torch.arange(16)[None]
    plain = create_mask(_plain_mask_mod(window, M), 1, 1, 16, 16, device="cpu")[0, 0]
    assert torch.equal(plain, allowed_keys(pos, pos, window, M)[0])


def test_is_plain():
    pos = torch.arange(8)[None].expand(3, -1)
    assert _is_plain(pos, pos)
    assert not _is_plain(pos + 1, pos + 1)  # a cache continuation
    padded = pos.clone()
    padded[1, 0] = -1
    assert not _is_plain(padded, padded)
    assert not _is_plain(pos, torch.arange(9)[None].expand(3, -1))


def test_cpu_masks_are_the_reference():
    q_pos, k_pos = position_cases()[1]
    m = build_flex_mask(q_pos, k_pos, W, M, torch.float32)
    assert m.block_mask is None
    assert torch.equal(m.additive, build_sdpa_mask(q_pos, k_pos, W, M, torch.float32))


def _qkv(B, H, Hkv, Tq, Tk, dk, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, H, Tq, dk, generator=g, dtype=dtype)
    k = torch.randn(B, Hkv, Tk, dk, generator=g, dtype=dtype)
    v = torch.randn(B, Hkv, Tk, 2 * dk, generator=g, dtype=dtype)
    return q, k, v


def test_grouped_sdpa_folds_query_heads_exactly():
    q_pos, k_pos = position_cases()[4]
    q, k, v = _qkv(2, 6, 2, 1, 8, 4)
    mask = AttentionMask(additive=build_sdpa_mask(q_pos, k_pos, W, M, torch.float64))
    got = grouped_sdpa(q, k, v, mask, 0.5)
    want = sdpa_attention(q, k, v, mask.additive, 0.5)
    assert got.shape == (2, 6, 1, 8)
    # float64: sums of 4 and 8 terms of size ~1, rounding ~1e-15; far below 1e-12 (here and below)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # each query head really uses kv head h // G: recompute head 4 (kv head 1) by hand
    s = (q[:, 4, :1] @ k[:, 1].transpose(-1, -2)) * 0.5 + mask.additive[:, 0]  # [B, 1, Tk]
    torch.testing.assert_close(got[:, 4], s.softmax(-1) @ v[:, 1], rtol=1e-12, atol=1e-12)


def test_flex_block_mask_with_gqa_and_wide_values_matches_sdpa():
    """FlexAttention (eager, on the CPU) with our block mask: GQA and dv = 2 dk, padded rows included."""
    torch.nn.attention.flex_attention._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = True
    q_pos = k_pos = torch.tensor([[-1, -1, 0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
    q, k, v = _qkv(2, 4, 2, 10, 10, 8, dtype=torch.float32)
    bm = create_block_mask(positions_mask_mod(q_pos, k_pos, W, M), 2, None, 10, 10, device="cpu", BLOCK_SIZE=16)
    got = flex_attention(q, k, v, block_mask=bm, scale=0.3, enable_gqa=True)
    want, exact = (sdpa_attention(q.to(dt), k.to(dt), v.to(dt), build_sdpa_mask(q_pos, k_pos, W, M, dt), 0.3)
                   for dt in (torch.float32, torch.float64))
    assert_as_accurate_as_reference(got, want, exact)  # padding rows included


def test_compiled_regions_leave_the_eager_flex_wrapper_fused():
    """flex_attention traced inside a compiled region (compiled layers) and then called eagerly (generation
    after compiled training) must still run the compiled kernel: tracing through the compiled wrapper used
    to switch it to the unfused eager version for the rest of the process (10x slower training, the full
    score matrix in memory)."""
    import warnings

    from hymba.ops.attention import flex

    T = 128
    mask = AttentionMask(block_mask=create_block_mask(_plain_mask_mod(None, 0), None, None, T, T, device="cpu"))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, T, d, generator=g) for d in (16, 16, 32))
    layer = lambda q, k, v: flex.flex_attention(q, k, v, mask, 0.25)  # noqa: E731
    compiled_out = torch.compile(layer)(q, k, v)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eager_out = layer(q, k, v)
    assert not [w for w in caught if "without torch.compile" in str(w.message)]
    pos = torch.arange(T)[None]
    want, exact = (sdpa_attention(q.to(dt), k.to(dt), v.to(dt), build_sdpa_mask(pos, pos, None, 0, dt), 0.25)
                   for dt in (torch.float32, torch.float64))
    assert_as_accurate_as_reference(compiled_out, want, exact, msg="compiled")
    assert_as_accurate_as_reference(eager_out, want, exact, msg="eager")


def test_tuned_kernel_options_are_flex_attention_options():
    """Each tuned set names only options FlexAttention declares (after its fwd_/bwd_ prefixes), with blocks
    that tile its 128-token mask blocks; off CUDA and in fp32 no options are passed."""
    from torch.nn.attention.flex_attention import FlexKernelOptions

    from hymba.ops.attention import flex

    declared = set(FlexKernelOptions.__annotations__)
    for key, options in flex.FLEX_KERNEL_OPTIONS.items():
        assert {"fwd_", "bwd_"} == {name[:4] for name in options}, key
        assert {name[4:] for name in options} <= declared, key
        for name, value in options.items():
            if "BLOCK" in name:
                assert 128 % value == 0 and value >= 16, (key, name)
    q, v = torch.zeros(1, 2, 256, 64, dtype=torch.bfloat16), torch.zeros(1, 1, 256, 128, dtype=torch.bfloat16)
    assert flex.kernel_options(q, v) is None  # CPU
    assert flex.kernel_options(q.float(), v.float()) is None


def _chunk_against_cache(Tq: int, ring: int):
    """A prefill chunk of Tq queries after a few earlier tokens: keys = meta tokens, a ring with empty (-1)
    slots, the chunk itself; a padding query (-1) in the chunk."""
    start = 5
    q_pos = (M + start + torch.arange(Tq))[None]
    q_pos[0, 3] = -1
    ring_pos = torch.full((1, ring), -1)
    ring_pos[0, :start] = M + torch.arange(start)
    return q_pos, torch.cat([torch.arange(M)[None], ring_pos, q_pos], 1)


@pytest.mark.parametrize("window", [None, W])
def test_block_masks_cover_lengths_padded_to_whole_blocks(window):
    """FlexAttention gets lengths padded to multiples of 128: the added keys are invisible to every query
    (padding queries included), the added queries see nothing (positions mask) or only keys before them
    (plain mask), and on the real rows and columns the rule is `allowed_keys` exactly."""
    from hymba.ops.attention import flex

    q_pos, k_pos = _chunk_against_cache(150, 7)  # 150 queries, 160 keys -> 256 x 256
    bm = flex.flex_block_mask(q_pos, k_pos, window, M)
    assert bm.shape[-2:] == (256, 256)
    got = create_mask(bm.mask_mod, 1, 1, 256, 256, device="cpu")[0, 0]
    real_q, real_k = got[:150], got[:, :160]
    want = allowed_keys(q_pos, k_pos, window, M)[0]
    assert torch.equal(real_q[:, :160][q_pos[0] >= 0], want[q_pos[0] >= 0])
    assert real_q[3, :160].all()  # the padding query sees every key but the added ones
    assert not real_q[:, 160:].any()
    assert not got[150:].any() and not real_k[150:].any()

    plain = flex._plain_block_mask(150, window, M, "cpu")
    assert plain.shape[-2:] == (256, 256)
    assert flex._plain_block_mask(200, window, M, "cpu") is plain  # one mask per aligned length
    got = create_mask(plain.mask_mod, 1, 1, 256, 256, device="cpu")[0, 0]
    pos = torch.arange(150)[None]
    assert torch.equal(got[:150, :150], allowed_keys(pos, pos, window, M)[0])
    assert not got[:150, 150:].any()


def test_flex_attention_pads_to_whole_blocks_and_drops_the_padding(monkeypatch):
    """flex_attention (compiled, on the CPU) on a chunk against a cache whose lengths are not multiples of
    128: the output keeps the chunk's length and equals the SDPA reference, padding query included."""
    from hymba.ops.attention import flex

    q_pos, k_pos = _chunk_against_cache(150, 7)
    mask = AttentionMask(block_mask=flex.flex_block_mask(q_pos, k_pos, W, M))
    q, k, v = _qkv(1, 4, 2, 150, k_pos.shape[1], 8, dtype=torch.float32)
    got = flex.flex_attention(q, k, v, mask, 0.3)
    assert got.shape == (1, 4, 150, 16)
    want, exact = (sdpa_attention(q.to(dt), k.to(dt), v.to(dt), build_sdpa_mask(q_pos, k_pos, W, M, dt), 0.3)
                   for dt in (torch.float32, torch.float64))
    assert_as_accurate_as_reference(got, want, exact)
    with pytest.raises(ValueError, match="block mask covers 256 queries x 256 keys"):
        flex.flex_attention(q[:, :, :100], k, v, mask, 0.3)  # a mask made for other lengths
    # what CUDA runs: the padded inputs handed over as [B, H, n, 128, d] blocks (here eagerly: inductor's CPU
    # template takes 4-d inputs only)
    monkeypatch.setattr(torch.nn.attention.flex_attention, "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG", True)
    blocks = [torch.nn.functional.pad(t, (0, 0, 0, 256 - t.shape[2])).unflatten(2, (-1, 128)) for t in (q, k, v)]
    got = flex._blocked_flex(*blocks, mask.block_mask, 0.3, None)
    assert_as_accurate_as_reference(got[:, :, :150], want, exact, msg="blocked")
