"""The continuous-batching engine: each request's greedy output equals the oracle (full forwards) whether it
runs alone, in a batch, queued, or joining a running batch mid-flight; sampling depends on the request's seed
alone; stopping rules; aborts free their slots; bad requests are named."""

import math

import pytest
import torch
from helpers import random_weights, two_group_config

from hymba import HymbaConfig, HymbaForCausalLM, InputError
from hymba.engine import LLM, Engine, SamplingParams
from hymba.engine.sampler import hash32, token_hashes, uniform
from hymba.engine.sampling import top_k_filter, top_p_filter


@pytest.fixture(scope="module")
def model64():
    """Two K/V groups, window 6 + 4 meta tokens (so prompts of tens of tokens wrap the ring), in float64:
    rounding (~1e-15) cannot flip an argmax, so outputs must be equal, not close."""
    torch.manual_seed(0)
    return random_weights(HymbaForCausalLM(two_group_config()), seed=0).double()


def oracle_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """Every next token: the argmax of a plain forward over the whole sequence (no cache, no engine)."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def prompts_of(lengths, vocab: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def run_all(engine: Engine, requests) -> None:
    while engine.has_work():
        engine.step()
    assert all(r.finished for r in requests)


GREEDY = dict(temperature=0, ignore_eos=True)


def test_greedy_equals_the_oracle_alone_batched_queued_and_joining_mid_flight(model64):
    lengths = [5, 23, 40, 9, 17, 1, 33]  # 40 > 16-token chunks: three prefill chunks; 1: a lone token
    prompts = prompts_of(lengths, 64)
    steps = [20, 12, 25, 7, 30, 16, 9]
    want = [oracle_greedy(model64, p, n) for p, n in zip(prompts, steps)]
    # three slots for seven requests: some queue; two start, the rest arrive while they decode
    engine = Engine(model64, max_num_seqs=3, prefill_chunk_size=16, max_prefill_batch=2)
    first = [engine.add_request(p, SamplingParams(max_tokens=n, **GREEDY)) for p, n in zip(prompts[:2], steps)]
    for _ in range(6):
        engine.step()
    assert engine.running, "the first requests are decoding when the others arrive"
    rest = [engine.add_request(p, SamplingParams(max_tokens=n, **GREEDY)) for p, n in zip(prompts[2:], steps[2:])]
    run_all(engine, first + rest)
    for r, w in zip(first + rest, want):
        assert r.output_ids == w, r.request_id
        assert r.finish_reason == "length"
    # one at a time through a one-slot engine: the same tokens
    alone = Engine(model64, max_num_seqs=1, prefill_chunk_size=64)
    for p, n, w in zip(prompts, steps, want):
        r = alone.add_request(p, SamplingParams(max_tokens=n, **GREEDY))
        run_all(alone, [r])
        assert r.output_ids == w
    assert not engine.running and engine.pool.active.sum() == 0


@pytest.mark.parametrize("preset", ["tiny", "tiny-attention-only", "tiny-ssm-only", "tiny-no-meta", "tiny-all-window"])
def test_greedy_equals_the_oracle_on_every_layer_mix(preset):
    torch.manual_seed(2)
    model = random_weights(HymbaForCausalLM(HymbaConfig.from_preset(preset)), seed=2).double()
    prompts = prompts_of([7, 30, 3], model.config.vocab_size, seed=3)
    engine = Engine(model, max_num_seqs=2, prefill_chunk_size=16)
    reqs = [engine.add_request(p, SamplingParams(max_tokens=30, **GREEDY)) for p in prompts]
    run_all(engine, reqs)
    for r, p in zip(reqs, prompts):
        assert r.output_ids == oracle_greedy(model, p, 30), preset


def test_a_sampled_request_depends_on_its_seed_alone(model64):
    prompts = prompts_of([6, 19, 11, 27], 64, seed=5)
    params = [SamplingParams(max_tokens=15, temperature=0.9, top_k=20, top_p=0.9, seed=100 + i, ignore_eos=True)
              for i in range(4)]
    together = Engine(model64, max_num_seqs=4, prefill_chunk_size=16)
    reqs = [together.add_request(p, s) for p, s in zip(prompts, params)]
    run_all(together, reqs)
    alone = Engine(model64, max_num_seqs=1, prefill_chunk_size=32)
    for r, p, s in zip(reqs, prompts, params):
        again = alone.add_request(p, s)
        run_all(alone, [again])
        assert again.output_ids == r.output_ids
    other = alone.add_request(prompts[0], SamplingParams(max_tokens=15, temperature=0.9, top_k=20, top_p=0.9,
                                                         seed=7, ignore_eos=True))
    run_all(alone, [other])
    assert other.output_ids != reqs[0].output_ids  # (fixed seeds: a fixed outcome, not a flaky one)


def test_repetition_penalty_equals_the_oracle(model64):
    prompt = prompts_of([12], 64, seed=8)[0]
    penalty = 1.8
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            scores = model64(torch.tensor([seq])).logits[0, -1].clone()
            for t in set(seq):
                scores[t] = scores[t] / penalty if scores[t] > 0 else scores[t] * penalty
            seq.append(int(scores.argmax()))
    engine = Engine(model64, max_num_seqs=2, prefill_chunk_size=16)
    plain = engine.add_request(prompts_of([9], 64, seed=9)[0], SamplingParams(max_tokens=20, **GREEDY))
    r = engine.add_request(prompt, SamplingParams(max_tokens=20, repetition_penalty=penalty, **GREEDY))
    run_all(engine, [plain, r])
    assert r.output_ids == seq[len(prompt):]


def test_gumbel_draws_follow_the_filtered_softmax():
    """Counter-based draws at many (seed, step) pairs: each token's frequency within 5 binomial standard
    deviations of its probability under temperature, top-k and top-p (fixed seeds: a fixed outcome)."""
    from hymba.engine.sampler import BatchMode, RowParams, select

    V, n = 8, 4000
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
    p = RowParams.allocate(n, V, "cpu", penalties=False)
    p.temperature.fill_(0.7)
    p.top_k.fill_(6)
    p.top_p.fill_(0.95)
    p.seed.copy_(torch.arange(n) * 7919 + 13)
    tokens = select(logits.expand(n, V).clone(), slice(0, n), p, BatchMode(sample=True, filter=True), None,
                    token_hashes(V, "cpu"))
    filtered = top_p_filter(top_k_filter((logits / 0.7)[None], 6), 0.95)[0]
    probs = torch.softmax(filtered.double(), -1)
    counts = torch.bincount(tokens, minlength=V).double()
    for v in range(V):
        sd = math.sqrt(n * probs[v] * (1 - probs[v]))
        assert abs(counts[v] - n * probs[v]) <= 5 * sd + 1e-9, (v, counts[v].item(), n * probs[v].item())
    assert counts[probs == 0].sum() == 0  # filtered tokens are never drawn
    assert (p.step == 1).all()


def test_the_counter_rng_is_uniform_and_stays_in_range():
    u = uniform(torch.arange(64), torch.arange(64) * 3, token_hashes(4096, "cpu"))
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / u.numel())
    big = hash32(torch.tensor([2**40 + 5, 2**32 - 1, 0]))
    assert (big >= 0).all() and (big < 2**32).all()


def test_stop_rules(model64):
    prompt = prompts_of([10], 64, seed=11)[0]
    free = oracle_greedy(model64, prompt, 12)
    engine = Engine(model64, max_num_seqs=2, prefill_chunk_size=16, eos_token_id=free[4])
    eos = engine.add_request(prompt, SamplingParams(max_tokens=12, temperature=0))
    ignored = engine.add_request(prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    stop_id = engine.add_request(prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True,
                                                        stop_token_ids=[free[2]]))
    run_all(engine, [eos, ignored, stop_id])
    k = free.index(free[4])  # the first occurrence of the end-of-sequence token
    assert eos.output_ids == free[:k + 1] and eos.finish_reason == "stop" and eos.stop_reason == free[4]
    assert ignored.output_ids == free and ignored.finish_reason == "length"
    j = free.index(free[2])
    assert stop_id.output_ids == free[:j + 1] and stop_id.stop_reason == free[2]
    # min_tokens: the end-of-sequence token is suppressed before it (a different continuation, as long)
    late = engine.add_request(prompt, SamplingParams(max_tokens=12, min_tokens=k + 2, temperature=0))
    run_all(engine, [late])
    assert free[4] not in late.output_ids[:k + 2] and len(late.output_ids) >= k + 2


def test_stop_strings_and_text(checkpoint):
    model, tokenizer = checkpoint
    llm = LLM(model, tokenizer, max_num_seqs=2)
    [free] = llm.generate(["Hello there"], SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    text = free.outputs[0].text
    assert text == tokenizer.decode(free.outputs[0].token_ids)
    assert len(text) >= 6
    stop = text[3:5]
    [cut, kept] = llm.generate(["Hello there"] * 2, [
        SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, stop=[stop]),
        SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, stop=stop, include_stop_str_in_output=True)])
    first = text.index(stop)
    assert cut.outputs[0].text == text[:first] and cut.outputs[0].finish_reason == "stop"
    assert cut.outputs[0].stop_reason == stop
    assert kept.outputs[0].text == text[:first] + stop


def test_llm_loads_a_checkpoint_directory_and_takes_every_prompt_form(checkpoint_dir, checkpoint):
    model, tokenizer = checkpoint
    llm = LLM(checkpoint_dir, device="cpu", dtype="float32", max_num_seqs=4)
    ids = tokenizer.encode("Once upon")
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    outs = llm.generate(["Once upon", ids, {"prompt_token_ids": ids}], params)
    assert [o.outputs[0].token_ids for o in outs[1:]] == [outs[0].outputs[0].token_ids] * 2
    assert outs[0].prompt == "Once upon" and outs[0].prompt_token_ids == ids and all(o.finished for o in outs)
    [chat] = llm.chat([{"role": "user", "content": "hi"}], params)
    assert chat.prompt_token_ids == tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                                                  add_generation_prompt=True, tokenize=True)


def test_abort_frees_the_slot_and_the_engine_goes_on(model64):
    prompts = prompts_of([8, 14], 64, seed=12)
    engine = Engine(model64, max_num_seqs=2, prefill_chunk_size=16)
    long = engine.add_request(prompts[0], SamplingParams(max_tokens=60, **GREEDY))
    other = engine.add_request(prompts[1], SamplingParams(max_tokens=20, **GREEDY))
    for _ in range(5):
        engine.step()
    engine.abort(long.request_id)
    queued = engine.add_request(prompts[0], SamplingParams(max_tokens=10, **GREEDY))
    engine.abort(queued.request_id)  # aborted while still waiting
    run_all(engine, [long, other, queued])
    assert long.finish_reason == "abort" and len(long.output_ids) < 60
    assert queued.finish_reason == "abort" and queued.output_ids == []
    assert other.output_ids == oracle_greedy(model64, prompts[1], 20)
    assert not engine.running and engine.pool.active.sum() == 0
    again = engine.add_request(prompts[0], SamplingParams(max_tokens=10, **GREEDY))
    run_all(engine, [again])
    assert again.output_ids == oracle_greedy(model64, prompts[0], 10)


def test_bad_requests_are_named(model64):
    engine = Engine(model64, max_num_seqs=1, max_model_len=40, prefill_chunk_size=16)
    with pytest.raises(InputError, match="empty"):
        engine.add_request([], SamplingParams())
    with pytest.raises(InputError, match="outside the vocabulary"):
        engine.add_request([1, 64], SamplingParams())
    with pytest.raises(InputError, match="max_model_len"):
        engine.add_request([1] * 30, SamplingParams(max_tokens=11))
    with pytest.raises(InputError, match="stop strings need"):
        engine.add_request([1], SamplingParams(stop="x"))
    for bad in (dict(max_tokens=0), dict(max_tokens=-1), dict(temperature=-0.5), dict(top_p=0), dict(top_p=1.5),
                dict(top_k=-3), dict(repetition_penalty=0), dict(seed=-1), dict(min_tokens=5, max_tokens=2),
                dict(stop=[""]), dict(temperature=float("nan")), dict(max_tokens=2.5)):
        with pytest.raises(InputError):
            SamplingParams(**bad)
    with pytest.raises(InputError, match="max_model_len"):
        Engine(model64, max_model_len=10**6)
    with pytest.raises(InputError, match="power of two"):
        Engine(model64, prefill_chunk_size=100)
    with pytest.raises(InputError, match="CUDA"):
        Engine(model64, cuda_graphs=True)
    assert not engine.has_work()


def test_async_engine_streams_deltas_and_a_consumer_that_leaves_frees_its_slot(checkpoint):
    import asyncio

    from hymba.engine import AsyncEngine

    model, tokenizer = checkpoint
    engine = Engine(model, tokenizer, max_num_seqs=2)
    aeng = AsyncEngine(engine)
    ids = tokenizer.encode("Streaming")
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)

    async def main():
        text, tokens, last = "", [], None
        async for d in aeng.generate(ids, params):
            text, tokens, last = text + d.text, tokens + d.token_ids, d
        async for _ in aeng.generate(ids, SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)):
            break  # the client goes away after its first token
        return text, tokens, last

    try:
        text, tokens, last = asyncio.run(main())
        assert last.finished and last.finish_reason == "length" and last.num_output_tokens == 16
        [want] = LLM(model, tokenizer, max_num_seqs=1).generate([ids], params)
        assert tokens == want.outputs[0].token_ids and text == want.outputs[0].text
        for _ in range(500):  # the abort reaches the engine thread at its next step
            if not engine.has_work():
                break
            import time
            time.sleep(0.01)
        assert not engine.running and engine.stats["generation_tokens"] < 16 + 200
    finally:
        aeng.shutdown()


def test_async_engine_survives_a_consumer_whose_event_loop_closed(checkpoint):
    """A request whose event loop is gone (its client and loop shut down mid-generation) is aborted; the
    engine thread goes on serving others."""
    import asyncio
    import time

    from hymba.engine import AsyncEngine

    model, tokenizer = checkpoint
    engine = Engine(model, tokenizer, max_num_seqs=2)
    aeng = AsyncEngine(engine)
    ids = tokenizer.encode("Orphan")
    long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
    short = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)

    async def first_token_then_leave_the_generator_open():
        gen = aeng.generate(ids, long)
        await gen.__anext__()
        return gen  # never closed: its loop closes under it

    async def collect():
        return [t async for d in aeng.generate(ids, short) for t in d.token_ids]

    try:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(first_token_then_leave_the_generator_open())
        loop.close()
        for _ in range(1000):
            if not engine.running:
                break
            time.sleep(0.01)
        assert aeng.healthy and not engine.running
        assert engine.stats["generation_tokens"] < 400
        tokens = asyncio.run(collect())
        [want] = LLM(model, tokenizer, max_num_seqs=1).generate([ids], short)
        assert tokens == want.outputs[0].token_ids
    finally:
        aeng.shutdown()


def test_warm_up_runs_every_prefill_shape_even_when_max_model_len_is_shorter_than_a_chunk(model64):
    """warm_up() with a chunk (64) longer than max_model_len (40): every shape runs, the staging rows are left
    clean, and the engine's greedy output still equals the oracle afterwards."""
    engine = Engine(model64, max_num_seqs=2, max_model_len=40, prefill_chunk_size=64, max_prefill_batch=2)
    before = [t[:engine.pool.num_slots].clone() for t in engine.params.tensors()]
    assert engine.warm_up() >= 0
    assert all(torch.equal(t[:engine.pool.num_slots], b) for t, b in zip(engine.params.tensors(), before))
    prompts = prompts_of([30, 7], 64, seed=5)
    reqs = [engine.add_request(p, SamplingParams(max_tokens=8, **GREEDY)) for p in prompts]
    run_all(engine, reqs)
    assert [r.output_ids for r in reqs] == [oracle_greedy(model64, p, 8) for p in prompts]


def test_compile_decode_gives_the_same_greedy_tokens(model64):
    """compile_decode=True runs the decode step through torch.compile (inductor): the same tokens as the oracle
    (float64: fusing cannot flip an argmax)."""
    engine = Engine(model64, max_num_seqs=1, compile_decode=True)
    [prompt] = prompts_of([11], 64, seed=9)
    req = engine.add_request(prompt, SamplingParams(max_tokens=6, **GREEDY))
    run_all(engine, [req])
    assert req.output_ids == oracle_greedy(model64, prompt, 6)


def test_run_interrupted_cancels_its_requests_and_the_engine_serves_on(model64):
    """Engine.run: an exception mid-run (here Ctrl-C from a request's callback) aborts the run's requests and
    leaves the engine empty; the next run's greedy output is the oracle's."""
    engine = Engine(model64, max_num_seqs=2, prefill_chunk_size=16)
    prompts = prompts_of([12, 30], 64, seed=4)

    def interrupt(req):
        if len(req.output_ids) == 3:
            raise KeyboardInterrupt

    reqs = [engine.add_request(prompts[0], SamplingParams(max_tokens=20, **GREEDY), on_update=interrupt),
            engine.add_request(prompts[1], SamplingParams(max_tokens=20, **GREEDY))]
    with pytest.raises(KeyboardInterrupt):
        engine.run(reqs)
    assert not engine.has_work() and all(r.finish_reason == "abort" for r in reqs)
    again = engine.add_request(prompts[1], SamplingParams(max_tokens=9, **GREEDY))
    engine.run([again])
    assert again.output_ids == oracle_greedy(model64, prompts[1], 9)
