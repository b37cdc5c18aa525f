"""The released checkpoint format: load, save, shards, errors, and the golden toy model."""

import json
import os

import pytest
import torch
from helpers import assert_model_as_accurate, randomized, small_config
from safetensors.torch import load_file, save_file

from hymba import HymbaConfig, HymbaForCausalLM
from hymba.checkpoint import CheckpointError


def official_state_dict(config: HymbaConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Names and shapes written out from the format document (section 4), independent of the model code."""
    d, V, M = config.hidden_size, config.vocab_size, config.num_memory_tokens
    H, Hkv, dk = config.num_attention_heads, config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    di, N, R, K, ffn = 2 * d, config.mamba_d_state, config.mamba_dt_rank, config.mamba_d_conv, config.intermediate_size
    dv = di // H
    consumers = {i for g in config.kv_reuse_group for i in g[1:]}
    shapes = {"model.embed_tokens.weight": (V, d), "model.memory_tokens": (M, d), "model.final_layernorm.weight": (d,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, d)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        rows = H * dk + (0 if i in consumers else Hkv * dk + Hkv * dv) + 2 * di
        shapes.update({
            p + "input_layernorm.weight": (d,), p + "pre_moe_layernorm.weight": (d,),
            p + "mamba.in_proj.weight": (rows, d), p + "mamba.out_proj.weight": (d, di),
            p + "mamba.conv1d.weight": (di, 1, K), p + "mamba.conv1d.bias": (di,),
            p + "mamba.x_proj.0.weight": (R + 2 * N, di), p + "mamba.dt_proj.0.weight": (di, R),
            p + "mamba.dt_proj.0.bias": (di,), p + "mamba.A_log.0": (di, N), p + "mamba.D.0": (di,),
            p + "mamba.dt_layernorm.weight": (R,), p + "mamba.B_layernorm.weight": (N,),
            p + "mamba.C_layernorm.weight": (N,), p + "mamba.pre_avg_layernorm1.weight": (di,),
            p + "mamba.pre_avg_layernorm2.weight": (di,),
            p + "moe.experts.0.gate_proj.weight": (ffn, d), p + "moe.experts.0.up_proj.weight": (ffn, d),
            p + "moe.experts.0.down_proj.weight": (d, ffn),
        })
        if config.kq_norm == "rms":
            # the release keeps a k_norm even in layers that reuse K/V (unused there)
            shapes[p + "mamba.self_attn.q_norm.weight"] = (dk,)
            shapes[p + "mamba.self_attn.k_norm.weight"] = (dk,)
    return {n: torch.randn(s, generator=gen) for n, s in shapes.items()}


def write_official(path, config, tensors, **config_changes):
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"))
    cfg = config.to_dict()
    cfg.update(config_changes)
    cfg["conv_dim"] = {i: config.d_inner for i in range(config.num_hidden_layers)}  # int keys this time
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)


@pytest.mark.parametrize("kq_norm", ["none", "rms"])
def test_loads_a_checkpoint_written_from_the_format_document(tmp_path, kq_norm):
    config = small_config(kq_norm=kq_norm)
    tensors = official_state_dict(config, torch.Generator().manual_seed(0))
    write_official(tmp_path, config, tensors, torch_dtype="float32")
    model = HymbaForCausalLM.from_pretrained(tmp_path)
    state = model.state_dict()
    for name, t in tensors.items():
        if name.endswith("k_norm.weight") and not config.makes_kv(int(name.split(".")[2])):
            assert name not in state  # accepted and ignored: consumer layers never compute k
            continue
        assert torch.equal(state[name], t), name
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model(torch.randint(0, 50, (1, 7)))


def test_round_trip_is_bit_exact(tmp_path):
    for i, changes in enumerate([{}, dict(tie_word_embeddings=False, mamba_proj_bias=True, kq_norm="rms")]):
        model = randomized(HymbaForCausalLM(small_config(**changes)), seed=i).to(torch.bfloat16)
        model.save_pretrained(tmp_path / str(i))
        loaded = HymbaForCausalLM.from_pretrained(tmp_path / str(i))
        assert loaded.dtype == torch.bfloat16
        a, b = model.state_dict(), loaded.state_dict()
        assert a.keys() == b.keys()
        for n in a:
            assert torch.equal(a[n], b[n]), n
        ids = torch.randint(0, 50, (2, 9))
        with torch.no_grad():
            assert torch.equal(model.eval()(ids).logits, loaded(ids).logits)
    stored = load_file(tmp_path / "0" / "model.safetensors")
    assert "lm_head.weight" not in stored  # tied: stored once, as the release does


def test_sharded_save_and_load(tmp_path):
    model = randomized(HymbaForCausalLM(small_config()))
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    loaded = HymbaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    for n, t in model.state_dict().items():
        assert torch.equal(t, loaded.state_dict()[n]), n
    os.remove(tmp_path / shards[1])
    with pytest.raises(CheckpointError, match="shard files that do not exist"):
        HymbaForCausalLM.from_pretrained(tmp_path)


def test_mismatch_names_every_problem(tmp_path):
    config = small_config()
    tensors = official_state_dict(config, torch.Generator().manual_seed(0))
    del tensors["model.layers.1.mamba.D.0"]
    tensors["model.layers.2.mamba.in_proj.weight"] = torch.zeros(3, 3)
    tensors["model.layers.0.mamba.surprise"] = torch.zeros(2)
    write_official(tmp_path, config, tensors)
    with pytest.raises(CheckpointError) as e:
        HymbaForCausalLM.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "missing:    model.layers.1.mamba.D.0 (expected shape [32])" in msg
    assert "unexpected: model.layers.0.mamba.surprise (shape [2])" in msg
    assert "mis-shaped: model.layers.2.mamba.in_proj.weight: checkpoint [3, 3], model expects [80, 16]" in msg


def test_untied_checkpoint_needs_its_head(tmp_path):
    config = small_config(tie_word_embeddings=False)
    tensors = official_state_dict(config, torch.Generator().manual_seed(0))
    del tensors["lm_head.weight"]
    write_official(tmp_path, config, tensors)
    with pytest.raises(CheckpointError, match="missing:    lm_head.weight"):
        HymbaForCausalLM.from_pretrained(tmp_path)


def test_refuses_pickles_and_names_missing_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(small_config().to_dict()))
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        HymbaForCausalLM.from_pretrained(tmp_path)
    os.remove(tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        HymbaForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        HymbaForCausalLM.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(CheckpointError, match="a-file is a file; a checkpoint is a directory"):
        HymbaForCausalLM.from_pretrained(tmp_path / "a-file")


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model = randomized(HymbaForCausalLM(small_config()))
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    import hymba.checkpoint as ckpt

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        randomized(model, seed=5).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_golden_toy_logits(shared_dir):
    """NVIDIA's own code computed these logits on this checkpoint (float32, CPU)."""
    golden = os.path.join(shared_dir, "golden", "hymba-toy")
    model = HymbaForCausalLM.from_pretrained(golden, dtype=torch.float32)
    expected = load_file(os.path.join(golden, "expected.safetensors"))
    def logits_of(m):
        return m(expected["input_ids"]).logits
    with torch.no_grad():
        logits = logits_of(model)
    # the same function: NVIDIA's float32 logits and ours each as close to our float64 ones as the other
    assert_model_as_accurate(expected["logits"], logits, model, logits_of, msg="NVIDIA's")
    assert_model_as_accurate(logits, expected["logits"], model, logits_of, msg="ours")


@pytest.mark.parametrize("rope_type", [None, "dynamic_ntk"])
def test_checkpoint_with_an_official_rope_type_loads_and_matches_the_formulas(tmp_path, rope_type):
    """rope_type null (the official config class's default: plain RoPE) and "dynamic_ntk" in a released-format
    config.json load, and give the logits of the from-the-formulas reference (float64: rounding only)."""
    import reference

    model = randomized(HymbaForCausalLM(small_config(rope_type="default", rope_theta=500.0)))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_type"] = rope_type
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = HymbaForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    assert loaded.config.rope_type == (rope_type or "default")
    ids = torch.randint(0, 50, (1, 20), generator=torch.Generator().manual_seed(2))  # 3 meta + 20 > 16 positions
    with torch.no_grad():
        got = loaded(ids).logits[0]
    sd = {k: v for k, v in loaded.state_dict().items() if k != "lm_head.weight"}
    want = reference.forward(sd, {**config, "rope_type": rope_type}, ids[0].tolist())
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
