"""generate(): cached decoding against repeated full forwards, batches, chunked prefill, stopping, streaming."""

import functools
import importlib

import pytest
import torch
from helpers import assert_model_as_accurate, random_weights, two_group_config

from hymba import HymbaConfig, HymbaForCausalLM
from hymba.engine.generate import generate
from hymba.errors import InputError

generate_module = importlib.import_module("hymba.engine.generate")  # (the package exports the function)


def full_forward_greedy(model, prompt: list[int], steps: int, penalty: float = 1.0):
    """The oracle: every next token is the argmax of a plain forward over the whole sequence (no cache), with
    the repetition penalty applied by hand."""
    seq, logits = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            last = model(torch.tensor([seq])).logits[0, -1]
            logits.append(last)
            scores = last.clone()
            for t in set(seq):
                scores[t] = scores[t] / penalty if scores[t] > 0 else scores[t] * penalty
            seq.append(int(scores.argmax()))
    return seq, torch.stack(logits)


def make(config: HymbaConfig, seed: int = 0) -> HymbaForCausalLM:
    torch.manual_seed(seed)
    return random_weights(HymbaForCausalLM(config), seed=seed)


def prompt_of(n: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def teacher_forced(model, out, ids, mask=None):
    """`model`'s logits from one plain forward over `out`'s sequences at the steps `generate` returned logits
    for (left padding as in `ids`, `mask`): the float64 oracle of those logits."""
    seq = out.sequences
    prompt_mask = torch.ones_like(ids) if mask is None else mask
    full_mask = torch.cat([prompt_mask, torch.ones_like(seq[:, ids.shape[1]:])], 1)
    with torch.no_grad():
        return model(seq[:, :-1], attention_mask=full_mask[:, :-1]).logits[:, ids.shape[1] - 1:]


@pytest.mark.parametrize("name, config, prompt_len, new", [
    # global layers 0, 3, 5; K/V group [1, 2]; 8 meta tokens + window 16 = 24 -> 8 + 66 = 74 > 3 x 24
    ("tiny", HymbaConfig.from_preset("tiny"), 8, 66),
    # global layers 0, 6; K/V groups [1, 2] and [3, 4, 5]; 4 meta + window 6 = 10 -> 7 + 40 = 47 > 3 x 10
    ("two-groups", two_group_config(), 7, 40),
])
def test_cached_greedy_equals_greedy_by_full_forwards(name, config, prompt_len, new):
    model = make(config)
    prompt = prompt_of(prompt_len, config.vocab_size, seed=1)
    assert prompt_len + new >= 3 * (config.num_memory_tokens + config.sliding_window)
    expected, expected_logits = full_forward_greedy(model, prompt, new)
    out = generate(model, torch.tensor([prompt]), max_new_tokens=new, eos_token_id=[], output_logits=True)
    assert out.sequences[0].tolist() == expected
    assert out.finish_reasons == ["length"] and out.num_new_tokens == [new]
    assert_model_as_accurate(out.logits[0], expected_logits, model,
                             lambda m: teacher_forced(m, out, torch.tensor([prompt]))[0])
    # In float64 the two paths agree to rounding: the cache is exact, not merely close.
    model = model.double()
    out64 = generate(model, torch.tensor([prompt]), max_new_tokens=new, eos_token_id=[], output_logits=True)
    expected64, logits64 = full_forward_greedy(model, prompt, new)
    assert out64.sequences[0].tolist() == expected64 == expected
    # float64: rounding ~1e-14 over ~70 tokens (float32 runs show ~1e2 eps); 1e-10 is far below any real error
    torch.testing.assert_close(out64.logits[0], logits64, atol=1e-10, rtol=0)


@pytest.mark.parametrize("baseline", ["tiny-attention-only", "tiny-ssm-only", "tiny-no-meta", "tiny-all-window",
                                      "tiny-no-kv-sharing"])
def test_cached_greedy_on_the_baselines(baseline):
    config = HymbaConfig.from_preset(baseline)
    model = make(config, seed=2)
    prompt = prompt_of(5, config.vocab_size, seed=3)
    expected, expected_logits = full_forward_greedy(model, prompt, 40)
    out = generate(model, torch.tensor([prompt]), max_new_tokens=40, eos_token_id=[], output_logits=True)
    assert out.sequences[0].tolist() == expected
    assert_model_as_accurate(out.logits[0], expected_logits, model,
                             lambda m: teacher_forced(m, out, torch.tensor([prompt]))[0])


def test_repetition_penalty_matches_the_oracle():
    model = make(two_group_config(), seed=4)
    prompt = prompt_of(6, 64, seed=5)
    expected, _ = full_forward_greedy(model, prompt, 25, penalty=1.8)
    out = generate(model, torch.tensor([prompt]), max_new_tokens=25, eos_token_id=[], repetition_penalty=1.8)
    assert out[0].tolist() == expected
    plain = generate(model, torch.tensor([prompt]), max_new_tokens=25, eos_token_id=[])
    assert not torch.equal(plain, out)  # the penalty changed something


def left_pad(prompts: list[list[int]], pad: int):
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


@pytest.fixture(scope="module")
def tiny_model():
    return make(HymbaConfig.from_preset("tiny"), seed=6)


def test_left_padded_batch_gives_each_row_what_it_gets_alone(tiny_model):
    prompts = [prompt_of(n, 512, seed=n) for n in (5, 30, 12)]
    ids, mask = left_pad(prompts, pad=0)
    out = generate(tiny_model, ids, mask, max_new_tokens=30, eos_token_id=[], output_logits=True)
    for i, p in enumerate(prompts):
        alone = generate(tiny_model, torch.tensor([p]), max_new_tokens=30, eos_token_id=[], output_logits=True)
        assert out.sequences[i, ids.shape[1]:].tolist() == alone.sequences[0, len(p):].tolist()
        assert out.sequences[i, :ids.shape[1]].tolist() == ids[i].tolist()  # prompts returned as given
        assert_model_as_accurate(out.logits[i], alone.logits[0], tiny_model,
                                 lambda m: teacher_forced(m, alone, torch.tensor([p]))[0], msg=f"row {i}")


@pytest.mark.parametrize("engine", [False, True])
def test_rows_finish_independently_at_their_eos(engine, tiny_model):
    gen = functools.partial(generate, engine=engine)  # the direct path, or the shared engine
    prompts = [prompt_of(n, 512, seed=10 + n) for n in (4, 9, 6)]
    free = [gen(tiny_model, torch.tensor([p]), max_new_tokens=20, eos_token_id=[])[0, len(p):].tolist()
            for p in prompts]
    eos = free[0][3]  # row 0 ends after 4 tokens (or earlier if that token came before)
    cut = [f[:f.index(eos) + 1] if eos in f else f for f in free]
    ids, mask = left_pad(prompts, pad=0)
    out = gen(tiny_model, ids, mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=7, return_dict=True)
    new = out.sequences[:, ids.shape[1]:]
    assert new.shape[1] == max(map(len, cut))
    for i, c in enumerate(cut):
        assert new[i].tolist() == c + [7] * (new.shape[1] - len(c))
        assert out.finish_reasons[i] == ("eos" if eos in free[i] else "length")
        assert out.num_new_tokens[i] == len(c)


@pytest.mark.parametrize("engine", [False, True])
def test_several_eos_ids_and_min_new_tokens(engine, tiny_model):
    gen = functools.partial(generate, engine=engine)  # the direct path, or the shared engine
    p = prompt_of(5, 512, seed=20)
    free = gen(tiny_model, torch.tensor([p]), max_new_tokens=12, eos_token_id=[])[0, 5:].tolist()
    out = gen(tiny_model, torch.tensor([p]), max_new_tokens=12, eos_token_id=[999 % 512, free[2]])
    assert out[0, 5:].tolist() == free[:free.index(free[2]) + 1]
    # min_new_tokens forbids the eos tokens for the first steps, so the first token changes
    first = free[0]
    out = gen(tiny_model, torch.tensor([p]), max_new_tokens=3, eos_token_id=first, min_new_tokens=2)
    assert out[0, 5] != first and out.shape[1] == 8


@pytest.mark.parametrize("engine", [False, True])
def test_generation_stops_when_every_row_is_done(engine, tiny_model):
    gen = functools.partial(generate, engine=engine)  # the direct path, or the shared engine
    p = prompt_of(5, 512, seed=21)
    free = gen(tiny_model, torch.tensor([p, p]), max_new_tokens=10, eos_token_id=[])
    out = gen(tiny_model, torch.tensor([p, p]), max_new_tokens=10, eos_token_id=int(free[0, 5]))
    assert out.shape == (2, 6)


@pytest.mark.parametrize("chunk", [1, 7, 16])
def test_chunked_prefill_equals_one_shot(tiny_model, chunk):
    prompts = [prompt_of(n, 512, seed=30 + n) for n in (40, 23)]
    ids, mask = left_pad(prompts, pad=0)
    one = generate(tiny_model, ids, mask, max_new_tokens=12, eos_token_id=[], output_logits=True,
                   prefill_chunk_size=1000)
    chunked = generate(tiny_model, ids, mask, max_new_tokens=12, eos_token_id=[], output_logits=True,
                       prefill_chunk_size=chunk)
    assert torch.equal(one.sequences, chunked.sequences)
    assert_model_as_accurate(chunked.logits, one.logits, tiny_model, lambda m: teacher_forced(m, one, ids, mask))


def test_meta_prefix_is_computed_once_across_calls(monkeypatch):
    model = make(HymbaConfig.from_preset("tiny"), seed=7)
    runs, original = [], model.model.run_layers
    monkeypatch.setattr(model.model, "run_layers", lambda x, *a, **k: runs.append(x.shape[1]) or original(x, *a, **k))
    for batch in (1, 3, 2):
        ids = torch.randint(0, 512, (batch, 6))
        generate(model, ids, max_new_tokens=4, prefill_chunk_size=2)
    # one run over the 8 meta tokens, then per call 3 prefill chunks of 2 and 3 steps
    assert runs.count(model.config.num_memory_tokens) == 1 and len(runs) == 1 + 3 * (3 + 3)


@pytest.mark.parametrize("engine", [False, True])
def test_stop_strings_end_a_row_at_the_token_completing_them(engine, checkpoint):
    gen = functools.partial(generate, engine=engine)  # the direct path, or the shared engine
    model, tok = checkpoint
    prompts = ["The quick brown", "Meta tokens"]
    ids, mask = tok(prompts)
    free = gen(model, ids, mask, max_new_tokens=30, eos_token_id=[])
    text0 = tok.decode(free[0, ids.shape[1]:])
    stop = text0[8:11]
    assert len(stop) == 3 and stop not in text0[:10]  # a stop string that first appears in the middle
    gen0 = free[0, ids.shape[1]:].tolist()
    k = next(i for i in range(1, 31) if stop in tok.decode(gen0[:i], skip_special_tokens=False))
    out = gen(model, ids, mask, max_new_tokens=30, eos_token_id=[], stop_strings=[stop, "@@nowhere@@"],
                   tokenizer=tok, return_dict=True)
    assert out.sequences[0, ids.shape[1]:ids.shape[1] + k].tolist() == gen0[:k]
    assert out.num_new_tokens[0] == k and out.finish_reasons[0] == "stop_string"
    assert out.stop_strings_matched[0] == stop
    text1 = tok.decode(free[1, ids.shape[1]:])
    if stop not in text1:
        assert out.finish_reasons[1] == "length" and out.sequences[1].tolist() == free[1].tolist()
    with pytest.raises(ValueError, match="tokenizer"):
        gen(model, ids, mask, max_new_tokens=3, stop_strings=["x"])


@pytest.mark.parametrize("engine", [False, True])
def test_streamer_and_callback_see_every_token(engine, tiny_model):
    gen = functools.partial(generate, engine=engine)  # the direct path, or the shared engine
    prompts = [prompt_of(n, 512, seed=40 + n) for n in (3, 8)]
    ids, mask = left_pad(prompts, pad=0)
    free = gen(tiny_model, ids, mask, max_new_tokens=8, eos_token_id=[])
    eos = int(free[0, ids.shape[1] + 2])
    steps, ended = [], []

    class Recorder:
        def put(self, tokens):
            steps.append(list(tokens))

        def end(self):
            ended.append(True)

    out = gen(tiny_model, ids, mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=1, streamer=Recorder())
    assert ended == [True] and len(steps) == out.shape[1] - ids.shape[1]
    new = out[:, ids.shape[1]:].tolist()
    for step, tokens in enumerate(steps):
        for row in range(2):
            finished_before = eos in new[row][:step]
            assert tokens[row] == (None if finished_before else new[row][step])
    assert None in steps[-1]  # row 0 finished early and was reported as such
    calls = []
    gen(tiny_model, ids, mask, max_new_tokens=8, eos_token_id=[], streamer=calls.append)
    assert [c for c in calls] == free[:, ids.shape[1]:].T.tolist()


def test_sampling_is_reproducible_from_a_seed(tiny_model):
    ids = torch.tensor([prompt_of(6, 512, seed=50)] * 3)
    kw = dict(max_new_tokens=15, do_sample=True, temperature=1.2, top_k=50, top_p=0.95, eos_token_id=[])
    a = generate(tiny_model, ids, seed=123, **kw)
    b = generate(tiny_model, ids, seed=123, **kw)
    c = generate(tiny_model, ids, generator=torch.Generator().manual_seed(123), **kw)
    d = generate(tiny_model, ids, seed=124, **kw)
    assert torch.equal(a, b) and torch.equal(a, c) and not torch.equal(a, d)
    assert not torch.equal(a[0], a[1])  # rows draw independently
    greedy = generate(tiny_model, ids[:1], max_new_tokens=15, eos_token_id=[])
    top1 = generate(tiny_model, ids[:1], max_new_tokens=15, eos_token_id=[], do_sample=True, top_k=1, seed=0)
    assert torch.equal(greedy, top1)


@pytest.mark.parametrize("engine", [False, True])
def test_greedy_is_deterministic(engine, tiny_model):
    gen = functools.partial(generate, engine=engine)  # the direct path, or the shared engine
    ids = torch.tensor([prompt_of(6, 512, seed=51)])
    assert torch.equal(gen(tiny_model, ids, max_new_tokens=10), gen(tiny_model, ids, max_new_tokens=10))


def test_bad_inputs_are_named(tiny_model):
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with pytest.raises(ValueError, match="not left-padded"):
        generate(tiny_model, ids, torch.tensor([[1, 1, 0], [1, 1, 1]]), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"rows \[0\] have no tokens"):
        generate(tiny_model, ids, torch.tensor([[0, 0, 0], [1, 1, 1]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(tiny_model, torch.tensor([[5, 512]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="empty"):
        generate(tiny_model, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        generate(tiny_model, ids, torch.ones(2, 4), max_new_tokens=2)
    with pytest.raises(ValueError, match="seed or generator"):
        generate(tiny_model, ids, do_sample=True, seed=1, generator=torch.Generator(), max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature"):
        generate(tiny_model, ids, do_sample=True, temperature=0.0, max_new_tokens=2)


def test_zero_new_tokens_and_one_dimensional_prompts(tiny_model):
    ids = torch.tensor([5, 6, 7])
    assert generate(tiny_model, ids, max_new_tokens=0).tolist() == [[5, 6, 7]]
    assert generate(tiny_model, ids, max_new_tokens=3, eos_token_id=[]).shape == (1, 6)


def test_the_package_exports_the_engine_function():
    import hymba

    assert hymba.generate is generate


def test_ragged_prompt_lists_are_left_padded(tiny_model):
    prompts = [prompt_of(n, 512, seed=60 + n) for n in (3, 7)]
    ids, mask = left_pad(prompts, pad=9)
    expected = generate(tiny_model, ids, mask, max_new_tokens=6, eos_token_id=[], pad_token_id=9)
    assert torch.equal(generate(tiny_model, prompts, max_new_tokens=6, eos_token_id=[], pad_token_id=9), expected)
    with pytest.raises(ValueError, match="without attention_mask"):
        generate(tiny_model, prompts, mask, max_new_tokens=2)


@pytest.fixture
def static_steps(monkeypatch):
    """generate()'s CUDA-graph path with the graph's eager twin (StaticDecoder runs the same static-cache step
    without capturing it), so the batch bookkeeping of that path is checked on the CPU."""
    from hymba.engine.cuda_graph import StaticDecoder

    made = []

    def factory(model, batch_size, max_length, compile_step=False):
        made.append(StaticDecoder(model, batch_size, max_length, compile=compile_step))
        return made[-1]
    monkeypatch.setattr(generate_module, "_static_decoder", factory)
    return made


def test_static_decoder_path_equals_the_cache_path(tiny_model, static_steps):
    """Rows finishing at different steps stay in the fixed batch (fed padding, ignored): same tokens, same
    logits, same finish reasons as dropping them; a left-padded prompt and repetition penalty included."""
    prompts = [prompt_of(n, 512, seed=30 + n) for n in (4, 11, 7)]
    free = [generate(tiny_model, torch.tensor([p]), max_new_tokens=24, eos_token_id=[],
                     repetition_penalty=1.3)[0, len(p):].tolist() for p in prompts]
    eos = free[1][5]  # row 1 ends by its 6th token (each row generates in the batch what it does alone)
    ids, mask = left_pad(prompts, pad=0)
    kw = dict(max_new_tokens=24, eos_token_id=eos, pad_token_id=3, output_logits=True, repetition_penalty=1.3)
    want = generate(tiny_model, ids, mask, cuda_graph=False, **kw)
    got = generate(tiny_model, ids, mask, cuda_graph=True, **kw)
    assert len(static_steps) == 1 and static_steps[0].batch_size == 3
    assert got.sequences.tolist() == want.sequences.tolist()
    assert got.finish_reasons == want.finish_reasons and got.num_new_tokens == want.num_new_tokens
    assert "eos" in got.finish_reasons
    running = ~want.logits.isnan()  # finished rows' steps are NaN in both
    assert torch.equal(running, ~got.logits.isnan())
    assert_model_as_accurate(got.logits[running], want.logits[running], tiny_model,
                             lambda m: teacher_forced(m, want, ids, mask)[running])


def test_cuda_graph_is_refused_off_cuda_and_not_used_by_default_on_cpu(tiny_model):
    with pytest.raises(ValueError, match="CUDA device"):
        generate(tiny_model, torch.tensor([[1, 2, 3]]), max_new_tokens=20, cuda_graph=True)
    out = generate(tiny_model, torch.tensor([[1, 2, 3]]), max_new_tokens=20, eos_token_id=[])  # default: eager
    assert out.shape == (1, 23)
    for graph in (None, False):  # the compiled step is the graph's: without one it is refused, not ignored
        with pytest.raises(ValueError, match="needs cuda_graph"):
            generate(tiny_model, torch.tensor([[1, 2, 3]]), max_new_tokens=20, cuda_graph=graph, compile_step=True)


def test_failed_capture_falls_back_to_eager_steps(tiny_model, monkeypatch):
    def refuse(*a):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(generate_module, "_static_decoder", refuse)
    with pytest.warns(UserWarning, match="decoding eagerly"):
        out = generate(tiny_model, torch.tensor([[5, 6]]), max_new_tokens=18, eos_token_id=[], cuda_graph=True)
    assert out.tolist() == generate(tiny_model, torch.tensor([[5, 6]]), max_new_tokens=18, eos_token_id=[]).tolist()


def test_the_engine_path_equals_the_direct_path(tiny_model, monkeypatch):
    """Greedy on the shared engine = greedy on the direct path: a ragged batch with more prompts than the
    engine has rows (two wait for a free one), end-of-sequence ids, min_new_tokens and a repetition penalty."""
    shared = importlib.import_module("hymba.engine.shared")
    monkeypatch.setattr(shared, "MAX_ROWS", 8)
    shared.release_engine(tiny_model)
    prompts = [prompt_of(n, 512, seed=60 + n) for n in (3, 17, 5, 9, 2, 11, 6, 4, 8, 13)]
    ids, mask = left_pad(prompts, pad=0)
    free = generate(tiny_model, ids, mask, max_new_tokens=12, eos_token_id=[])
    eos = [int(free[0, ids.shape[1] + 4]), int(free[3, ids.shape[1] + 1])]
    kw = dict(max_new_tokens=12, min_new_tokens=2, eos_token_id=eos, pad_token_id=5, repetition_penalty=1.3,
              return_dict=True)
    direct = generate(tiny_model, ids, mask, engine=False, **kw)
    on_engine = generate(tiny_model, ids, mask, engine=True, **kw)
    assert torch.equal(direct.sequences, on_engine.sequences)
    assert direct.finish_reasons == on_engine.finish_reasons and "eos" in direct.finish_reasons
    assert direct.num_new_tokens == on_engine.num_new_tokens
    assert tiny_model._generate_engine[1].pool.num_slots == 8


def test_the_engine_is_kept_and_rebuilt_only_when_needed(monkeypatch):
    shared = importlib.import_module("hymba.engine.shared")
    tiny_model = make(HymbaConfig.from_preset("tiny"), seed=8)
    built = []
    original = shared.Engine
    monkeypatch.setattr(shared, "Engine", lambda *a, **k: built.append(k["max_num_seqs"]) or original(*a, **k))
    ids = torch.tensor([prompt_of(6, 512, seed=70)])
    for batch in (1, 3, 8, 2):  # up to 8 rows: one engine
        generate(tiny_model, ids.expand(batch, -1), max_new_tokens=3, engine=True)
    assert built == [8]
    generate(tiny_model, ids.expand(9, -1), max_new_tokens=3, engine=True)  # more rows
    generate(tiny_model, ids, max_new_tokens=3, engine=True, eos_token_id=[3])  # other end-of-sequence ids
    with torch.no_grad():
        tiny_model.lm_head.weight.mul_(1.5)  # new weights: a new meta-token prefix
    generate(tiny_model, ids, max_new_tokens=3, engine=True, eos_token_id=[3])
    assert built == [8, 16, 16, 16]
    shared.release_engine(tiny_model)
    assert "_generate_engine" not in tiny_model.__dict__


def test_sampling_on_the_engine_is_reproducible_from_a_seed(tiny_model):
    ids = torch.tensor([prompt_of(6, 512, seed=50)] * 3)
    kw = dict(max_new_tokens=15, do_sample=True, temperature=1.2, top_k=50, top_p=0.95, eos_token_id=[], engine=True)
    a = generate(tiny_model, ids, seed=123, **kw)
    assert torch.equal(a, generate(tiny_model, ids, seed=123, **kw))
    assert not torch.equal(a, generate(tiny_model, ids, seed=124, **kw))
    assert not torch.equal(a[0], a[1])  # rows draw independently
    greedy = generate(tiny_model, ids[:1], max_new_tokens=15, eos_token_id=[], engine=True)
    top1 = generate(tiny_model, ids[:1], max_new_tokens=15, eos_token_id=[], do_sample=True, top_k=1, seed=0,
                    engine=True)
    assert torch.equal(greedy, top1)


def test_the_engine_refuses_what_only_the_direct_path_does(tiny_model):
    ids = torch.tensor([prompt_of(6, 512, seed=71)])
    with pytest.raises(InputError, match="output_logits"):
        generate(tiny_model, ids, max_new_tokens=3, engine=True, output_logits=True)
    with pytest.raises(InputError, match="generator"):
        generate(tiny_model, ids, max_new_tokens=3, engine=True, do_sample=True, generator=torch.Generator())
    with pytest.raises(InputError, match="max_position_embeddings"):
        generate(tiny_model, ids, max_new_tokens=tiny_model.config.max_position_embeddings, engine=True)


def test_an_interrupted_call_leaves_the_engine_clean(tiny_model):
    """A streamer that raises mid-way: the call's requests are cancelled, and the next call gets what it would
    have got on a fresh engine."""
    ids = torch.tensor([prompt_of(6, 512, seed=72), prompt_of(6, 512, seed=73)])
    want = generate(tiny_model, ids, max_new_tokens=8, eos_token_id=[], engine=True)

    def boom(tokens):
        if len(seen) == 3:
            raise KeyboardInterrupt
        seen.append(tokens)

    seen = []
    with pytest.raises(KeyboardInterrupt):
        generate(tiny_model, ids, max_new_tokens=8, eos_token_id=[], engine=True, streamer=boom)
    engine = tiny_model._generate_engine[1]
    assert not engine.has_work() and not engine.running
    assert torch.equal(generate(tiny_model, ids, max_new_tokens=8, eos_token_id=[], engine=True), want)
