"""torch.compile per decoder layer (what `model.compile: true` in a training config does): the compiled model
gives the eager model's logits and gradients, and the layers really run compiled graphs."""

import pytest
from helpers import assert_gradients_as_accurate, assert_model_as_accurate, float64_copy, randomized, small_config

from hymba import HymbaForCausalLM
from hymba.modeling import compile_layers


@pytest.mark.parametrize("layers,groups", [(2, []), (3, [[1, 2]])], ids=["global+window", "shared-kv"])
def test_compiled_layers_match_eager_forward_and_backward(layers, groups):
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    # a global and a window layer; or a window layer whose K/V the next one reuses (gradients from both)
    config = small_config(num_hidden_layers=layers, global_attn_idx=[0], kv_reuse_group=groups)
    eager = randomized(HymbaForCausalLM(config))
    compiled = HymbaForCausalLM(config)
    compiled.load_state_dict(eager.state_dict())
    assert compile_layers(compiled) == layers
    assert all(layer._compiled_call_impl is not None for layer in compiled.model.layers)

    exact = float64_copy(eager)
    ids = torch.randint(0, config.vocab_size, (2, 20))
    outs = []
    for model in (eager, compiled, exact):
        out = model(ids, labels=ids)
        out.loss.backward()
        outs.append(out)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # one graph per layer kind at least
    assert_model_as_accurate(outs[1].logits, outs[0].logits, eager, lambda m: m(ids, labels=ids).logits, msg="logits")
    assert_gradients_as_accurate(compiled, eager, exact, lambda m: m(ids, labels=ids).loss)
