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


def test_conv_dim_keys_as_ints_or_strings():
    base = HymbaConfig.from_preset("tiny").to_dict()
    base["conv_dim"] = {i: 128 for i in range(6)}
    assert HymbaConfig.from_dict(base).d_inner == 128
    base["conv_dim"] = {"0": 99}
    with pytest.raises(ConfigError, match="conv_dim"):
        HymbaConfig.from_dict(base)


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
    (dict(kq_norm="layer"), "unknown kq_norm"),
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
