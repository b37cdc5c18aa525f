"""Bad inputs to the model and to generation get named errors of the project's own types, never a library's
traceback or a silent wrong answer."""

import pytest
import torch
from helpers import randomized, small_config

from hymba import HymbaForCausalLM, generate
from hymba.errors import GenerationError, InputError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomized(HymbaForCausalLM(small_config())).eval()  # vocabulary 50, max_position_embeddings 64


def test_token_ids_outside_the_vocabulary(model):
    with pytest.raises(InputError, match=r"outside the vocabulary \[0, 50\): min 0, max 50"):
        model(torch.tensor([[0, 50]]))
    with pytest.raises(InputError, match="min -1"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(InputError, match="integer token ids, got torch.float32"):
        model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(InputError, match=r"\[batch, length\], got shape \(3,\)"):
        model(torch.tensor([1, 2, 3]))


def test_attention_masks_that_are_not_batches_of_zeros_and_ones(model):
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(InputError, match=r"attention_mask has shape \(3,\), expected \(1, 3\)"):
        model(ids, attention_mask=torch.tensor([1, 1, 1]))
    with pytest.raises(InputError, match="must hold 0 .padding. and 1 .token., got 2"):
        model(ids, attention_mask=torch.tensor([[1, 2, 1]]))
    torch.testing.assert_close(model(ids, attention_mask=torch.tensor([[True, True, True]])).logits,
                               model(ids).logits, rtol=0, atol=0)


def test_inputs_longer_than_the_positions_the_model_has(model):
    with pytest.raises(InputError, match="65 text positions, more than the model's max_position_embeddings .64."):
        model(torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(InputError, match="a prompt of 65 tokens is longer than the model's max_position_embeddings"):
        generate(model, torch.ones(1, 65, dtype=torch.long), max_new_tokens=1)
    with pytest.warns(UserWarning, match="max_new_tokens=10 may take a 60-token prompt past the model's "
                                         "max_position_embeddings .64."):
        out = generate(model, torch.ones(1, 60, dtype=torch.long), max_new_tokens=10, eos_token_id=[])
    assert out.shape == (1, 70)  # generated, with the warning


@pytest.mark.parametrize("sample", [False, True])
def test_non_finite_logits_stop_generation_by_name(model, sample):
    broken = HymbaForCausalLM(model.config).eval()
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.model.layers[2].mamba.out_proj.weight[0, 0] = float("nan")
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(GenerationError, match="logits for row 0 are not finite .NaN or inf. at step 0"):
        generate(broken, ids, max_new_tokens=3, do_sample=sample, seed=0)
