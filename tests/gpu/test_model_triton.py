"""The whole model on the Triton bundle (CPU interpreter) against the same model on the reference kernels:
logits, every parameter gradient, a padded batch, and cached decoding through the in-place step kernels."""

import pytest
import torch

pytest.importorskip("triton")

from helpers import randomized, small_config  # noqa: E402

from hymba import HymbaForCausalLM  # noqa: E402
from hymba.engine import new_cache  # noqa: E402
from hymba.ops.gpu import build_triton_kernels  # noqa: E402
from hymba.ops.scan.triton import launch  # noqa: E402


@pytest.fixture
def models(monkeypatch):
    # The model calls the scan through its kernel bundle, which takes no launch parameters: shorter chunks
    # (several in these short sequences) and prefetch depths set on the module for this test.
    monkeypatch.setattr(launch, "CHUNK", 8)
    monkeypatch.setitem(launch.FWD_CONFIG, "PF", 4)
    monkeypatch.setitem(launch.FWD_CONFIG, "PB", 2)
    torch.manual_seed(0)
    ref = randomized(HymbaForCausalLM(small_config(num_hidden_layers=3, global_attn_idx=[0],
                                                   kv_reuse_group=[[1, 2]])))
    fast = HymbaForCausalLM(ref.config)
    fast.load_state_dict(ref.state_dict())
    ref.set_kernels("reference")
    fast.set_kernels(build_triton_kernels(conv="triton", require_cuda=False))
    return ref, fast


def test_logits_and_gradients_match_reference(models):
    """Logits and every parameter gradient as close to the float64 reference as the float32 reference is."""
    from helpers import assert_gradients_as_accurate, assert_model_as_accurate, float64_copy

    ref, fast = models
    ids = torch.randint(0, ref.config.vocab_size, (2, 11))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    exact = float64_copy(ref)

    def run(m):
        return m(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    outs = [run(m) for m in (ref, fast, exact)]
    for out in outs:
        out.loss.backward()
    real = mask.bool()
    assert_model_as_accurate(outs[1].logits[real], outs[0].logits[real], ref, lambda m: run(m).logits[real],
                             msg="logits")
    assert_gradients_as_accurate(fast, ref, exact, lambda m: run(m).loss)


@torch.no_grad()
def test_cached_decoding_matches_reference(models, monkeypatch):
    """Decode steps of the fast bundle go through the Triton decode-attention kernel."""
    from helpers import assert_model_as_accurate

    from hymba.ops.attention import decode_triton

    calls = []
    original = decode_triton.decode_attention
    monkeypatch.setattr(decode_triton, "decode_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    ref, fast = models
    ids = torch.randint(0, ref.config.vocab_size, (2, 9))

    def decode(m):
        cache = new_cache(m, 2, 9)
        steps = [m(ids[:, :5], cache=cache).logits[:, -1]]
        steps += [m(ids[:, t:t + 1], cache=cache).logits[:, -1] for t in range(5, 9)]
        return torch.stack(steps, 1)
    assert_model_as_accurate(decode(fast), decode(ref), ref, decode)
    assert len(calls) == 6 * fast.config.num_hidden_layers  # meta prefix, prefill, 4 steps; every layer
