import math

import pytest

from hymba import HymbaConfig, HymbaForCausalLM
from hymba.training.optim import LRSchedule, build_optimizer, param_groups


def test_no_weight_decay_on_norms_biases_meta_tokens_A_log_and_D():
    config = HymbaConfig.from_preset("tiny", mamba_proj_bias=True)
    model = HymbaForCausalLM(config)
    groups = param_groups(model, 0.1)
    decay = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    names = {}
    for n, p in model.named_parameters():  # tied lm_head is the embedding: listed once
        names.setdefault(id(p), n)
    for pid, name in names.items():
        exempt = (name.endswith("bias") or "norm" in name or "memory_tokens" in name or "A_log" in name
                  or ".D." in name)
        assert (pid not in decay) == exempt, name
    assert sum(len(g["params"]) for g in groups) == len(names)
    # the names the rule must catch, spelled out
    for must in ("model.memory_tokens", "model.layers.0.mamba.A_log.0", "model.layers.0.mamba.D.0",
                 "model.layers.0.mamba.conv1d.bias", "model.layers.0.mamba.in_proj.bias",
                 "model.layers.0.input_layernorm.weight", "model.layers.0.mamba.pre_avg_layernorm1.weight"):
        assert id(dict(model.named_parameters())[must]) not in decay, must
    for must in ("model.embed_tokens.weight", "model.layers.0.mamba.in_proj.weight",
                 "model.layers.0.moe.experts.0.down_proj.weight", "model.layers.0.mamba.x_proj.0.weight"):
        assert id(dict(model.named_parameters())[must]) in decay, must


def test_fused_adamw_on_cpu():
    opt = build_optimizer(HymbaForCausalLM(HymbaConfig.from_preset("tiny")), 1e-3)
    assert opt.defaults["fused"] is True
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_warmup_stable_decay_by_hand():
    # python floats (float64), a few operations each: approx's default rel 1e-6 is far above their rounding
    s = LRSchedule(lr=1.0, total_steps=100, name="wsd", warmup_steps=10, min_lr=0.1, decay_fraction=0.2)
    assert s(0) == pytest.approx(0.1) and s(4) == pytest.approx(0.5) and s(9) == pytest.approx(1.0)
    assert s(10) == 1.0 and s(79) == 1.0 and s(80) == 1.0
    assert s(90) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay, linear
    assert s(99) == pytest.approx(0.1 + 0.9 * 0.05)
    assert s(100) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)
    sq = LRSchedule(lr=1.0, total_steps=100, name="wsd", min_lr=0.0, decay_fraction=0.2, decay_shape="sqrt")
    assert sq(85) == pytest.approx(1 - math.sqrt(0.25))
    cs = LRSchedule(lr=1.0, total_steps=100, name="wsd", min_lr=0.0, decay_fraction=0.2, decay_shape="cosine")
    assert cs(90) == pytest.approx(0.5)


def test_cosine_and_constant_by_hand():
    s = LRSchedule(lr=2.0, total_steps=110, name="cosine", warmup_steps=10, min_lr=0.0)
    assert s(10) == pytest.approx(2.0)  # float64 arithmetic, as above
    assert s(60) == pytest.approx(1.0)  # half of the 100 post-warmup steps
    assert s(110) == pytest.approx(0.0, abs=1e-12)  # 1 + cos(pi) in float64: ~1e-16
    assert LRSchedule(lr=0.5, total_steps=10, name="constant")(7) == 0.5


def test_progress_replaces_the_step_count():
    # float64 arithmetic, as above
    s = LRSchedule(lr=1.0, total_steps=1, name="wsd", warmup_steps=3, min_lr=0.0, decay_fraction=0.5)
    assert s(0, progress=0.9) == pytest.approx(1 / 3)  # warmup still counts steps
    assert s(50, progress=0.25) == 1.0
    assert s(50, progress=0.75) == pytest.approx(0.5)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="unknown schedule"):
        LRSchedule(lr=1.0, total_steps=10, name="linear")
    with pytest.raises(ValueError, match="min_lr"):
        LRSchedule(lr=1.0, total_steps=10, min_lr=2.0)
