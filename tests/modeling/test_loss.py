"""The chunked cross entropy from hidden states (`linear_cross_entropy`) against F.cross_entropy over full
logits in float64 (losses and gradients, several ragged chunks, ignored targets, a padded vocabulary), under
autocast, and the model's memory-lean loss path against its plain one."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import EPS32, randomized, small_config

from hymba import HymbaForCausalLM
from hymba.modeling import loss as loss_module
from hymba.modeling.loss import linear_cross_entropy


def _inputs(N=37, H=8, V=11, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, H, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[[3, 10, 11, 36]] = -100
    return hidden, weight, targets, torch.randn(N, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("padded", [False, True])
def test_losses_and_gradients_equal_full_logits(monkeypatch, padded):
    monkeypatch.setattr(loss_module, "pads_vocab", lambda hidden: padded)  # a vocabulary of 11 -> 64 rows
    hidden, weight, targets, upstream = _inputs()
    got = linear_cross_entropy(hidden, weight, targets, chunk_tokens=8)  # chunks of 8, the last of 5
    (got * upstream).sum().backward()
    grads = hidden.grad, weight.grad
    hidden.grad = weight.grad = None
    want = F.cross_entropy(hidden @ weight.T, targets, ignore_index=-100, reduction="none")
    (want * upstream).sum().backward()
    assert got.dtype == torch.float64 and got.shape == (37,)
    assert torch.equal(got[targets == -100], torch.zeros(4, dtype=torch.float64))
    # float64: sums over H = 8, V = 11 and N = 37 terms of size ~10, rounding ~1e-14; far below 1e-12 + 1e-12 |x|
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], hidden.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[1], weight.grad, rtol=1e-12, atol=1e-12)


def test_under_autocast_like_a_linear_head():
    """bf16 matmuls under autocast, fp32 softmax: the plain head's numbers; gradients in the inputs' dtypes."""
    hidden, weight, targets, upstream = _inputs(N=300, H=16, V=50, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(hidden, weight, targets, chunk_tokens=128)
        logits = F.linear(hidden, weight).float()
        want = F.cross_entropy(logits, targets, reduction="none")
    (got * upstream.float()).sum().backward()
    grads = hidden.grad, weight.grad
    hidden.grad = weight.grad = None
    (want * upstream.float()).sum().backward()
    assert got.dtype == torch.float32
    # the same bf16 logits (the rows are only chunked: each 16-term product keeps its order); the two cross
    # entropies round differently in float32, each within a few eps32 x (|logit|max + log V)
    bound = 4 * EPS32 * (logits.abs().max().item() + math.log(50))
    torch.testing.assert_close(got, want, rtol=0, atol=bound)
    assert grads[0].dtype == grads[1].dtype == torch.float32
    # bf16 matmuls: the plain head rounds each gradient to bf16 once (unit roundoff 2**-8), the chunked head its
    # partial sums once a chunk, about as much again: within bf16's eps (2**-7), normwise
    for mine, plain in zip(grads, (hidden.grad, weight.grad)):
        assert ((mine - plain).norm() / plain.norm()).item() <= torch.finfo(torch.bfloat16).eps


def test_bad_inputs_are_named():
    hidden, weight, targets, _ = _inputs()
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 11\)"):
        linear_cross_entropy(hidden, weight, torch.where(targets == 5, 11, targets))
    with pytest.raises(ValueError, match="targets must have shape"):
        linear_cross_entropy(hidden, weight, targets[:-1])
    with pytest.raises(ValueError, match=r"hidden \[N, H\] and weight \[V, H\]"):
        linear_cross_entropy(hidden, weight[:, :-1], targets)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_shift", [1, 0])
def test_model_loss_without_logits_equals_the_plain_loss(reduction, label_shift):
    """model(..., return_logits=False): the same loss and parameter gradients as through full logits, with
    padding and ignored labels; no logits."""
    torch.manual_seed(0)
    config = small_config(vocab_size=101)
    model = randomized(HymbaForCausalLM(config)).double()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 101, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0
    labels = torch.where(mask.bool(), ids, -100)
    labels[0, 5] = -100
    results = []
    for return_logits in (True, False):
        model.zero_grad()
        out = model(ids, attention_mask=mask, labels=labels, loss_reduction=reduction, label_shift=label_shift,
                    return_logits=return_logits)
        assert (out.logits is None) != return_logits
        (out.loss.sum() if reduction == "none" else out.loss).backward()
        results.append((out.loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss0, grads0), (loss1, grads1) = results
    if reduction == "none":
        assert loss1.shape == (2, 12 - label_shift)
    # float64, the same logits through chunked and full cross entropies: rounding ~1e-15 of the values
    torch.testing.assert_close(loss1, loss0, rtol=1e-10, atol=1e-12)
    assert grads1.keys() == grads0.keys()
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-10, atol=1e-12, msg=name)


def test_model_loss_options_are_checked():
    model = HymbaForCausalLM(small_config())
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="loss_reduction"):
        model(ids, labels=ids, loss_reduction="avg")
    with pytest.raises(ValueError, match="label_shift"):
        model(ids, labels=ids, label_shift=2)
