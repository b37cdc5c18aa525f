"""Sliding-window perplexity against a direct token-by-token computation."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_sum_as_accurate

from hymba.evaluation.perplexity import sliding_windows, text_perplexity, token_nll


def test_windows_by_hand():
    # 12 tokens, the model reads 4 at a time, 2 new per window: targets 1-4 first, then 5-6, 7-8, 9-10, 11.
    assert sliding_windows(12, max_length=4, stride=2) == [(0, 5, 1), (2, 7, 5), (4, 9, 7), (6, 11, 9), (7, 12, 11)]
    assert sliding_windows(3, max_length=8, stride=4) == [(0, 3, 1)]
    assert sliding_windows(1, max_length=8, stride=4) == []
    for n, L, S in [(50, 8, 3), (50, 8, 8), (50, 8, 1), (9, 8, 5)]:
        windows = sliding_windows(n, L, S)
        targets = [j for _, end, first in windows for j in range(first, end)]
        assert targets == list(range(1, n))  # each token after the first, once, in order
        assert all(end - 1 - begin <= L and begin < first for begin, end, first in windows)
    with pytest.raises(ValueError, match="stride must be in"):
        sliding_windows(10, 4, 5)


def direct_nll(model, tokens, L, S):
    """Token by token: token j is predicted from the L tokens before the end of the block that scores it
    (blocks: the first L targets, then S at a time), each with a forward pass of its own. The nll of each token."""
    n, terms = len(tokens), []
    for j in range(1, n):
        block_end = min(n, L + 1 if j <= L else L + 1 + ((j - L - 1) // S + 1) * S)
        begin = max(0, block_end - 1 - L)
        with torch.no_grad():
            logits = model(torch.tensor([tokens[begin:j]])).logits[0, -1].double()
        terms.append(-torch.log_softmax(logits, -1)[tokens[j]])
    return torch.stack(terms)


@pytest.mark.parametrize("L,S", [(10, 3), (10, 10), (6, 1)])
def test_strided_nll_equals_token_by_token_computation(small_model, small_exact, L, S):
    tokens = torch.randint(3, 32000, (33,), generator=torch.Generator().manual_seed(L * S)).tolist()
    nll, scored, _ = token_nll(small_model, tokens, max_length=L, stride=S, batch_size=3)
    assert scored == len(tokens) - 1
    assert_sum_as_accurate(nll, direct_nll(small_model, tokens, L, S), direct_nll(small_exact, tokens, L, S))


def test_one_window_is_the_mean_loss_of_a_plain_forward(small_model, small_exact, tokenizer):
    text = "The library keeps its oldest maps in a cool, dry room.\r\nSnow covered the roads.\r\n"
    result = text_perplexity(small_model, tokenizer, text, max_length=100, stride=50)
    ids = torch.tensor([tokenizer.encode(text.replace("\r\n", "\n"))])
    assert result.tokens == ids.shape[1] - 1 and result.windows == 1
    with torch.no_grad():  # the plain forward's per-token losses, in float32 and float64
        terms32, terms64 = (F.cross_entropy(m(ids).logits[0, :-1].double(), ids[0, 1:], reduction="none")
                            for m in (small_model, small_exact))
    assert_sum_as_accurate(result.nll / result.tokens, terms32 / result.tokens, terms64 / result.tokens)
    assert result.words == 15 and result.bytes == len(text.replace("\r\n", "\n").encode())
    # float64 arithmetic on the same numbers: approx's default (rel 1e-6) is far above its rounding
    assert result.perplexity == pytest.approx(math.exp(result.nll / result.tokens))
    assert result.bits_per_byte == pytest.approx(result.nll / math.log(2) / result.bytes)
    # the same tokens (CRLF becomes LF before encoding), the same computation: exactly equal
    assert text_perplexity(small_model, tokenizer, text.replace("\r\n", "\n"), 100, 50).nll == result.nll


def test_perplexity_command_on_wikitext(checkpoint_dir, eval_data_dir, tmp_path):
    from hymba.cli import main

    head = tmp_path / "wikitext_head.txt"
    with open(f"{eval_data_dir}/wikitext2_test.txt", "rb") as f:
        head.write_bytes(f.read(3000))
    out = tmp_path / "ppl.json"
    assert main(["perplexity", "--model", checkpoint_dir, "--text", str(head), "--max-length", "128",
                 "--stride", "64", "--out", str(out), "--device", "cpu"]) == 0
    r = json.loads(out.read_text())
    assert r["windows"] > 3 and r["max_length"] == 128 and r["stride"] == 64
    assert r["perplexity"] == pytest.approx(math.exp(r["nll"] / r["tokens"]))  # float64 arithmetic, as above
    assert main(["perplexity", "--model", checkpoint_dir, "--text", str(tmp_path / "missing.txt")]) == 2
