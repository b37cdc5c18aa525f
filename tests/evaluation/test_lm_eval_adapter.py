"""HymbaLM (lm-eval's model interface) against direct computations with the model on the same strings, and a
`hymba eval` run end to end on a small checkpoint."""

import json
import math

import pytest
import torch
from helpers import assert_sum_as_accurate
from lm_eval.api.instance import Instance  # noqa: E402  (after the adapter set the offline switches)

from hymba.evaluation.lm_eval_adapter import HymbaLM


def instances(kind, args_list):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(args_list)]


def sequence_logprob(model, ids, first):
    """(log p(ids[j] | ids[:j]) for j >= first, all argmax?) from one unpadded forward, in float64: the terms of
    a log-likelihood."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    terms = torch.stack([logp[j - 1, ids[j]] for j in range(first, len(ids))])
    greedy = all(int(logp[j - 1].argmax()) == ids[j] for j in range(first, len(ids)))
    return terms, greedy


def assert_loglikelihood(got, model, exact, ids, first):
    """A float32 log-likelihood against its terms from plain forwards of the float32 and float64 models."""
    assert_sum_as_accurate(got, sequence_logprob(model, ids, first)[0], sequence_logprob(exact, ids, first)[0])


class Loglikelihoods:
    """Float32 log-likelihoods and their float32 and float64 terms, checked together (pooled: a continuation
    of a token or two is too short for a bound of its own)."""

    def __init__(self, model, exact):
        self.model, self.exact, self.got, self.terms32, self.terms64 = model, exact, [], [], []

    def add(self, got, ids, first):
        self.got.append(got)
        self.terms32.append(sequence_logprob(self.model, ids, first)[0])
        self.terms64.append(sequence_logprob(self.exact, ids, first)[0])
        return self.terms32[-1]

    def check(self):
        assert_sum_as_accurate(self.got, self.terms32, self.terms64)


PAIRS = [("Question: What do bees make?\nAnswer:", " honey"),
         ("The capital of France is", " Paris, a city on the Seine."),
         ("Roof shingle removal: A man is sitting on a roof. He", " starts pulling up roofing on a roof."),
         ("", "An empty context is scored after the BOS token."),
         ("Trailing space moves to the continuation ", "here")]


def test_loglikelihood_equals_direct_computation(small_model, small_exact, tokenizer):
    lm = HymbaLM(model=small_model, tokenizer=tokenizer, batch_size=2)
    got = lm.loglikelihood(instances("loglikelihood", PAIRS), disable_tqdm=True)
    loglikelihoods = Loglikelihoods(small_model, small_exact)
    for (context, continuation), (logprob, greedy) in zip(PAIRS, got):
        if context:
            text = context.rstrip() + context[len(context.rstrip()):] + continuation
            ids = tokenizer.encode(text)
            first = len(tokenizer.encode(context.rstrip()))
        else:
            ids = [tokenizer.bos_token_id] + tokenizer.encode(continuation, add_special_tokens=False)
            first = 1
        loglikelihoods.add(logprob, ids, first)
        assert greedy == sequence_logprob(small_model, ids, first)[1]
        assert logprob < 0
    loglikelihoods.check()


def test_long_contexts_lose_their_start_and_are_counted(small_model, small_exact, tokenizer):
    # a continuation of a few tokens: a single token's log-probability is too few terms for a float32 bound
    context, continuation = " ".join(["word"] * 40), " end of the list"
    lm = HymbaLM(model=small_model, tokenizer=tokenizer, max_length=12)
    ((logprob, _),) = lm.loglikelihood(instances("loglikelihood", [(context, continuation)]), disable_tqdm=True)
    whole = tokenizer.encode(context + continuation)
    n_cont = len(whole) - len(tokenizer.encode(context))
    kept = whole[-13:]  # max_length inputs + the last target
    assert_loglikelihood(logprob, small_model, small_exact, kept, len(kept) - n_cont)
    assert lm.truncated_requests == 1


TEXT = ("Hymba runs attention heads and state-space heads side by side in every layer; the meta tokens give "
        "them somewhere to look.")


def test_rolling_loglikelihood_in_one_window_is_the_whole_text_after_bos(small_model, small_exact, tokenizer):
    lm = HymbaLM(model=small_model, tokenizer=tokenizer)
    (total,) = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(TEXT,)]), disable_tqdm=True)
    ids = [tokenizer.bos_token_id] + tokenizer.encode(TEXT, add_special_tokens=False)
    assert_loglikelihood(total, small_model, small_exact, ids, 1)


def test_rolling_loglikelihood_over_several_windows_follows_lm_evals_rule(small_model, small_exact, tokenizer):
    """Tokens are predicted in blocks of max_length; each block reads the max_length tokens before its end."""
    L = 7
    lm = HymbaLM(model=small_model, tokenizer=tokenizer, max_length=L, batch_size=3)
    (total,) = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(TEXT,)]), disable_tqdm=True)
    s = [tokenizer.bos_token_id] + tokenizer.encode(TEXT, add_special_tokens=False)
    n = len(s) - 1
    terms = {small_model: [], small_exact: []}
    for i in range(1, n + 1):
        block_end = min(((i - 1) // L + 1) * L, n) + 1  # one past the block's last token, in s
        begin = max(0, block_end - 1 - L)
        for model, logps in terms.items():
            with torch.no_grad():
                logits = model(torch.tensor([s[begin:i]])).logits[0, -1].double()
            logps.append(torch.log_softmax(logits, -1)[s[i]])
    assert n > 3 * L
    assert_sum_as_accurate(total, torch.stack(terms[small_model]), torch.stack(terms[small_exact]))


def naive_greedy(model, tokenizer, prompt, max_new):
    ids = tokenizer.encode(prompt)
    new = []
    for _ in range(max_new):
        with torch.no_grad():
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
        if nxt == tokenizer.eos_token_id:
            break
        new.append(nxt)
    return tokenizer.decode(new)


def test_generate_until_is_greedy_decoding_cut_at_the_stop_string(small_model, tokenizer):
    prompts = ["Once upon a time", "The three laws of robotics are", "Q: 2 + 2 =\nA:"]
    full = [naive_greedy(small_model, tokenizer, p, 8) for p in prompts]
    stop = full[1][len(full[1]) // 2:][:2]  # a piece from the middle of the second continuation
    assert stop and stop in full[1]
    lm = HymbaLM(model=small_model, tokenizer=tokenizer, batch_size=2, max_gen_toks=8)
    requests = [(p, {"until": [stop], "do_sample": False}) for p in prompts]
    got = lm.generate_until(instances("generate_until", requests), disable_tqdm=True)
    for text, ref in zip(got, full):
        assert text == ref[:ref.find(stop)] if stop in ref else text == ref
    assert len(got[1]) < len(full[1])


def test_hymba_eval_runs_two_tasks_end_to_end(checkpoint_dir, eval_data_dir, tmp_path, small_model, small_exact,
                                             tokenizer):
    """The command on a checkpoint directory: JSON and markdown written, and every logged loglikelihood and
    accuracy equal to a direct computation on the logged strings."""
    from hymba.cli import main

    out = tmp_path / "results.json"
    code = main(["eval", "--model", checkpoint_dir, "--tasks", "arc_easy,winogrande", "--limit", "3",
                 "--data-dir", eval_data_dir, "--batch-size", "4", "--out", str(out), "--log-samples",
                 "--device", "cpu"])
    assert code == 0
    results = json.loads(out.read_text())
    assert set(results["results"]) == {"arc_easy", "winogrande"}
    assert results["n-samples"]["arc_easy"]["effective"] == 3
    table = (tmp_path / "results.md").read_text()
    assert "| arc_easy | acc_norm |" in table and "| winogrande | acc |" in table
    loglikelihoods = Loglikelihoods(small_model, small_exact)
    for task in ("arc_easy", "winogrande"):
        accs = []
        for sample in results["samples"][task]:
            lls = []
            for (context, continuation), resp in zip(sample["arguments"].values() if isinstance(
                    sample["arguments"], dict) else sample["arguments"], sample["resps"]):
                ids = tokenizer.encode(context + continuation)
                terms = loglikelihoods.add(float(resp[0][0]), ids, len(tokenizer.encode(context)))
                lls.append(terms.sum().item())
            assert len(lls) == (4 if task == "arc_easy" else 2)
            gold = sample["target"] if task == "arc_easy" else int(sample["doc"]["label"])
            accs.append(float(max(range(len(lls)), key=lls.__getitem__) == int(gold)))
            assert sample["acc"] == accs[-1]
        # float64 means of a few 0/1 values: approx's default (rel 1e-6) is far above their rounding
        assert results["results"][task]["acc,none"] == pytest.approx(sum(accs) / len(accs))
        assert not math.isnan(results["results"][task]["acc,none"])
    loglikelihoods.check()


def test_chat_template_wraps_the_prompts(small_model, tokenizer, eval_data_dir):
    """Instruct checkpoints: the tokenizer's template around the question, the answer after the assistant tag."""
    from hymba.evaluation.lm_eval_adapter import evaluate

    lm = HymbaLM(model=small_model, tokenizer=tokenizer, batch_size=4)
    results = evaluate(lm, ["arc_easy"], eval_data_dir, limit=1, log_samples=True, apply_chat_template=True)
    (sample,) = results["samples"]["arc_easy"]
    args = sample["arguments"].values() if isinstance(sample["arguments"], dict) else sample["arguments"]
    context, continuation = next(iter(args))
    question = "Question: Which statement best explains why photosynthesis is the foundation of most food webs?"
    assert context == tokenizer.apply_chat_template([{"role": "user", "content": question + "\nAnswer:"}],
                                                    add_generation_prompt=True)
    assert context.endswith("<extra_id_1>Assistant\n") and continuation.strip().startswith("Sunlight")


def greedy_until(model, tokenizer, prompt_ids, max_new, until, eot):
    """The old generate_until rule by full forwards: argmax tokens until EOS, `max_new` tokens, or the generated
    text (special tokens included) holding a stop string; then that text without EOS, cut at the first stop."""
    new = []
    head = tokenizer.decode(prompt_ids, skip_special_tokens=False)
    for _ in range(max_new):
        with torch.no_grad():
            new.append(int(model(torch.tensor([prompt_ids + new])).logits[0, -1].argmax()))
        if new[-1] == eot:
            new.pop()
            break
        text = tokenizer.decode(prompt_ids + new, skip_special_tokens=False)[len(head):]
        if any(s and s in text for s in until):
            break
    text = tokenizer.decode(new)
    return text[:min((text.find(s) for s in until if s and s in text), default=len(text))]


def old_path(model, tokenizer, prompt_ids, max_new, until, eot):
    """What the adapter did before the engine: the one-call generate with the same stops, then the same cut."""
    from hymba.engine.generate import generate

    out = generate(model, torch.tensor([prompt_ids]), max_new_tokens=max_new, eos_token_id=eot,
                   stop_strings=[s for s in until if s] or None, tokenizer=tokenizer, return_dict=True)
    new = out.sequences[0, len(prompt_ids):len(prompt_ids) + out.num_new_tokens[0]].tolist()
    if out.finish_reasons[0] == "eos":
        new = new[:-1]
    text = tokenizer.decode(new)
    return text[:min((text.find(s) for s in until if s and s in text), default=len(text))]


def test_generate_until_runs_every_request_through_one_engine_as_greedy_decoding(small_model, tokenizer):
    """Mixed lengths, new-token budgets and stop strings, more requests than slots, and a prompt cut from the
    left to fit max_length: each text is the full-forward greedy one, and the old path's."""
    torch.manual_seed(0)
    words = ["bees", "honey", "river", "Paris", "state", "space", "model", "tea", "roof", "the", "of", "and"]
    prompts = [" ".join(words[int(i)] for i in torch.randint(len(words), (n,))) for n in (3, 9, 5, 60, 1, 14, 7)]
    lm = HymbaLM(model=small_model, tokenizer=tokenizer, batch_size=3, max_length=48, max_gen_toks=6)
    eot, eos_text = tokenizer.eos_token_id, tokenizer.decode([tokenizer.eos_token_id], skip_special_tokens=False)
    free = [greedy_until(small_model, tokenizer, lm.tok_encode(p), 12, [], eot) for p in prompts[:3]]
    stops = [free[0][3:5], free[1][-4:-2]]  # pieces of real continuations: some requests stop early
    assert all(stops)
    kwargs = [{"until": stops, "max_gen_toks": 12, "do_sample": False}, {"until": [], "do_sample": False},
              {"until": ["\n\n"], "max_gen_toks": 9}]
    requests = [(p, kwargs[n % 3]) for n, p in enumerate(prompts)]
    got = lm.generate_until(instances("generate_until", requests), disable_tqdm=True)
    for (prompt, kw), text in zip(requests, got):
        max_new = kw.get("max_gen_toks", 6)
        ids = lm.tok_encode(prompt)[-(48 - max_new):]
        until = [*kw["until"], eos_text]
        assert text == greedy_until(small_model, tokenizer, ids, max_new, until, eot)
        assert text == old_path(small_model, tokenizer, ids, max_new, until, eot)
    assert len(lm.tok_encode(prompts[3])) > 48 - 12  # that prompt lost its start
    assert len(got[0]) < len(free[0])  # and a stop string cut one
