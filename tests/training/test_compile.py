"""torch.compile per decoder layer (what `model.compile: true` in a training config does): the compiled model
gives the eager model's logits and gradients, and the layers really run compiled graphs."""

import pytest
from helpers import randomized, small_config

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

    ids = torch.randint(0, config.vocab_size, (2, 20))
    outs = []
    for model in (eager, compiled):
        out = model(ids, labels=ids)
        out.loss.backward()
        outs.append(out)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # one graph per layer kind at least
    torch.testing.assert_close(outs[1].logits, outs[0].logits, rtol=1e-4, atol=1e-4)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, msg=name)
