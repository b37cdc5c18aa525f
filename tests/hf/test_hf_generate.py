"""transformers' own `generate` on Hymba through HymbaCache: NVIDIA's greedy path, cached decoding equal to
repeated full forwards (greedy, sampling, beam search, left-padded batches), streaming, stopping criteria, stop
strings, and a cache that grows as tokens arrive."""

import pytest
import torch
from helpers import randomized, small_lm_config
from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList, TextStreamer

from hymba import HymbaForCausalLM
from hymba.hf import CacheUnsupportedError, HymbaCache, HymbaHFForCausalLM
from hymba.hf import cache as hf_cache


def test_golden_greedy_path_alone_and_in_a_left_padded_batch(golden):
    """`greedy_full` (NVIDIA's greedy path by full forwards) for all 72 tokens: alone, and as one row of a batch
    where it is left padded next to a longer prompt."""
    path, exp = golden
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt, want = exp["prompt"], exp["greedy_full"]
    out = model.generate(prompt, max_new_tokens=72, do_sample=False, return_dict_in_generate=True)
    assert isinstance(out.cache, HymbaCache) and out.cache.get_seq_length() == 81  # decoded with the cache
    assert torch.equal(out.sequences, want)
    other = torch.tensor([[7, 100, 3, 250, 9, 31, 64, 2, 5, 77, 13, 200, 40]])
    ids = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], 1), other])
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=72, do_sample=False, pad_token_id=0)
    assert torch.equal(batch[0, 3:], want[0])
    alone = model.generate(other, max_new_tokens=72, do_sample=False)
    assert torch.equal(batch[1], alone[0])
    embedded = model.generate(inputs_embeds=model.get_input_embeddings()(prompt), max_new_tokens=20, do_sample=False)
    assert torch.equal(embedded[0], want[0, 10:30])  # (from embeddings: the new tokens only)


@pytest.fixture(scope="module")
def model64():
    """A small random Hymba in float64 (the cached and uncached paths then agree to ~1e-12), window 8 and 4 meta
    tokens, so that 40 tokens go well past the window."""
    torch.manual_seed(0)
    ours = randomized(HymbaForCausalLM(small_lm_config()), seed=3, scale=0.5)
    model = HymbaHFForCausalLM(HymbaHFForCausalLM.config_class(**_released(ours.config)))
    model.load_state_dict(ours.state_dict())
    return model.double().eval()


def _released(config):
    return {k: v for k, v in config.to_dict().items()
            if k not in ("architectures", "model_type", "torch_dtype", "transformers_version")}


PROMPTS = torch.tensor([[0, 0, 0, 1, 450, 4996, 17354], [1, 15043, 3186, 29892, 445, 338, 379]])
MASK = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])


def test_cached_greedy_logits_equal_repeated_full_forwards(model64):
    """Each step's logits with the cache equal a full forward over the whole sequence so far (float64: rounding
    of sums of a few hundred terms, ~1e-13; 1e-9 allowed), for a left-padded batch, past the window."""
    out = model64.generate(PROMPTS, attention_mask=MASK, max_new_tokens=33, do_sample=False, min_new_tokens=33,
                           output_logits=True, return_dict_in_generate=True)
    seq = out.sequences
    full_mask = torch.cat([MASK, torch.ones(2, 33, dtype=torch.long)], 1)
    with torch.no_grad():
        full = model64(seq, attention_mask=full_mask).logits
    for step, logits in enumerate(out.logits):
        torch.testing.assert_close(logits, full[:, 6 + step].float(), rtol=1e-9, atol=1e-9)
    uncached = model64.generate(PROMPTS, attention_mask=MASK, max_new_tokens=33, min_new_tokens=33, do_sample=False,
                                use_cache=False)
    assert torch.equal(uncached, seq)


def test_left_padded_rows_generate_what_they_generate_alone(model64):
    batch = model64.generate(PROMPTS, attention_mask=MASK, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    alone = model64.generate(PROMPTS[:1, 3:], max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert torch.equal(batch[0, 3:], alone[0])


def test_sampling_and_beam_search_equal_their_uncached_runs(model64):
    kwargs = dict(attention_mask=MASK, max_new_tokens=15, min_new_tokens=15)
    torch.manual_seed(1)
    sampled = model64.generate(PROMPTS, do_sample=True, top_k=50, top_p=0.9, temperature=0.8, **kwargs)
    torch.manual_seed(1)
    assert torch.equal(sampled, model64.generate(PROMPTS, do_sample=True, top_k=50, top_p=0.9, temperature=0.8,
                                                 use_cache=False, **kwargs))
    beams = model64.generate(PROMPTS, num_beams=3, num_return_sequences=2, do_sample=False,
                             return_dict_in_generate=True, output_scores=True, **kwargs)
    plain = model64.generate(PROMPTS, num_beams=3, num_return_sequences=2, do_sample=False, use_cache=False,
                             return_dict_in_generate=True, output_scores=True, **kwargs)
    assert beams.sequences.shape == (4, 22) and torch.equal(beams.sequences, plain.sequences)
    torch.testing.assert_close(beams.sequences_scores, plain.sequences_scores, rtol=1e-9, atol=1e-9)


def test_streaming_stopping_criteria_and_stop_strings(hf_model, hf_tokenizer):
    """TextStreamer prints exactly the decoded continuation; a custom StoppingCriteria and stop strings end
    generation where they should."""
    printed = []

    class Capture(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            printed.append(text)

    inputs = hf_tokenizer("Hello world", return_tensors="pt")
    n = inputs["input_ids"].shape[1]
    out = hf_model.generate(**inputs, max_new_tokens=10, min_new_tokens=10, do_sample=False,
                            streamer=Capture(hf_tokenizer, skip_prompt=True))
    assert "".join(printed) == hf_tokenizer.decode(out[0, n:], skip_special_tokens=True)

    target = int(out[0, n + 4])

    class StopAt(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return input_ids[:, -1] == target

    stopped = hf_model.generate(**inputs, max_new_tokens=10, do_sample=False,
                                stopping_criteria=StoppingCriteriaList([StopAt()]))
    first = next(i for i in range(n, out.shape[1]) if out[0, i] == target)
    assert torch.equal(stopped[0], out[0, :first + 1])

    text = hf_tokenizer.decode(out[0, n:], skip_special_tokens=True)
    stop = text.strip()[3:5]
    cut = hf_model.generate(**inputs, max_new_tokens=10, do_sample=False, stop_strings=[stop],
                            tokenizer=hf_tokenizer)
    made = hf_tokenizer.decode(cut[0, n:], skip_special_tokens=True)
    assert stop in made and stop not in hf_tokenizer.decode(cut[0, n:-1], skip_special_tokens=True)


def test_cache_grows_as_tokens_arrive(model64, monkeypatch):
    """Allocated 4 tokens at a time (smaller than the window of 8), the cache regrows many times while decoding
    (the window ring too) and still gives the full forward's logits; generate also continues from a returned
    cache."""
    monkeypatch.setattr(hf_cache, "ALLOCATION_STEP", 4)
    out = model64.generate(PROMPTS, attention_mask=MASK, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                           output_logits=True, return_dict_in_generate=True)
    assert out.cache.state.max_length >= 26 and out.cache.state.ring == 8
    full_mask = torch.cat([MASK, torch.ones(2, 20, dtype=torch.long)], 1)
    with torch.no_grad():
        full = model64(out.sequences, attention_mask=full_mask).logits
    torch.testing.assert_close(torch.stack(out.logits, 1), full[:, 6:-1].float(), rtol=1e-9, atol=1e-9)
    more = model64.generate(out.sequences, attention_mask=full_mask, cache=out.cache, max_new_tokens=5,
                            min_new_tokens=5, do_sample=False)
    longer = model64.generate(PROMPTS, attention_mask=MASK, max_new_tokens=25, min_new_tokens=25, do_sample=False)
    assert torch.equal(more, longer)


def test_cache_refuses_to_roll_back():
    """Assisted (speculative) decoding needs `crop`, which an SSM state cannot do: refused by name."""
    cache = HymbaCache(small_lm_config())
    cache.crop(0)  # (nothing to drop: fine)
    with pytest.raises(CacheUnsupportedError, match="rolled back"):
        cache.crop(-1)
    with pytest.raises(CacheUnsupportedError, match="rolled back"):
        cache.activate_past_recording()
    assert not cache.is_compileable and not cache.is_croppable and cache.get_seq_length() == 0
