"""The CUDA-graph decode path's cache, checked on the CPU with the reference kernels: decode steps with
device-side indices over a ring of window + 1 slots give the logits of the plain forward, past the window
and after a padded prefill; reset() starts over in place."""

import pytest
import torch
from helpers import assert_model_as_accurate, randomized, small_config

from hymba import HymbaForCausalLM
from hymba.engine.cuda_graph import CUDAGraphDecoder, StaticHybridCache
from hymba.modeling.cache import CacheFullError


def _model():
    torch.manual_seed(0)
    return randomized(HymbaForCausalLM(small_config()).double().eval())


def _decode(model, cache, prompt, mask, steps_ids):
    out = [model(prompt, attention_mask=mask, cache=cache).logits[:, -1]]
    for t in range(steps_ids.shape[1]):
        out.append(model(steps_ids[:, t:t + 1], cache=cache).logits[:, -1])
    return torch.stack(out, 1)


@torch.no_grad()
def test_static_decode_matches_full_forward_past_the_window():
    model = _model()
    c = model.config
    B, P, S = 2, 3, 9  # 12 tokens with a window of 4: the ring wraps twice
    ids = torch.randint(0, c.vocab_size, (B, P + S))
    cache = StaticHybridCache(c, B, P + S, dtype=torch.float64)
    assert cache.ring == c.sliding_window + 1
    window_layer = next(i for i in cache.k if not c.is_global(i))
    assert cache.k[window_layer].shape[2] == c.num_memory_tokens + c.sliding_window + 1
    cache.fill_from_prefix(model.model.meta_prefix())
    cache.length_t.fill_(cache.length)
    got = _decode(model, cache, ids[:, :P], None, ids[:, P:])
    want = model(ids).logits[:, P - 1:]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)  # float64: rounding ~1e-14, far below 1e-9
    assert int(cache.length_t) == cache.length == c.num_memory_tokens + P + S
    with pytest.raises(CacheFullError):
        model(ids[:, :1], cache=cache)


@torch.no_grad()
def test_static_decode_after_left_padded_prefill_and_reset():
    model = _model()
    c = model.config
    ids = torch.randint(0, c.vocab_size, (2, 10))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, :2] = 0  # row 0: a 3-token prompt, left padded
    cache = StaticHybridCache(c, 2, 12, dtype=torch.float64)
    prefix = model.model.meta_prefix()
    cache.reset(prefix)
    for _ in range(2):  # the second round checks that reset() really empties the cache
        got = _decode(model, cache, ids[:, :5], mask, ids[:, 5:])
        for row, start in ((0, 2), (1, 0)):
            want = model(ids[row:row + 1, start:]).logits[0, 4 - start:]
            torch.testing.assert_close(got[row], want, rtol=1e-9, atol=1e-9)  # float64, as above
        cache.reset(prefix)
        assert cache.length == c.num_memory_tokens and int(cache.length_t) == cache.length


def test_graph_decoder_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU refusal")
    with pytest.raises(RuntimeError, match="CUDA"):
        CUDAGraphDecoder(_model(), batch_size=1, max_length=8)


@torch.no_grad()
def test_compiled_decode_step_matches_the_forward_and_compiles_once():
    """`StaticDecoder(compile=True)`: the step through torch.compile (inductor, here on the CPU) gives the
    full forward's logits step after step, past the window; the cache's bookkeeping stays out of the graphs,
    so the steps after the first reuse what was compiled (no recompilation as the cache fills)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from hymba.engine.cuda_graph import StaticDecoder

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    config = small_config(num_hidden_layers=3, global_attn_idx=[0], kv_reuse_group=[[1, 2]])
    model = randomized(HymbaForCausalLM(config)).eval()
    B, P, S = 2, 3, 8  # 11 tokens with a window of 4: the ring wraps
    ids = torch.randint(0, config.vocab_size, (B, P + S))
    dec = StaticDecoder(model, B, P + S, compile=True)
    got = [dec.prefill(ids[:, :P]).clone(), dec.step(ids[:, P]).clone()]
    compiled = (counters["frames"]["ok"], counters["stats"]["unique_graphs"])  # by the first step
    assert min(compiled) >= 1
    got += [dec.step(ids[:, t]).clone() for t in range(P + 1, P + S - 1)]
    assert (counters["frames"]["ok"], counters["stats"]["unique_graphs"]) == compiled
    assert_model_as_accurate(torch.stack(got, 1), model(ids).logits[:, P - 1:-1], model,
                             lambda m: m(ids).logits[:, P - 1:-1])


def test_compiled_step_refuses_modes_that_capture_their_own_graphs():
    """compile= takes True or a torch.compile mode that leaves CUDA graphs to the decoder; "reduce-overhead"
    would capture graphs inside the decoder's own capture, so it is refused by name."""
    from hymba.engine.cuda_graph import STEP_COMPILE_MODES, StaticDecoder

    model = HymbaForCausalLM(small_config(num_hidden_layers=1, global_attn_idx=[0], kv_reuse_group=[])).eval()
    for mode in ("reduce-overhead", "max-autotune", "fast"):
        with pytest.raises(ValueError, match=f"compile='{mode}'.*max-autotune-no-cudagraphs"):
            StaticDecoder(model, 1, 8, compile=mode)
    assert "max-autotune-no-cudagraphs" in STEP_COMPILE_MODES
    StaticDecoder(model, 1, 8, compile="max-autotune-no-cudagraphs")  # accepted (compiles at the first step)
