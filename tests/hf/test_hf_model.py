"""AutoModelForCausalLM on Hymba checkpoints: NVIDIA's golden outputs, one implementation shared with
HymbaForCausalLM (any dtype), the released layout written back, the loss, and what the forward refuses."""

import json
import os

import pytest
import torch
from helpers import small_lm_config
from hf_helpers import RELEASE
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, GenerationMixin, PreTrainedModel

from hymba import HymbaConfig, HymbaForCausalLM, HymbaModel, InputError
from hymba.config import DERIVED_KEYS
from hymba.hf import HymbaHFConfig, HymbaHFForCausalLM
from hymba.modeling.layers import rope_inv_freq


def test_golden_logits_through_automodel(golden):
    """No trust_remote_code, the release's config.json keys (auto_map included in the 1.5B one): NVIDIA's logits to
    1e-4 in float32 (a faithful implementation is within ~1e-5; the README of the golden file)."""
    path, exp = golden
    model = AutoModelForCausalLM.from_pretrained(path)
    assert isinstance(model, HymbaHFForCausalLM) and isinstance(model, PreTrainedModel)
    assert isinstance(model, GenerationMixin) and isinstance(model.model, HymbaModel)
    assert model.dtype == torch.float32  # dtype "auto": the file's torch_dtype
    with torch.no_grad():
        logits = model(exp["input_ids"]).logits
    assert logits.dtype == torch.float32
    assert (logits - exp["logits"]).abs().max().item() < 1e-4


def test_release_config_loads_without_remote_code():
    """The 1.5B release's config.json (auto_map naming NVIDIA's remote code) reads as ours, with or without
    trust_remote_code, and means what HymbaConfig.from_json makes of it."""
    for trust in (None, True):
        config = AutoConfig.from_pretrained(RELEASE, trust_remote_code=trust)
        assert type(config) is HymbaHFConfig
        assert config.to_hymba() == HymbaConfig.from_json(RELEASE)
    assert config.dtype == torch.bfloat16 and config._attn_implementation is None  # "flex" is NVIDIA's, inert here
    assert not hasattr(config, "output_router_logits")  # (TRL would treat Hymba as a mixture of experts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_same_computation_as_hymba_for_causal_lm_in_any_dtype(golden, dtype):
    """Loaded in any dtype, the transformers model computes exactly what the package's model does (same
    modules), and `to_hymba()` hands over those very parameters."""
    path, exp = golden
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    ours = HymbaForCausalLM.from_pretrained(path, dtype=dtype)
    assert model.dtype == dtype and model.model.rotary.inv_freq.dtype == torch.float64
    torch.testing.assert_close(model.model.rotary.inv_freq, rope_inv_freq(ours.config), rtol=0, atol=0)
    with torch.no_grad():
        assert torch.equal(model(exp["input_ids"]).logits, ours(exp["input_ids"]).logits)
    plain = model.to_hymba()
    assert {id(p) for p in plain.parameters()} == {id(p) for p in model.parameters()}
    with torch.no_grad():
        assert torch.equal(plain(exp["input_ids"]).logits, ours(exp["input_ids"]).logits)


def test_save_pretrained_writes_the_released_layout(golden, tmp_path):
    """Same files, tensor names (tied lm_head not stored), config keys as the release; loads back through both
    loaders with the same logits."""
    path, exp = golden
    model = AutoModelForCausalLM.from_pretrained(path)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "generation_config.json", "model.safetensors"]
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as a, \
            safe_open(str(tmp_path / "model.safetensors"), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    with open(os.path.join(path, "config.json")) as f:
        released = json.load(f)
    with open(tmp_path / "config.json") as f:
        written = json.load(f)
    assert set(written) >= set(released)  # every key of the file, with its value (derived ones recomputed)
    assert {k: written[k] for k in released if k not in DERIVED_KEYS} == \
        {k: v for k, v in released.items() if k not in DERIVED_KEYS}
    HymbaForCausalLM.from_pretrained(path).save_pretrained(tmp_path / "package")
    with open(tmp_path / "package" / "config.json") as f:
        assert written == json.load(f)  # and exactly what the package's own save writes
    with torch.no_grad():
        want = model(exp["input_ids"]).logits
        assert torch.equal(HymbaForCausalLM.from_pretrained(tmp_path)(exp["input_ids"]).logits, want)
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path)(exp["input_ids"]).logits, want)
    model.save_pretrained(tmp_path / "sharded", max_shard_size=200_000)
    assert "model.safetensors.index.json" in os.listdir(tmp_path / "sharded")
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")(exp["input_ids"]).logits, want)


def test_loss_is_the_packages_loss(hf_model):
    """Next-token cross entropy with -100 ignored, equal to HymbaForCausalLM's; the Trainer's num_items_in_batch
    turns the mean into a sum over that many tokens."""
    ids = torch.randint(3, 32000, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :4] = -100
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    labels[1, :3] = -100
    with torch.no_grad():
        ours = hf_model.to_hymba()(ids, attention_mask=mask, labels=labels)
        out = hf_model(ids, attention_mask=mask, labels=labels)
        torch.testing.assert_close(out.loss, ours.loss, rtol=1e-6, atol=1e-6)
        total = hf_model(ids, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(5)).loss
        scored = int((labels[:, 1:] != -100).sum())
        torch.testing.assert_close(total, ours.loss * scored / 5, rtol=1e-5, atol=1e-5)


def test_forward_refuses_what_it_cannot_do(hf_model):
    ids = torch.tensor([[1, 15043, 3186, 29892]])
    with pytest.raises(InputError, match="HymbaCache"):
        hf_model(ids, cache=DynamicCache(), use_cache=True)
    with pytest.raises(InputError, match="output_attentions"):
        hf_model(ids, output_attentions=True)
    with pytest.raises(InputError, match="output_hidden_states"):
        hf_model(ids, output_hidden_states=True)
    with pytest.raises(InputError, match=r"\[batch, length\]"):
        hf_model(ids, attention_mask=torch.ones(1, 1, 4, 4))
    mask = torch.tensor([[0, 1, 1, 1]])
    with torch.no_grad():
        plain = hf_model(ids, attention_mask=mask).logits
        assert torch.equal(hf_model(ids, attention_mask=mask, position_ids=torch.tensor([[0, 0, 1, 2]])).logits, plain)
    with pytest.raises(InputError, match="packed sequences"):
        hf_model(ids, position_ids=torch.tensor([[0, 1, 0, 1]]))
    assert isinstance(hf_model(ids, return_dict=False), tuple)


def test_from_config_initializes_like_the_package():
    """A model built from a config (training from scratch) is initialized by the package's own init_weights:
    with the same seed, the same tensors as HymbaForCausalLM(config); the rotary frequencies from the config."""
    hymba_config = small_lm_config()
    config = HymbaHFConfig(**{k: v for k, v in hymba_config.to_dict().items()
                              if k not in ("architectures", "model_type", "torch_dtype", "transformers_version")})
    assert config.to_hymba() == hymba_config
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    torch.manual_seed(0)
    ours = HymbaForCausalLM(hymba_config)
    assert isinstance(model, HymbaHFForCausalLM) and model.lm_head.weight is model.model.embed_tokens.weight
    theirs = ours.state_dict()
    assert all(torch.equal(t, theirs[name]) for name, t in model.state_dict().items())
    torch.testing.assert_close(model.model.rotary.inv_freq, rope_inv_freq(hymba_config), rtol=0, atol=0)


def test_resized_embeddings_take_the_new_tokens(hf_dir):
    """Adding a special token and resizing (as fine-tuning recipes do): the new id is accepted."""
    from transformers import AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer("call <|tool|>", return_tensors="pt")
    assert ids["input_ids"][0, -1] == 32001
    with torch.no_grad():
        assert model(**ids).logits.shape == (1, ids["input_ids"].shape[1], 32002)
    assert model.to_hymba().config.vocab_size == 32002
