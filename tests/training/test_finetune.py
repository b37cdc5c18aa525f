"""SFT masks, the DPO loss, LoRA merging and saving, and both fine-tuning tasks through the trainer."""

import copy
import json
import math
import os

import pytest
import torch
from helpers import EPS32, assert_model_as_accurate, assert_sum_as_accurate, float64_copy

from hymba import HymbaConfig, HymbaForCausalLM
from hymba.tokenizer import load_tokenizer
from hymba.training import checkpointing as C
from hymba.training.config import LoraSection, TrainConfig
from hymba.training.dpo import dpo_loss, sequence_logps
from hymba.training.sft import IGNORE, tokenize_chat
from hymba.training.trainer import Trainer

DATA = os.path.join(os.path.dirname(__file__), "data")
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven is prime."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Thirteen."},
]


@pytest.fixture(scope="module")
def base_checkpoint(prepared, tmp_path_factory):
    """A tiny model (with the trained tokenizer and its chat template) to fine-tune."""
    from training_helpers import tiny_config

    out = str(tmp_path_factory.mktemp("base") / "run")
    Trainer(tiny_config(prepared, out, train={"max_steps": 2}), print_fn=lambda s: None).fit()
    return C.latest_checkpoint(out)


# ---- SFT masks -------------------------------------------------------------------------------------------------------
def test_sft_labels_exactly_the_assistant_replies_with_our_template(prepared):
    tok = load_tokenizer(os.path.join(prepared, "tokenizer"))
    ids, labels = tokenize_chat(tok, CONVERSATION)
    assert ids == tok.apply_chat_template(CONVERSATION, tokenize=True)  # what `hymba chat` would feed the model
    learned = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels))
    # independent reference: each reply (our template ends it with EOS) tokenized on its own
    expected = []
    for reply in ("Seven is prime.", "Thirteen."):
        expected += tok.backend.encode(reply + tok.eos_token, add_special_tokens=False).ids
    assert learned == expected
    masked = tok.decode([i for i, lab in zip(ids, labels) if lab == IGNORE], skip_special_tokens=False)
    assert masked == ("<s><|system|>\nBe brief.\n<|user|>\nName a prime number.\n<|assistant|>\n"
                      "<|user|>\nAnother one?\n<|assistant|>\n")


def test_sft_adds_eos_where_the_release_template_has_none(shared_dir):
    tok = load_tokenizer(os.path.join(shared_dir, "hymba-1.5b"))
    ids, labels = tokenize_chat(tok, CONVERSATION)
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=True)
    # the rendered conversation, with EOS inserted after each reply's closing newline
    assert [i for i in ids] == _with_eos_after_replies(tok, rendered, labels)
    spans, current = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE:
            current.append(i)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    assert len(spans) == 2
    for span, reply in zip(spans, ("Seven is prime.", "Thirteen.")):
        assert span[-1] == tok.eos_token_id == 2
        assert tok.decode(span[:-1]) == reply + "\n"  # the template closes a reply with a newline
    masked = [i for i, lab in zip(ids, labels) if lab == IGNORE]
    assert tok.eos_token_id not in masked
    assert "Name a prime number." in tok.decode(masked) and "Seven" not in tok.decode(masked)


def _with_eos_after_replies(tok, rendered, labels):
    """Rebuild ids from the rendered ids: an EOS follows each labelled run (the reply)."""
    out, j = [], 0
    for k, lab in enumerate(labels):
        if lab == tok.eos_token_id and (k == 0 or labels[k - 1] != IGNORE) and (j >= len(rendered) or rendered[j] != lab):
            out.append(lab)
            continue
        out.append(rendered[j])
        j += 1
    assert j == len(rendered)
    return out


def test_sft_loss_counts_only_assistant_tokens(prepared, base_checkpoint):
    from hymba.training.sft import SFTTask

    cfg = TrainConfig.from_dict({"task": "sft", "model": {"init_from": base_checkpoint},
                                 "data": {"path": os.path.join(DATA, "chat.jsonl"), "seq_len": 128}})
    task = SFTTask()
    from hymba.training.distributed import DistInfo

    task.prepare(cfg, DistInfo())
    batch = task.collate(task.train[:3])
    model = HymbaForCausalLM.from_pretrained(base_checkpoint)
    loss, _ = task.loss(model, batch)
    # by hand: -log p summed over the labelled positions, each row alone and unpadded (float32 and float64 models)
    terms = {model: [], float64_copy(model): []}
    for ids, labels in task.train[:3]:
        for m, nll in terms.items():
            logp = torch.log_softmax(m(torch.tensor([ids])).logits[0].double(), -1)
            nll += [-logp[t - 1, labels[t]] for t in range(1, len(ids)) if labels[t] != IGNORE]
    terms32, terms64 = (torch.stack(t) for t in terms.values())
    assert task.count(batch) == len(terms32)
    assert_sum_as_accurate(loss.item(), terms32, terms64)


def test_sft_rejects_bad_conversations(prepared, tmp_path, base_checkpoint):
    from hymba.training.data import DataError
    from hymba.training.distributed import DistInfo
    from hymba.training.sft import SFTTask

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    cfg = TrainConfig.from_dict({"task": "sft", "model": {"init_from": base_checkpoint}, "data": {"path": str(bad)}})
    with pytest.raises(DataError, match=r"bad.jsonl:1: the conversation has no assistant message"):
        SFTTask().prepare(cfg, DistInfo())
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"messages": [{"role": "user", "content": "x " * 300},
                                             {"role": "assistant", "content": "ok"}]}) + "\n")
    cfg = TrainConfig.from_dict({"task": "sft", "model": {"init_from": base_checkpoint},
                                 "data": {"path": str(long), "seq_len": 64}})
    with pytest.raises(DataError, match=r"long.jsonl:1: \d+ tokens, more than data.seq_len=64"):
        SFTTask().prepare(cfg, DistInfo())


# ---- DPO --------------------------------------------------------------------------------------------------------------
def test_dpo_loss_by_hand():
    pc, pr = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])
    loss, margin = dpo_loss(pc, pr, rc, rr, beta=0.1)
    # pair 0: m = (-1 + 2) - 0 = 1 -> beta m = 0.1; pair 1: m = (-3 + 1) - 0 = -2 -> -0.2
    # (float32 values of a few operations: approx's default rel 1e-6 ~ 8 eps32 covers their rounding)
    assert margin.tolist() == pytest.approx([0.1, -0.2])
    assert loss.tolist() == pytest.approx([math.log(1 + math.exp(-0.1)), math.log(1 + math.exp(0.2))])
    smoothed, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.25)
    assert smoothed[0].item() == pytest.approx(0.75 * math.log(1 + math.exp(-0.1)) + 0.25 * math.log(1 + math.exp(0.1)))


def test_sequence_logps_against_a_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 1, IGNORE], [IGNORE, 4, 4, 0, 6]])
    expected = []
    for b in range(2):
        s = 0.0
        for t in range(1, 5):
            if labels[b, t] != IGNORE:
                row = logits[b, t - 1].double()
                s += (row[labels[b, t]] - torch.logsumexp(row, 0)).item()
        expected.append(s)
    # float32 cross entropy against float64 on the same logits: each of <= 4 terms within a few eps32 of
    # (|logit|max + log V)
    bound = 4 * 4 * EPS32 * (logits.abs().max().item() + math.log(7))
    assert sequence_logps(logits, labels).tolist() == pytest.approx(expected, rel=0, abs=bound)


def test_model_sequence_logps_equal_those_of_its_logits():
    """The DPO task scores sequences through the model's memory-lean loss path: the same sums as from logits."""
    from helpers import randomized, small_config

    from hymba import HymbaForCausalLM
    from hymba.training.dpo import model_sequence_logps

    torch.manual_seed(0)
    model = randomized(HymbaForCausalLM(small_config(vocab_size=50))).double()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    labels = torch.tensor([[IGNORE, IGNORE, 3, 1, 7, 2], [IGNORE, 4, 4, 0, IGNORE, IGNORE]])
    logits = model(ids, attention_mask=mask).logits
    from_logits = sequence_logps(logits, labels).double()
    # sequence_logps rounds the logits to float32 and works there: each of <= 4 terms within a few eps32 of
    # (|logit|max + log V), while the lean path stays in float64
    bound = 4 * 4 * EPS32 * (logits.abs().max().item() + math.log(50))
    torch.testing.assert_close(model_sequence_logps(model, ids, mask, labels), from_logits, rtol=0, atol=bound)


def test_dpo_task_loss_matches_a_hand_computation(prepared, base_checkpoint):
    from hymba.training.distributed import DistInfo
    from hymba.training.dpo import DPOTask

    cfg = TrainConfig.from_dict({"task": "dpo", "model": {"init_from": base_checkpoint},
                                 "data": {"path": os.path.join(DATA, "prefs.jsonl"), "seq_len": 128},
                                 "dpo": {"beta": 0.5}})
    task = DPOTask()
    task.prepare(cfg, DistInfo())
    policy = HymbaForCausalLM.from_pretrained(base_checkpoint)
    task.attach(policy, cfg, DistInfo())
    batch = task.collate(task.train[:2])
    # at the start the policy is its own reference: every pair costs exactly log 2 (the reference is a copy
    # computing the same numbers, so m = 0), rounded to float32: an eps32 or two, inside rel 1e-6 (~8 eps32)
    loss, metrics = task.loss(policy, batch)
    assert loss.item() == pytest.approx(2 * math.log(2), rel=1e-6)
    # move the policy away from the reference and compute the loss by hand
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    loss, metrics = task.loss(policy, batch)

    def logp(model, ids, labels):
        out = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        return torch.stack([out[t - 1, labels[t]] for t in range(1, len(ids)) if labels[t] != IGNORE])

    policy64, reference64 = float64_copy(policy), float64_copy(task.reference)

    def pair_terms(policy, reference, chosen, rejected):
        (c_ids, c_lab), (r_ids, r_lab) = chosen, rejected
        return [logp(policy, c_ids, c_lab), logp(policy, r_ids, r_lab),
                logp(reference, c_ids, c_lab), logp(reference, r_ids, r_lab)]

    expected, wins, ref_err, summing = 0.0, 0, 0.0, 0.0
    for chosen, rejected in task.train[:2]:
        t32 = pair_terms(policy, task.reference, chosen, rejected)
        t64 = pair_terms(policy64, reference64, chosen, rejected)
        m32, m64 = ((t[0].sum() - t[1].sum() - t[2].sum() + t[3].sum()).item() for t in (t32, t64))
        expected += math.log(1 + math.exp(-0.5 * m64))
        wins += m32 > 0
        ref_err += sum((a - b).abs().sum().item() for a, b in zip(t32, t64))
        summing += sum(len(t) * EPS32 / 2 * t.abs().sum().item() for t in t64)
    # helpers.assert_sum_as_accurate's bound on the log-prob sums, through the loss's slope |d loss / d m| <= beta
    # = 0.5, plus the loss's own rounding
    assert abs(loss.item() - expected) <= 0.5 * (4 * ref_err + summing) + 4 * EPS32 * expected
    assert metrics["accuracy"].item() == wins
    # only the final assistant turn is scored
    (c_ids, c_lab), _ = task.train[0]
    scored = [i for i, lab in zip(c_ids, c_lab) if lab != IGNORE]
    record = json.loads(open(os.path.join(DATA, "prefs.jsonl")).readline())
    assert task.tokenizer.decode(scored) == record["chosen"]


# ---- LoRA -------------------------------------------------------------------------------------------------------------
def test_lora_merge_and_adapter_round_trip(tmp_path):
    from hymba.training.lora import adapter_state, apply_lora, load_adapter, merge_lora_state, save_adapter

    torch.manual_seed(0)
    config = HymbaConfig.from_preset("tiny")
    base = HymbaForCausalLM(config)
    ids = torch.randint(0, config.vocab_size, (2, 12))
    before = base(ids).logits
    cfg = LoraSection(enabled=True, r=4, alpha=8.0)
    model = apply_lora(copy.deepcopy(base), cfg)
    # B = 0 at the start: the base model's function (the wrapped layers may multiply in other orders)
    assert_model_as_accurate(model(ids).logits, before, base, lambda m: m(ids).logits)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert any("mamba.in_proj.lora_A" in n for n in trainable) and any("down_proj.lora_B" in n for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B" in n:
                p.normal_(std=0.05)
    adapted = model(ids).logits
    assert (adapted - before).abs().max() > 1e-3

    state = {k: v.detach() for k, v in model.state_dict().items()}
    C.export_pretrained(merge_lora_state(state, cfg), config, str(tmp_path / "merged"), None)
    merged = HymbaForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert_model_as_accurate(merged(ids).logits, adapted, model, lambda m: m(ids).logits,
                             copy=lambda m: copy.deepcopy(m).double())

    save_adapter(state, cfg, str(tmp_path / "adapter"))
    assert set(os.listdir(tmp_path / "adapter")) == {"adapter_config.json", "adapter_model.safetensors"}
    assert len(adapter_state(state)) == 2 * 5 * config.num_hidden_layers
    reloaded = load_adapter(copy.deepcopy(base), str(tmp_path / "adapter"))
    assert torch.equal(reloaded(ids).logits, adapted)  # the same weights, saved bit for bit: the same numbers


@pytest.mark.parametrize("lora", [False, True])
def test_sft_and_dpo_through_the_trainer(base_checkpoint, tmp_path, lora):
    common = {"train": {"batch_size": 4, "micro_batch_size": 2, "max_steps": 3, "log_interval": 1,
                        "eval_interval": 0, "eval_batches": 1, "threads": 1, "progress": False,
                        "tensorboard": False, "plot": False},
              "model": {"init_from": base_checkpoint}, "lora": {"enabled": lora, "r": 4},
              "schedule": {"warmup_steps": 1}, "optim": {"lr": 1e-2}}
    sft = TrainConfig.from_dict({**common, "task": "sft", "data": {"path": os.path.join(DATA, "chat.jsonl"),
                                                                  "val_path": os.path.join(DATA, "chat.jsonl"),
                                                                  "seq_len": 128}})
    sft.train.out_dir = str(tmp_path / "sft")
    result = Trainer(sft, print_fn=lambda s: None).fit()
    assert result.steps == 3 and math.isfinite(result.val_loss)
    tuned = result.final_checkpoint
    assert os.path.exists(os.path.join(tuned, "tokenizer.json"))
    assert os.path.isdir(os.path.join(tuned, "adapter")) == lora
    base = HymbaForCausalLM.from_pretrained(base_checkpoint)
    after = HymbaForCausalLM.from_pretrained(tuned)  # merged weights load as a plain model
    changed = {n for (n, a), (_, b) in zip(base.state_dict().items(), after.state_dict().items())
               if not torch.equal(a, b)}
    if lora:  # only the adapted projections moved
        assert changed and all(n.split(".")[-2] in ("in_proj", "out_proj", "gate_proj", "up_proj", "down_proj")
                               for n in changed)
    else:
        assert "model.embed_tokens.weight" in changed

    dpo = TrainConfig.from_dict({**common, "task": "dpo", "model": {"init_from": tuned},
                                 "data": {"path": os.path.join(DATA, "prefs.jsonl"), "seq_len": 128},
                                 "optim": {"lr": 5e-3}})
    dpo.train.max_steps = 5
    dpo.train.out_dir = str(tmp_path / "dpo")
    result = Trainer(dpo, print_fn=lambda s: None).fit()
    from hymba.training.metrics import read_metrics

    train = [r for r in read_metrics(str(tmp_path / "dpo")) if r["kind"] == "train"]
    # policy == reference at step 1 (a copy, or the policy with its zero adapters off): m = 0, log 2 to float32
    assert train[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert train[-1]["loss"] < math.log(2) - 0.05
    assert {"accuracy", "margin", "chosen_reward", "rejected_reward"} <= set(train[-1])
