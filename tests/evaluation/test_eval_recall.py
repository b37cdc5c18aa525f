"""Recall task generators (structure, determinism) and their scoring against direct greedy checks."""

import json

import numpy as np
import pytest
import torch

from hymba.evaluation.recall import (
    MQARDataset,
    RecallSample,
    TokenLayout,
    accuracy_table,
    kv_pairs_samples,
    mqar_samples,
    mqar_text_samples,
    needle_text_samples,
    needle_token_samples,
    score_samples,
    training_batch,
)


def test_mqar_structure():
    layout = TokenLayout(vocab_size=100, first_id=4, num_filler=8)
    samples = mqar_samples(20, vocab_size=100, num_pairs=6, num_queries=4, seq_len=40, seed=7, first_id=4,
                           num_filler=8)
    for s in samples:
        t = s.tokens
        assert len(t) == 40 and min(t) >= 4 and max(t) < 100
        keys, values = t[0:12:2], t[1:12:2]
        assert len(set(keys)) == 6 and set(keys) <= set(layout.key_ids.tolist())
        assert set(values) <= set(layout.value_ids.tolist())
        assert len(s.spans) == 4
        asked = []
        for a, b in s.spans:
            assert b == a + 1 and t[a - 1] in keys
            assert t[a] == values[keys.index(t[a - 1])]  # the value paired with the asked key
            asked.append(t[a - 1])
        assert len(set(asked)) == 4
        rest = [x for i, x in enumerate(t[12:], start=12) if all(i not in (a - 1, a) for a, _ in s.spans)]
        assert set(rest) <= set(layout.filler_ids.tolist())
    assert [s.tokens for s in samples] == [s.tokens for s in mqar_samples(20, vocab_size=100, num_pairs=6,
                                           num_queries=4, seq_len=40, seed=7, first_id=4, num_filler=8)]
    assert samples[0].tokens != mqar_samples(1, vocab_size=100, num_pairs=6, num_queries=4, seq_len=40, seed=8,
                                             first_id=4, num_filler=8)[0].tokens
    with pytest.raises(ValueError, match="shorter than the 20 tokens"):
        mqar_samples(1, vocab_size=100, num_pairs=6, num_queries=4, seq_len=19)
    with pytest.raises(ValueError, match="need 60 distinct keys"):
        mqar_samples(1, vocab_size=100, num_pairs=60)


def test_needle_tokens_structure():
    for haystack in ("filler", "pairs"):
        samples = needle_token_samples(vocab_size=200, context_lengths=[16, 33], depths=[0.0, 0.5, 1.0],
                                       samples_per_cell=3, haystack=haystack, seed=1)
        assert len(samples) == 2 * 3 * 3
        for s in samples:
            t, n, depth = s.tokens, s.info["context_length"], s.info["depth"]
            assert len(t) == n and s.spans == [(n - 1, n)]
            key, value = t[-2], t[-1]
            where = [i for i, x in enumerate(t[:-2]) if x == key]
            assert len(where) == 1 and t[where[0] + 1] == value  # the key occurs once before, with its value
            body = n - 2
            expected = round(depth * (body - 2)) if haystack == "filler" else 2 * round(depth * (body // 2 - 1))
            assert where[0] == expected


def test_training_batch_and_dataset():
    samples = [RecallSample([5, 6, 7, 8], [(3, 4)]), RecallSample([5, 6, 7, 8, 9, 10], [(1, 2), (4, 6)])]
    batch = training_batch(samples, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 0, 0], [5, 6, 7, 8, 9, 10]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert batch["labels"].tolist() == [[-100, -100, -100, 8, -100, -100], [-100, 6, -100, -100, 9, 10]]
    data = MQARDataset(50, seed=3, vocab_size=64, num_pairs=4, seq_len=24)
    assert len(data) == 50 and torch.equal(data[7]["input_ids"], data[7]["input_ids"])
    assert not torch.equal(data[7]["input_ids"], data[8]["input_ids"])
    item = data[7]
    targets = item["labels"] != -100
    assert targets.sum() == 4 and torch.equal(item["labels"][targets], item["input_ids"][targets])
    with pytest.raises(IndexError):
        data[50]


def test_scoring_counts_a_span_only_when_every_token_is_the_argmax(small_model):
    """Against a direct check; then samples built from the model's own greedy continuation are all correct."""
    samples = mqar_samples(6, vocab_size=32000, num_pairs=4, seq_len=20, seed=2)
    got = score_samples(small_model, samples, batch_size=4)
    for s, flags in zip(samples, got):
        with torch.no_grad():
            pred = small_model(torch.tensor([s.tokens])).logits[0].argmax(-1)
        assert flags == [all(int(pred[j - 1]) == s.tokens[j] for j in range(a, b)) for a, b in s.spans]
    prompt = [1, 450, 4996]
    for _ in range(3):
        with torch.no_grad():
            prompt.append(int(small_model(torch.tensor([prompt])).logits[0, -1].argmax()))
    own = RecallSample(prompt, [(3, 6)])
    wrong = RecallSample(prompt[:5] + [(prompt[5] + 1) % 32000], [(3, 6)])
    assert score_samples(small_model, [own, wrong]) == [[True], [False]]


def test_accuracy_table_by_hand():
    samples = [RecallSample([1, 2], [(1, 2)], {"len": 8, "depth": 0.5}),
               RecallSample([1, 2], [(1, 2)], {"len": 8, "depth": 0.5}),
               RecallSample([1, 2, 3], [(1, 2), (2, 3)], {"len": 16, "depth": 0.0})]
    rows = accuracy_table(samples, [[True], [False], [True, True]], by=["len"])
    assert rows == [{"len": 8, "accuracy": 0.5, "answers": 2, "samples": 2},
                    {"len": 16, "accuracy": 1.0, "answers": 2, "samples": 1}]
    assert accuracy_table(samples, [[True], [False], [True, True]])[0]["accuracy"] == 0.75


def test_text_tasks_put_the_answer_tokens_in_the_span(tokenizer, eval_data_dir):
    for s in mqar_text_samples(tokenizer, 3, num_pairs=5, seed=4):
        text = tokenizer.decode(s.tokens)
        assert len(s.spans) == 5
        for a, b in s.spans:
            value = tokenizer.decode(s.tokens[a:b]).strip()
            assert value.isdigit() and len(value) == 4
            key = tokenizer.decode(s.tokens[:a]).rsplit("\n", 1)[1].rstrip(":")
            assert f"{key}: {value}\n" in text.split("Now recall them.")[0]
    needles = needle_text_samples(tokenizer, context_lengths=[60, 200], depths=[0.0, 1.0], samples_per_cell=2, seed=0)
    for s in needles:
        text = tokenizer.decode(s.tokens)
        (a, b), = s.spans
        number = tokenizer.decode(s.tokens[a:b]).strip()
        assert b == len(s.tokens) and f"The secret number is {number}." in text
        assert s.info["context_length"] - 15 <= len(s.tokens) <= s.info["context_length"]
        before, after = text.split(f"The secret number is {number}.")
        if s.info["depth"] == 0.0:
            assert before == "" and len(after) > 100  # first, then the filler
        else:
            assert after.startswith("\nWhat is the secret number?") and len(before) > 100
    kv = kv_pairs_samples(tokenizer, eval_data_dir, ["beginning", "end"], limit=2)
    rows = [json.loads(line) for line in open(f"{eval_data_dir}/kv_pairs_end_len_2048.jsonl")][:2]
    assert [s.info["position"] for s in kv] == ["beginning"] * 2 + ["end"] * 2
    for s, row in zip(kv[2:], rows):
        (a, b), = s.spans
        assert tokenizer.decode(s.tokens[a:b]) == row["answer"] and b == len(s.tokens)
        assert tokenizer.decode(s.tokens[:a]).endswith("Corresponding Value:")


def test_recall_command_writes_json_markdown_and_plot(checkpoint_dir, tmp_path):
    from hymba.cli import main

    out = tmp_path / "recall"
    assert main(["recall", "--model", checkpoint_dir, "--task", "needle", "--token-level", "--context-lengths",
                 "16,32", "--depths", "0,1", "--samples", "2", "--out", str(out), "--device", "cpu"]) == 0
    summary = json.loads((out / "recall_needle.json").read_text())
    assert [(r["context_length"], r["depth"]) for r in summary["table"]] == [(16, 0.0), (16, 1.0), (32, 0.0),
                                                                            (32, 1.0)]
    assert summary["answers"] == 8 and 0.0 <= summary["accuracy"] <= 1.0
    assert (out / "recall_needle.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| context_length | depth | accuracy |" in (out / "recall_needle.md").read_text()
    assert main(["recall", "--model", checkpoint_dir, "--task", "kv-pairs", "--token-level"]) == 2


def test_layout_rejects_a_vocabulary_too_small():
    with pytest.raises(ValueError, match="need at least 4"):
        TokenLayout(vocab_size=22, first_id=4, num_filler=16)
    assert np.array_equal(TokenLayout(30, 4, 2).key_ids, np.arange(6, 18))
