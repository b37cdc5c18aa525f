"""The built-in demo: its corpus, its model, its comparison baseline, and a seconds-long end-to-end run."""

import json
import math
import os
import sysconfig

import torch

from hymba import HymbaConfig, HymbaForCausalLM
from hymba.modeling.cache import cache_bytes
from hymba.training import demo
from hymba.training.config import TrainConfig


def test_the_demo_config_keeps_every_feature_of_the_release():
    settings, cfg_dict = demo.demo_settings()
    cfg = TrainConfig.from_dict(cfg_dict)
    config = HymbaConfig.from_preset(cfg.model.preset, **cfg.model.config, vocab_size=settings["vocab_size"])
    assert config.use_attention and config.use_ssm and config.num_memory_tokens > 0
    assert config.sliding_window < cfg.data.seq_len and config.global_attn_idx
    assert any(len(g) > 1 for g in config.kv_reuse_group)
    with torch.device("meta"):
        n = HymbaForCausalLM(config, init=False).num_parameters()
    assert 1e6 < n < 1e7  # "a few million parameters"
    assert settings["minutes_cpu"] == 5.0


def test_the_corpus_is_the_standard_library_without_tests():
    root, files = demo.stdlib_sources()
    assert root == sysconfig.get_paths()["stdlib"]
    assert len(files) > 100
    assert any(f.endswith(os.path.join("json", "decoder.py")) for f in files)
    parts = {p for f in files for p in os.path.relpath(f, root).split(os.sep)}
    assert not parts & {"test", "tests", "site-packages", "__pycache__"}


def test_the_same_size_transformer_has_as_many_parameters_and_a_bigger_cache():
    _, cfg_dict = demo.demo_settings()
    config = HymbaConfig.from_preset("tiny", **TrainConfig.from_dict(cfg_dict).model.config, vocab_size=4096)
    with torch.device("meta"):
        n = HymbaForCausalLM(config, init=False).num_parameters()
    twin_n, twin = demo.attention_only_twin(config, n)
    assert abs(twin_n - n) / n < 0.02  # integer widths: one MLP width step is ~0.1% of the count here
    assert not twin.use_ssm and twin.num_memory_tokens == 0 and twin.sliding_window is None
    assert (twin.hidden_size, twin.num_hidden_layers) == (config.hidden_size, config.num_hidden_layers)
    assert sum(cache_bytes(twin, 1, 8192).values()) > 1.5 * sum(cache_bytes(config, 1, 8192).values())


def test_a_short_demo_end_to_end(tmp_path, monkeypatch):
    root, files = demo.stdlib_sources()
    few = [f for f in files if os.path.basename(f) in ("textwrap.py", "bisect.py", "heapq.py", "fnmatch.py",
                                                         "colorsys.py", "keyword.py", "shlex.py", "glob.py")]
    monkeypatch.setattr(demo, "stdlib_sources", lambda: (root, few))
    settings, cfg = demo.demo_settings()
    settings.update(vocab_size=400, sample_tokens=8)
    cfg["train"].update(eval_batches=1, log_interval=2, progress=False, tensorboard=False)
    cfg["model"]["config"].update(num_hidden_layers=2, global_attn_idx=[0], kv_reuse_group=[[1]])
    monkeypatch.setattr(demo, "demo_settings", lambda: (settings, cfg))
    lines = []
    summary = demo.run_demo(out=str(tmp_path / "demo"), minutes=0.08, device="cpu", log=lines.append)
    out = tmp_path / "demo"
    assert {"model", "loss.png", "metrics.jsonl", "summary.json", "checkpoints", "data"} <= set(os.listdir(out))
    assert HymbaForCausalLM.from_pretrained(str(out / "model")).config.vocab_size == 400
    with open(out / "summary.json") as f:
        assert json.load(f)["validation"]["loss"] == summary["validation"]["loss"]
    assert summary["training"]["steps"] >= 1 and math.isfinite(summary["validation"]["unigram_loss"])
    assert summary["cache_8k"]["ratio"] > 1
    assert summary["sample"]["prompt"].startswith("def read_config")
    text = "\n".join(lines)
    assert "[4/4] sampled continuation" in text and "validation loss" in text
