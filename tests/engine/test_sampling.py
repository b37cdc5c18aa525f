"""The sampling functions against values computed by hand."""

import math

import pytest
import torch

from hymba.engine.sampling import (
    SelectionParams,
    apply_repetition_penalty,
    apply_temperature,
    sampling_probs,
    select_next_tokens,
    suppress_tokens,
    top_k_filter,
    top_p_filter,
)

INF = float("inf")


def logits_of(probs):
    return torch.tensor([[math.log(p) if p > 0 else -INF for p in probs]])


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False], [False, False, True, True]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0], [2.0, -1.0, 0.25, 1.5]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_suppress_tokens_only_in_selected_rows():
    logits = torch.zeros(2, 4)
    out = suppress_tokens(logits, [1, 3], rows=torch.tensor([True, False]))
    assert out.tolist() == [[0.0, -INF, 0.0, -INF], [0.0, 0.0, 0.0, 0.0]]
    assert suppress_tokens(logits, []) is logits


def test_temperature_scales_the_distribution():
    probs = torch.softmax(apply_temperature(torch.tensor([[0.0, math.log(2.0)]]), 0.5), dim=-1)
    # logits / 0.5 = [0, 2 ln 2] -> weights 1 : 4 (float32 default tolerance, rtol 1.3e-6 ~ 11 eps32: a few roundings)
    torch.testing.assert_close(probs, torch.tensor([[0.2, 0.8]]))
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(torch.zeros(1, 2), 0.0)


def test_top_k_keeps_the_k_largest_and_ties_with_the_kth():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, 0.0]])
    assert top_k_filter(logits, 2).tolist() == [[-INF, 3.0, -INF, 3.0, -INF]]
    assert top_k_filter(logits, 3).tolist() == [[-INF, 3.0, 2.0, 3.0, -INF]]
    assert top_k_filter(torch.tensor([[1.0, 2.0, 2.0, 0.0]]), 2).tolist() == [[-INF, 2.0, 2.0, -INF]]
    assert top_k_filter(logits, 0) is logits


@pytest.mark.parametrize("p, kept", [(0.3, [0]), (0.55, [0, 1]), (0.74, [0, 1]), (0.76, [0, 1, 2]), (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    # probabilities 0.5, 0.25, 0.15, 0.1 in a shuffled order: cumulative mass 0.5, 0.75, 0.9, 1.0
    order = [2, 0, 3, 1]  # token 2 is the most likely, then 0, 3, 1
    probs = [0.0] * 4
    for rank, token in enumerate(order):
        probs[token] = [0.5, 0.25, 0.15, 0.1][rank]
    out = top_p_filter(logits_of(probs), p)
    kept_tokens = sorted(order[r] for r in kept)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == kept_tokens


def test_sampling_probs_applies_top_k_then_top_p_on_the_renormalised_distribution():
    params = SelectionParams(do_sample=True, top_k=3, top_p=0.6)
    probs = sampling_probs(logits_of([0.4, 0.3, 0.2, 0.1]), params)
    # top-3 -> 0.4/0.9, 0.3/0.9, 0.2/0.9 = 0.444, 0.333, 0.222; mass before the third is 0.778 >= 0.6 -> drop it
    torch.testing.assert_close(probs, torch.tensor([[4 / 7, 3 / 7, 0.0, 0.0]]))  # float32 default, as above


def test_draws_follow_the_filtered_distribution_and_are_reproducible():
    params = SelectionParams(do_sample=True, temperature=1.0, top_k=3, top_p=0.6)
    logits = logits_of([0.4, 0.3, 0.2, 0.1]).expand(20000, -1)
    draws = select_next_tokens(logits, params, torch.Generator().manual_seed(5))
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert freq[2] == 0 and freq[3] == 0
    # a frequency over 20000 draws has standard deviation sqrt(p (1 - p) / 20000) < 0.0036: 0.015 is 4 of them
    assert abs(freq[0].item() - 4 / 7) < 0.015 and abs(freq[1].item() - 3 / 7) < 0.015
    again = select_next_tokens(logits, params, torch.Generator().manual_seed(5))
    assert torch.equal(draws, again)


def test_greedy_is_argmax_with_the_first_index_on_ties():
    params = SelectionParams()
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0], [5.0, -1.0, 0.0, 5.0]])
    assert select_next_tokens(logits, params).tolist() == [1, 0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
])
def test_bad_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SelectionParams(**kwargs)
