"""Teacher-forced scoring against the model's own logits, one unpadded sequence at a time, in float64."""

import pytest
import torch
from helpers import assert_model_as_accurate

from hymba.evaluation.scoring import encode_pair, score_targets


def direct(model, tokens, first):
    """log p(tokens[j] | tokens[:j]) and argmax flags for j >= first, from one plain forward of the sequence."""
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    js = range(first, len(tokens))
    return (torch.tensor([logp[j - 1, tokens[j]].item() for j in js], dtype=torch.float64),
            torch.tensor([int(logp[j - 1].argmax()) == tokens[j] for j in js]))


def test_batched_scores_equal_one_sequence_at_a_time(small_model):
    g = torch.Generator().manual_seed(3)
    requests = []
    for length, first in [(5, 1), (23, 20), (11, 4), (2, 1), (17, 17), (9, 3), (30, 1)]:
        requests.append((torch.randint(3, 32000, (length,), generator=g).tolist(), first))
    scores = score_targets(small_model, requests, batch_size=3, head_chunk=7)  # chunks cut across rows
    for (tokens, first), s in zip(requests, scores):
        logp, greedy = direct(small_model, tokens, first)
        assert s.logprobs.shape == logp.shape
        assert torch.equal(s.greedy, greedy)

    def all_scores(model):  # every request's scores in one vector: single ones are too few to compare normwise
        return torch.cat([direct(model, tokens, first)[0] for tokens, first in requests])
    assert_model_as_accurate(torch.cat([s.logprobs for s in scores]), all_scores(small_model), small_model,
                             all_scores)


def test_greedy_flag_marks_exactly_the_argmax_continuations(small_model):
    """Extend a prompt by its own argmax tokens: every target is greedy; change one and only that one is not."""
    tokens = [1, 450, 4996, 17354]
    for _ in range(4):
        with torch.no_grad():
            tokens.append(int(small_model(torch.tensor([tokens])).logits[0, -1].argmax()))
    (s,) = score_targets(small_model, [(tokens, 4)])
    assert s.all_greedy and s.greedy.tolist() == [True] * 4
    changed = tokens[:5] + [(tokens[5] + 1) % 32000] + tokens[6:]
    (s,) = score_targets(small_model, [(changed, 4)])
    assert s.greedy[:2].tolist() == [True, False] and not s.all_greedy


def test_bad_requests_are_refused_with_the_reason(small_model):
    with pytest.raises(ValueError, match="first_target must be in"):
        score_targets(small_model, [([1, 2, 3], 0)])
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        score_targets(small_model, [([1, 40000], 1)])
    with pytest.raises(ValueError, match="more than max_length=3"):
        score_targets(small_model, [([1, 2, 3, 4, 5], 1)], max_length=3)


def test_encode_pair_splits_like_lm_eval(tokenizer):
    """Hymba's tokenizer (Llama-2): BOS first; the context's trailing space joins the continuation."""
    ctx, cont = encode_pair(tokenizer, "Question: Is the sky blue?\nAnswer:", " yes")
    assert ctx[0] == tokenizer.bos_token_id and tokenizer.decode(cont) == "yes"
    assert ctx + cont == tokenizer.encode("Question: Is the sky blue?\nAnswer: yes")
    moved = encode_pair(tokenizer, "Question: Is the sky blue?\nAnswer: ", "yes")
    assert moved == (ctx, cont)
    ctx, cont = encode_pair(tokenizer, "", "Hello world")
    assert ctx == [tokenizer.bos_token_id] and cont == tokenizer.encode("Hello world", add_special_tokens=False)
