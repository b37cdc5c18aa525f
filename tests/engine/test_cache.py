"""The hybrid cache: decoding equals the full forward, chunked prefill, padding, sizes, the meta prefix."""

import os

import pytest
import torch
from helpers import assert_model_as_accurate, randomized, small_config
from safetensors.torch import load_file

from hymba import HymbaConfig, HymbaForCausalLM
from hymba.engine import new_cache
from hymba.modeling.cache import CacheFullError, HybridCache, cache_bytes, paper_cache_bytes

CONFIGS = {
    "group-of-3": {},
    "groups-of-2": dict(num_hidden_layers=6, global_attn_idx=[0, 5], kv_reuse_group=[[1, 2], [3, 4]]),
    "no-meta": dict(num_memory_tokens=0),
    "all-window": dict(global_attn_idx=[]),
    "attention-only": dict(use_ssm=False, mamba_expand=1),
    "ssm-only": dict(use_attention=False, global_attn_idx=[], kv_reuse_group=[]),
    "qk-norm-untied": dict(kq_norm="rms", tie_word_embeddings=False, mamba_proj_bias=True),
}


def decode_logits(model, ids, prefill: int, chunk: int | None = None):
    """Logits at every position from prefilling `prefill` tokens (in chunks) and decoding the rest."""
    cache = new_cache(model, ids.shape[0], ids.shape[1])
    outs = []
    step = chunk or prefill
    for s in range(0, prefill, step):
        outs.append(model(ids[:, s:min(s + step, prefill)], cache=cache).logits)
    for t in range(prefill, ids.shape[1]):
        outs.append(model(ids[:, t:t + 1], cache=cache).logits)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_decode_steps_equal_the_full_forward(name):
    """In float64 the two paths agree to rounding; float32 agreement is checked on the golden model."""
    config = small_config(**CONFIGS[name])
    model = randomized(HymbaForCausalLM(config)).double().eval()
    T = 3 * (config.num_memory_tokens + config.sliding_window) + 8  # far past meta + window
    ids = torch.randint(0, 50, (2, T))
    with torch.no_grad():
        full = model(ids).logits
        # float64: rounding ~1e-14 over ~50 tokens (float32 runs show ~1e2 eps); 1e-10 is far below any real error
        torch.testing.assert_close(decode_logits(model, ids, prefill=5), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 3, 4, 7, 32])
def test_chunked_prefill_equals_one_shot(chunk):
    model = randomized(HymbaForCausalLM(small_config())).eval()
    ids = torch.randint(0, 50, (2, 30))
    with torch.no_grad():
        one_shot = decode_logits(model, ids, prefill=24)
        chunked = decode_logits(model, ids, prefill=24, chunk=chunk)
        full = model(ids).logits
    for name, got in (("chunked prefill", chunked), ("one-shot prefill", one_shot)):
        assert_model_as_accurate(got, full, model, lambda m: m(ids).logits, msg=name)


def test_left_padded_batch_decodes_each_row_as_alone():
    model = randomized(HymbaForCausalLM(small_config())).eval()
    lengths = [5, 13, 9]
    rows = [torch.randint(0, 50, (1, n)) for n in lengths]
    P, extra = max(lengths), 12
    ids = torch.zeros(3, P, dtype=torch.long)
    mask = torch.zeros(3, P, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, P - row.shape[1]:], mask[r, P - row.shape[1]:] = row, 1
    cont = torch.randint(0, 50, (3, extra))
    with torch.no_grad():
        cache = new_cache(model, 3, P + extra)
        got = [model(ids[:, :7], attention_mask=mask[:, :7], cache=cache).logits[:, -1:],  # chunked, too
               model(ids[:, 7:], attention_mask=mask[:, 7:], cache=cache).logits[:, -1:]]
        got = [got[1]]
        for t in range(extra - 1):
            got.append(model(cont[:, t:t + 1], cache=cache).logits)
        got = torch.cat(got, 1)
        for r, row in enumerate(rows):
            seq = torch.cat([row, cont[r:r + 1, :extra - 1]], 1)

            def alone(m):
                return m(seq).logits[0, row.shape[1] - 1:]
            assert_model_as_accurate(got[r], alone(model), model, alone, msg=f"row {r}")


def count_layer_runs(monkeypatch, model) -> list:
    """Spy on the model's layer stack: one entry per run (the meta prefix is one run over M tokens)."""
    runs, original = [], model.model.run_layers
    monkeypatch.setattr(model.model, "run_layers", lambda x, *a, **k: runs.append(x.shape[1]) or original(x, *a, **k))
    return runs


def test_meta_prefix_is_computed_once_per_weights(monkeypatch):
    model = HymbaForCausalLM(HymbaConfig.from_preset("tiny")).eval()
    runs = count_layer_runs(monkeypatch, model)
    for _ in range(3):
        new_cache(model, 2, 10)
    assert runs == [model.config.num_memory_tokens]
    with torch.no_grad():
        model.model.memory_tokens.add_(1.0)  # new weights: the prefix must follow
    new_cache(model, 1, 10)
    assert runs == [model.config.num_memory_tokens] * 2


def test_cache_holds_exactly_what_the_format_requires():
    config = small_config()  # layers 0, 4 global; group [1, 2, 3]: 1 makes K/V, 2 and 3 reuse it
    cache = HybridCache(config, batch_size=2, max_length=40)
    assert sorted(cache.k) == [0, 1, 4]
    assert cache.k[0].shape == (2, 1, 3 + 40, 8) and cache.v[0].shape == (2, 1, 3 + 40, 16)
    assert cache.k[1].shape == (2, 1, 3 + 4, 8)  # meta + ring of `sliding_window`
    assert len(cache.ssm_state) == 5 and cache.ssm_state[0].dtype == torch.float32
    assert cache.conv_state[0].shape == (2, 2, 32)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nbytes_equals_the_analytic_formula(name, dtype):
    config = small_config(**CONFIGS[name])
    cache = HybridCache(config, batch_size=3, max_length=50, dtype=dtype)
    assert cache.breakdown() == cache_bytes(config, 3, 50, dtype=dtype)
    assert cache.nbytes() == sum(cache_bytes(config, 3, 50, dtype=dtype).values())


def test_release_cache_at_8k():
    c = HymbaConfig.from_preset("hymba-1.5b")
    # global K/V 3 x 8192 + window K/V 14 x 1024 (5 heads x (64 + 128) x 2 bytes), SSM 32 x 3200 x 16, conv 32 x 3200 x 3
    by_hand = 3 * 8192 * 5 * 192 * 2 + 14 * 1024 * 5 * 192 * 2 + 32 * 3200 * 16 * 2 + 32 * 3200 * 3 * 2
    assert paper_cache_bytes(c, 8192) == by_hand == 78_602_240
    true = cache_bytes(c, 1, 8192, dtype=torch.float16)
    assert true["meta_kv"] == 17 * 128 * 5 * 192 * 2 and true["ssm_state"] == 32 * 3200 * 16 * 4


def test_full_cache_raises_a_clear_error():
    model = HymbaForCausalLM(HymbaConfig.from_preset("tiny")).eval()
    cache = new_cache(model, 1, 4)
    model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    with pytest.raises(CacheFullError, match="holds 4 text tokens"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def greedy(model, prompt, steps, use_cache):
    seq = prompt
    with torch.no_grad():
        if use_cache:
            cache = new_cache(model, 1, prompt.shape[1] + steps)
            logits = model(prompt, cache=cache).logits[:, -1]
            for _ in range(steps):
                nxt = logits.argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], 1)
                logits = model(nxt, cache=cache).logits[:, -1]
        else:
            for _ in range(steps):
                seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return seq


def test_golden_toy_greedy_path(shared_dir):
    """`greedy_full` is NVIDIA's greedy path by repeated full forwards on the golden toy model: cached decoding
    follows it for all 72 tokens, and teacher-forced along it the cache gives the full forward's logits and the
    golden margins (the gap between the top two logits) at every step."""
    golden = os.path.join(shared_dir, "golden", "hymba-toy")
    model = HymbaForCausalLM.from_pretrained(golden, dtype=torch.float32)
    exp = load_file(os.path.join(golden, "expected.safetensors"))
    prompt, path, margins = exp["prompt"], exp["greedy_full"], exp["greedy_margins"]
    assert path.shape == (1, 82) and torch.equal(path[:, :10], prompt)
    cached = greedy(model, prompt, 72, use_cache=True)
    assert torch.equal(cached, path)
    assert torch.equal(greedy(model, prompt, 72, use_cache=False), path)
    with torch.no_grad():
        logits = decode_logits(model, path, prefill=10)[0, 9:-1]
        assert_model_as_accurate(logits, model(path).logits[0, 9:-1], model, lambda m: m(path).logits[0, 9:-1],
                                 msg="cached logits")

    def top2_margins(logits):
        top2 = logits.topk(2, dim=-1).values
        return top2[:, 0] - top2[:, 1]
    # NVIDIA's float32 margins and ours (cached) each as close to our float64 ones as the other
    ours, exact = top2_margins(logits), lambda m: top2_margins(m(path).logits[0, 9:-1])
    assert_model_as_accurate(margins, ours, model, exact, msg="NVIDIA's margins")
    assert_model_as_accurate(ours, margins, model, exact, msg="our margins")
    assert torch.equal(logits.argmax(-1), path[0, 10:])
