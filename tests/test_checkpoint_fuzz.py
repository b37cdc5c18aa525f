"""Damaged checkpoints, fed to the loader at random (seeded): truncations at random offsets, flipped header
bytes, wrong dtypes, shapes and names, index files with hostile shard names, broken config.json. Each gives a
named error of the project's own types (never a library's traceback) before any tensor reaches the model
(never a partial load); a pickle payload in any file is refused and never runs."""

import json
import os
import pickle
import random
import shutil
import struct

import pytest
import torch
from helpers import randomized, small_config
from safetensors.torch import load_file, save_file

from hymba import HymbaForCausalLM
from hymba.errors import HymbaError
from hymba.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small released-format checkpoint, once as one file and once in shards."""
    root = tmp_path_factory.mktemp("good")
    model = randomized(HymbaForCausalLM(small_config()))
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size=20_000)
    assert len([f for f in os.listdir(root / "sharded") if f.endswith(".safetensors")]) > 2
    return root


def refused(path, monkeypatch, match=None):
    """Loading `path` raises a HymbaError (naming `match`) and no tensor was handed to the model."""
    assigned = []
    original = torch.nn.Module.load_state_dict
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", lambda *a, **k: assigned.append(1) or original(*a, **k))
    with pytest.raises(HymbaError) as info:
        HymbaForCausalLM.from_pretrained(path)
    assert not assigned, "tensors reached the model before the error"
    if match is not None:
        assert match in str(info.value), str(info.value)
    monkeypatch.undo()
    return str(info.value)


def fresh(good, tmp_path, name, kind="single"):
    dest = tmp_path / name
    shutil.copytree(good / kind, dest)
    return dest


def test_truncations_at_random_offsets(good, tmp_path, monkeypatch):
    rng = random.Random(0)
    size = os.path.getsize(good / "single" / "model.safetensors")
    for i in range(10):
        ckpt = fresh(good, tmp_path, f"t{i}")
        with open(ckpt / "model.safetensors", "r+b") as f:
            f.truncate(rng.randrange(0, size))
        refused(ckpt, monkeypatch, match="model.safetensors")


def test_flipped_header_bytes(good, tmp_path, monkeypatch):
    rng = random.Random(1)
    with open(good / "single" / "model.safetensors", "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
    for i in range(12):
        ckpt = fresh(good, tmp_path, f"f{i}")
        with open(ckpt / "model.safetensors", "r+b") as f:
            pos = rng.randrange(0, 8 + header_len)
            f.seek(pos)
            byte = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([byte ^ (1 << rng.randrange(8))]))
        try:  # a flip can leave a valid header naming the same tensors (a digit of an offset, say)
            HymbaForCausalLM.from_pretrained(ckpt)
        except HymbaError as e:
            assert "model.safetensors" in str(e) or "config.json" in str(e), str(e)


@pytest.mark.parametrize("damage, message", [
    ("dtype", "mis-typed:  model.final_layernorm.weight: torch.int32"),
    ("shape", "mis-shaped: model.layers.0.mamba.D.0"),
    ("name", "unexpected: model.layers.0.mamba.D.9"),
    ("nan", "non-finite values (NaN or inf) in model.layers.1.mamba.out_proj.weight"),
])
def test_wrong_dtypes_shapes_names_and_values(good, tmp_path, monkeypatch, damage, message):
    ckpt = fresh(good, tmp_path, damage)
    tensors = load_file(ckpt / "model.safetensors")
    if damage == "dtype":
        tensors["model.final_layernorm.weight"] = tensors["model.final_layernorm.weight"].to(torch.int32)
    elif damage == "shape":
        tensors["model.layers.0.mamba.D.0"] = tensors["model.layers.0.mamba.D.0"][:-1]
    elif damage == "name":
        tensors["model.layers.0.mamba.D.9"] = tensors.pop("model.layers.0.mamba.D.0")
    else:
        tensors["model.layers.1.mamba.out_proj.weight"][0, 0] = float("nan")
    save_file(tensors, ckpt / "model.safetensors")
    refused(ckpt, monkeypatch, match=message)
    if damage == "nan":  # the check can be skipped for huge models
        model = HymbaForCausalLM.from_pretrained(ckpt, check_finite=False)
        assert model.model.layers[1].mamba.out_proj.weight.isnan().any()


@pytest.mark.parametrize("shard, message", [
    ("../outside.safetensors", "which is not a file inside"),
    ("/etc/passwd", "which is not a file inside"),
    ("sub/../../outside.safetensors", "which is not a file inside"),
    ("link.safetensors", "which is not a file inside"),  # a symbolic link leading out of the directory
    ("", "which is not a file inside"),
    ("nowhere.safetensors", "do not exist"),
])
def test_index_files_with_hostile_shard_names(good, tmp_path, monkeypatch, shard, message):
    ckpt = fresh(good, tmp_path, "hostile", kind="sharded")
    outside = tmp_path / "outside.safetensors"
    shutil.copy(ckpt / sorted(f for f in os.listdir(ckpt) if f.startswith("model-"))[0], outside)
    os.symlink(outside, ckpt / "link.safetensors")
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    victim = sorted(index["weight_map"])[0]
    index["weight_map"][victim] = shard
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    text = refused(ckpt, monkeypatch, match=message)
    assert repr(victim) in text or "do not exist" in text


@pytest.mark.parametrize("content, message", [
    ('{"weight_map": ', "is not a valid safetensors index"),
    ('{"weight_map": ["a"]}', "needs a \"weight_map\" object"),
    ('{"weight_map": {"model.norm": 3}}', "needs a \"weight_map\" object"),
    ("[1, 2]", "needs a \"weight_map\" object"),
])
def test_malformed_index_files(good, tmp_path, monkeypatch, content, message):
    ckpt = fresh(good, tmp_path, "index", kind="sharded")
    (ckpt / "model.safetensors.index.json").write_text(content)
    refused(ckpt, monkeypatch, match=message)


@pytest.mark.parametrize("content, message", [
    ('{"hidden_size": 16', "config.json is not valid JSON"),
    (b"\xff\xfe\x00garbage", "config.json is not valid JSON"),
    ("HIDDEN_AS_STRING", "hidden_size must be an integer, got '16'"),
    ('["hymba"]', "a config must be a JSON object"),
])
def test_broken_config_files(good, tmp_path, monkeypatch, content, message):
    ckpt = fresh(good, tmp_path, "config")
    path = ckpt / "config.json"
    if content == "HIDDEN_AS_STRING":
        content = json.dumps({**json.loads(path.read_text()), "hidden_size": "16"})
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    refused(ckpt, monkeypatch, match=message)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payloads_are_refused_and_never_run(good, tmp_path, monkeypatch, shared_dir):
    """Every file a model directory may hold (weights, index, config, tokenizer), replaced by a pickle."""
    marker = tmp_path / "payload-ran"
    base = fresh(good, tmp_path, "with-tokenizer", kind="sharded")
    load_tokenizer(os.path.join(shared_dir, "hymba-1.5b")).save(base)
    for name in sorted(os.listdir(base)):
        ckpt = tmp_path / f"pickled-{name}"
        shutil.copytree(base, ckpt)
        with open(ckpt / name, "wb") as f:
            pickle.dump(Payload(marker), f)
        if name in ("tokenizer.json", "tokenizer_config.json"):
            with pytest.raises(HymbaError, match=name):
                load_tokenizer(ckpt)
        elif name.endswith(".safetensors") or name in ("config.json", "model.safetensors.index.json"):
            refused(ckpt, monkeypatch, match=name)
        else:  # files neither loader reads (generation_config.json, special_tokens_map.json, ...)
            HymbaForCausalLM.from_pretrained(ckpt)
            load_tokenizer(ckpt)
    assert not marker.exists()
