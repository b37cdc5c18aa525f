"""HymbaConfig: the official config.json in and out, presets, baselines, validation messages."""

import json
import os

import pytest

from hymba.config import PRESETS, ConfigError, HymbaConfig


def test_reads_the_release_config(shared_dir):
    c = HymbaConfig.from_json(os.path.join(shared_dir, "hymba-1.5b"))
    assert c == HymbaConfig.from_preset("hymba-1.5b").replace(extra=c.extra)
    assert (c.d_inner, c.head_dim, c.v_head_dim) == (3200, 64, 128)
    assert [i for i in range(32) if c.is_global(i)] == [0, 15, 31]
    assert c.kv_producer(18) == 16 and c.makes_kv(16) and not c.makes_kv(17)
    # the inert keys survive a round trip with their values
    out = c.to_dict()
    with open(os.path.join(shared_dir, "hymba-1.5b", "config.json")) as f:
        release = json.load(f)
    for key in ("num_experts", "use_mamba_kernels", "kv_reuse_every_i_layer", "attn_implementation_new",
                "memory_tokens_interspersed_every", "seq_length", "calc_logits_for_entire_prompt"):
        assert out[key] == release[key], key
    assert out["conv_dim"] == release["conv_dim"]
    assert out["v_head_dim"] == 128 and out["model_type"] == "hymba"
    assert HymbaConfig.from_dict(json.loads(json.dumps(out))) == c


def test_derived_keys_are_read_whatever_they_say():
    """conv_dim, layer_type and v_head_dim are recomputed by the official code when it builds the model."""
    base = HymbaConfig.from_preset("tiny").to_dict()
    for conv_dim in ({i: 128 for i in range(6)}, {"0": 99}):
        base["conv_dim"] = conv_dim
        assert HymbaConfig.from_dict(base).d_inner == 128
    base["layer_type"] = ["m"] * 6
    assert HymbaConfig.from_dict(base).to_dict()["layer_type"] == ["h"] * 6


def test_v_head_dim_in_file_is_ignored():
    d = HymbaConfig.from_preset("tiny").to_dict()
    d["v_head_dim"] = -1
    assert HymbaConfig.from_dict(d).v_head_dim == 32


@pytest.mark.parametrize("change, message", [
    (dict(num_attention_heads=5), "does not divide hidden_size"),
    (dict(num_key_value_heads=3), "does not divide num_attention_heads"),
    (dict(kv_reuse_group=[[1, 9]]), "names layer 9, but there are 6 layers"),
    (dict(kv_reuse_group=[[2, 3]]), "global-attention layer"),
    (dict(kv_reuse_group=[[2, 1]]), "increasing order"),
    (dict(kv_reuse_group=[[1, 2], [2]]), "layer 2 is in kv_reuse_group"),
    (dict(global_attn_idx=[0, 6]), "global_attn_idx names layer 6"),
    (dict(rope_type="yarn"), "unknown rope_type 'yarn'"),
    (dict(kq_norm="layer"), "unsupported kq_norm 'layer'"),
    (dict(kq_norm=None), "kq_norm must be a string, got None"),
    (dict(rope_type="dynamic_ntk", orig_max_position_embeddings=None), "needs a positive orig_max_position"),
    (dict(hidden_size="64"), "hidden_size must be an integer, got '64'"),
    (dict(rms_norm_eps="1e-6"), "rms_norm_eps must be a number"),
    (dict(tie_word_embeddings=1), "tie_word_embeddings must be true/false, got 1"),
    (dict(global_attn_idx=[0, "3"]), "global_attn_idx must be a list of an integer"),
    (dict(num_memory_tokens=8.0), "num_memory_tokens must be an integer, got 8.0"),
    (dict(mlp_hidden_act="gelu"), "mlp_hidden_act"),
    (dict(use_attention=False, use_ssm=False), "both false"),
    (dict(sliding_window=0), "sliding_window"),
])
def test_validation_names_the_problem(change, message):
    with pytest.raises(ConfigError, match=message):
        HymbaConfig.from_preset("tiny", **change)


def test_wrong_model_type_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="model_type"):
        HymbaConfig.from_dict({"model_type": "llama"})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        HymbaConfig.from_json(tmp_path)
    with pytest.raises(ConfigError, match="unknown preset"):
        HymbaConfig.from_preset("hymba-7b")


def test_presets_and_baselines_are_valid():
    for name, make in PRESETS.items():
        c = make()
        c.validate()
    a = HymbaConfig.from_preset("tiny-attention-only")
    assert not a.use_ssm and a.v_head_dim == a.head_dim and all(a.is_global(i) for i in range(6))
    s = HymbaConfig.from_preset("tiny-ssm-only")
    assert not s.use_attention and not any(s.makes_kv(i) for i in range(6))
    assert HymbaConfig.from_preset("tiny-no-meta").num_memory_tokens == 0
    assert not any(HymbaConfig.from_preset("tiny-all-window").is_global(i) for i in range(6))
    assert HymbaConfig.from_preset("tiny-no-kv-sharing").kv_reuse_group == []


def test_save_and_reload(tmp_path):
    c = HymbaConfig.from_preset("tiny-ssm-only", rope_type="default")
    c.save(tmp_path)
    assert HymbaConfig.from_json(tmp_path / "config.json") == c


def test_unsupported_variants_are_refused():
    d = HymbaConfig.from_preset("tiny").to_dict()
    d["num_experts"] = 4
    with pytest.raises(ConfigError, match="num_experts=4 is not supported"):
        HymbaConfig.from_dict(d)


def test_paper_scale_presets_have_their_sizes():
    import torch

    from hymba import HymbaForCausalLM

    for name, count in [("hymba-350m", 354_045_824), ("hymba-125m", 124_246_464)]:
        with torch.device("meta"):
            model = HymbaForCausalLM(HymbaConfig.from_preset(name), init=False)
        assert model.num_parameters() == count, name


def _release_dict(shared_dir) -> dict:
    with open(os.path.join(shared_dir, "hymba-1.5b", "config.json")) as f:
        return json.load(f)


def test_rope_type_null_is_plain_rope(shared_dir):
    """null is the official config class's default: plain RoPE with rope_theta; written back as "default"."""
    d = _release_dict(shared_dir)
    d["rope_type"] = None
    c = HymbaConfig.from_dict(d)
    assert c.rope_type == "default" and c.to_dict()["rope_type"] == "default"
    assert HymbaConfig.from_dict({**d, "rope_type": "dynamic_ntk"}).rope_type == "dynamic_ntk"


def test_absent_keys_mean_what_the_official_config_class_assumes(shared_dir):
    """A config.json that leaves a key out is read with the official class's default for it, not the release's."""
    d = _release_dict(shared_dir)
    for key in ("rope", "rope_type", "num_memory_tokens", "kq_norm", "num_experts"):
        d.pop(key)
    d["kq_norm"] = "none"  # the official default (null) is refused by the official code itself
    with pytest.raises(ConfigError, match="num_experts=16 is not supported"):
        HymbaConfig.from_dict(d)
    c = HymbaConfig.from_dict({**d, "num_experts": 1})
    assert (c.rope, c.rope_type, c.num_memory_tokens) == (False, "default", 0)
    minimal = {"model_type": "hymba", "num_experts": 1, "kq_norm": "none", "hidden_size": 64,
               "num_attention_heads": 8, "num_hidden_layers": 2}
    c = HymbaConfig.from_dict(minimal)
    assert (c.vocab_size, c.num_key_value_heads, c.sliding_window, c.kv_reuse_group, c.tie_word_embeddings,
            c.mamba_dt_rank, c.intermediate_size) == (65536, 8, None, [], False, 4, 14336)
    assert all(c.is_global(i) for i in range(2))


def test_official_keys_are_honoured_or_refused_by_name(shared_dir):
    d = _release_dict(shared_dir)
    accepted = dict(num_experts_per_tok=2, num_mamba=2, kv_weight_reuse=True, use_mamba_kernels=False,
                    attn_hidden_size=1600, kq_head_dim=64, hidden_act="swish", calc_logits_for_entire_prompt=True,
                    attn_implementation="sdpa", v_head_dim=64, num_key_value_heads=None)
    for key, value in accepted.items():
        c = HymbaConfig.from_dict({**d, key: value})
        assert c.num_key_value_heads == (25 if key == "num_key_value_heads" else 5), key
    refused = [("hidden_act", "gelu"), ("attn_hidden_size", 1024), ("kq_head_dim", 32), ("kq_norm", "perhead-rms"),
               ("memory_tokens_interspersed_every", 64), ("num_experts", 2), ("attention_dropout", 0.1)]
    for key, value in refused:
        with pytest.raises(ConfigError, match=f"{key}={value!r} is not supported"):
            HymbaConfig.from_dict({**d, key: value})
    with pytest.raises(ConfigError, match="global_attn_idx is null while sliding_window=1024"):
        HymbaConfig.from_dict({**d, "global_attn_idx": None})


def test_kv_reuse_every_i_layer_makes_groups():
    """Without kv_reuse_group, the official code shares K/V every `kv_reuse_every_i_layer` layers: layer i makes
    K/V when i % k == 0 and the next k - 1 reuse it."""
    d = HymbaConfig.from_preset("tiny", global_attn_idx=[]).to_dict()
    d.update(kv_reuse_group=None, kv_reuse_every_i_layer=4)
    c = HymbaConfig.from_dict(d)
    assert c.kv_reuse_group == [[0, 1, 2, 3], [4, 5]] and c.kv_producer(3) == 0 and c.makes_kv(4)
    # with global layers inside a group (window layers' rings cannot serve them) it is refused by name
    d = HymbaConfig.from_preset("tiny").to_dict()
    d.update(kv_reuse_group=None, kv_reuse_every_i_layer=2)
    with pytest.raises(ConfigError, match="kv_reuse_every_i_layer=2 shares K/V in groups"):
        HymbaConfig.from_dict(d)
    d.update(kv_reuse_group=[[1, 2]])  # explicit groups take precedence, as in the official code
    assert HymbaConfig.from_dict(d).kv_reuse_group == [[1, 2]]
