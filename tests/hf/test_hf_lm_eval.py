"""lm-evaluation-harness's built-in `hf` model on a Hymba checkpoint gives the project's adapter's numbers, and the
documented command (`python -m hymba.hf.harness`) runs it."""

import json
import math
import os

import pytest
import torch
from helpers import SHARED

from hymba.evaluation.lm_eval_adapter import HymbaLM
from hymba.evaluation.tasks import TASKS_DIR
from hymba.hf import HymbaHFForCausalLM, HymbaTokenizer

# isort: split
# lm-eval after the adapter, which sets the offline switches before lm-eval reads them
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

PAIRS = [("Question: What do bees make?\nAnswer:", " honey"),
         ("The capital of France is", " Paris, a city on the Seine."),
         ("Roof shingle removal: A man is sitting on a roof. He", " starts pulling up roofing on a roof."),
         ("", "An empty context is scored after the BOS token.")]
TEXT = ("Hymba runs attention heads and state-space heads side by side in every layer; the meta tokens give "
        "them somewhere to look.")


def instances(kind, args_list):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(args_list)]


@pytest.fixture(scope="module")
def models(hf_dir):
    hf = HFLM(pretrained=hf_dir, device="cpu", dtype="float32", batch_size=2)
    assert isinstance(hf.model, HymbaHFForCausalLM) and isinstance(hf.tokenizer, HymbaTokenizer)
    return hf, HymbaLM(pretrained=hf_dir, device="cpu", dtype="float32", batch_size=2)


def test_loglikelihoods_and_generations_equal_the_adapters(models):
    """Same strings, same tokens, same scores: float32 forwards of differently padded batches, ~1e-5 apart."""
    hf, ours = models
    got = hf.loglikelihood(instances("loglikelihood", PAIRS), disable_tqdm=True)
    want = ours.loglikelihood(instances("loglikelihood", PAIRS), disable_tqdm=True)
    for (a, greedy_a), (b, greedy_b) in zip(got, want):
        assert a == pytest.approx(b, abs=1e-4) and greedy_a == greedy_b
    request = [("Hello", {"until": ["\n"], "max_gen_toks": 8, "do_sample": False})]
    assert hf.generate_until(instances("generate_until", request), disable_tqdm=True) == \
        ours.generate_until(instances("generate_until", request), disable_tqdm=True)


def test_rolling_loglikelihood(models, hf_dir):
    """The harness's hf model encodes the text with the tokenizer's BOS and then puts its own prefix BOS in front,
    so by default it also scores a second <s> after the first; with add_bos_token=False it scores what the
    adapter does (the text after one BOS)."""
    hf, ours = models
    (want,) = ours.loglikelihood_rolling(instances("loglikelihood_rolling", [(TEXT,)]), disable_tqdm=True)
    (doubled,) = hf.loglikelihood_rolling(instances("loglikelihood_rolling", [(TEXT,)]), disable_tqdm=True)
    model = hf.model
    with torch.no_grad():
        extra = torch.log_softmax(model(torch.tensor([[1]])).logits[0, -1].double(), -1)[1].item()
    assert doubled == pytest.approx(want + extra + _second_bos_shift(model, TEXT, hf), abs=1e-4)
    single = HFLM(pretrained=hf_dir, device="cpu", dtype="float32", batch_size=2, add_bos_token=False)
    (got,) = single.loglikelihood_rolling(instances("loglikelihood_rolling", [(TEXT,)]), disable_tqdm=True)
    assert got == pytest.approx(want, abs=1e-4)


def _second_bos_shift(model, text, hf):
    """What the extra <s> changes in the text's own log-probabilities (the text then follows "<s><s>")."""
    ids = hf.tokenizer.encode(text, add_special_tokens=False)
    with torch.no_grad():
        one = torch.log_softmax(model(torch.tensor([[1] + ids])).logits[0].double(), -1)
        two = torch.log_softmax(model(torch.tensor([[1, 1] + ids])).logits[0].double(), -1)
    return sum(two[j + 1, ids[j]].item() - one[j, ids[j]].item() for j in range(len(ids)))


def test_documented_command_runs_a_task(hf_dir, tmp_path, models, monkeypatch):
    """`python -m hymba.hf.harness run --model hf ...` (lm-eval's own command line, Hymba registered): every
    logged loglikelihood equals the adapter's on the same strings."""
    from hymba.hf.harness import main

    data = os.path.join(SHARED, "data", "eval")
    main(["run", "--model", "hf", "--model_args", f"pretrained={hf_dir},dtype=float32", "--device", "cpu",
          "--tasks", "arc_easy", "--include_path", TASKS_DIR, "--metadata", json.dumps({"data_dir": data}),
          "--limit", "2", "--batch_size", "4", "--log_samples", "--output_path", str(tmp_path)])
    samples = [json.loads(line) for path in tmp_path.rglob("samples_arc_easy_*.jsonl") for line in path.open()]
    assert len(samples) == 2
    _, ours = models
    for sample in samples:
        pairs = [(arg["arg_0"], arg["arg_1"]) for arg in sample["arguments"].values()]  # {"gen_args_0": {...}}
        want = ours.loglikelihood(instances("loglikelihood", pairs), disable_tqdm=True)
        for resp, (logprob, _) in zip(sample["resps"], want):
            assert float(resp[0][0]) == pytest.approx(logprob, abs=1e-4) and not math.isnan(logprob)
