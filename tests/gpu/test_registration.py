"""The fast bundle registers itself without CUDA or Triton, and "auto" falls back to the reference."""

import importlib

import pytest
import torch

from hymba.ops import REFERENCE, Kernels, available_kernels, get_kernels, register_kernels, registry


def test_gpu_module_imports_without_cuda_and_registers():
    gpu = importlib.import_module("hymba.ops.gpu")
    assert hasattr(gpu, "build_triton_kernels")
    assert {"triton", "triton-conv"} <= set(available_kernels())
    assert "triton" in registry._CUDA_PREFERENCE


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallback")
def test_triton_bundle_refuses_without_cuda_and_auto_falls_back():
    with pytest.raises((RuntimeError, ImportError), match="CUDA|triton"):
        get_kernels("triton")
    assert get_kernels("auto", "cuda") is REFERENCE
    assert get_kernels("auto", "cpu") is REFERENCE


def test_auto_tries_cuda_backends_best_first(monkeypatch):
    calls = []

    def broken():
        calls.append("broken")
        raise ImportError("no such library")

    fake = Kernels("fake", *(lambda *a, **k: None for _ in range(6)))

    def working():
        calls.append("working")
        return fake

    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(registry, "_CUDA_PREFERENCE", [])
    register_kernels("working", working, prefer_on_cuda=True)
    register_kernels("broken", broken, prefer_on_cuda=True)  # registered last: tried first
    assert get_kernels("auto", "cuda") is fake
    assert calls == ["broken", "working"]
    assert get_kernels("auto", "cpu") is REFERENCE  # never on a CPU device


def test_traceable_auto_skips_bundles_with_graph_breaks(monkeypatch):
    """Compiled layers ask for kernels torch.compile traces whole: "auto" then passes over a preferred bundle
    with a graph break (fla-core's conv) for the next registered one; plain "auto" keeps the preferred."""
    members = [lambda *a, **k: None for _ in range(6)]
    breaks, whole = Kernels("breaks", *members, traceable=False), Kernels("whole", *members)
    monkeypatch.setattr(registry, "_FACTORIES", {"reference": lambda: REFERENCE})
    monkeypatch.setattr(registry, "_CUDA_PREFERENCE", [])
    register_kernels("breaks", lambda: breaks, prefer_on_cuda=True)
    register_kernels("whole", lambda: whole)
    assert get_kernels("auto", "cuda") is breaks
    assert get_kernels("auto", "cuda", traceable=True) is whole
    assert get_kernels("auto", "cpu", traceable=True) is REFERENCE


def test_compile_layers_asks_the_model_for_traceable_kernels(monkeypatch):
    from helpers import small_config

    from hymba import HymbaForCausalLM
    from hymba.modeling import model as model_module

    asked = []
    monkeypatch.setattr(model_module, "get_kernels", lambda name, device, traceable=False: asked.append(traceable)
                        or REFERENCE)
    model = HymbaForCausalLM(small_config(num_hidden_layers=1, global_attn_idx=[0], kv_reuse_group=[]))
    model.model.kernels_for(torch.device("cpu"))
    monkeypatch.setattr(model_module.HymbaDecoderLayer, "compile", lambda self: None)
    assert model_module.compile_layers(model) == 1
    model.model.kernels_for(torch.device("cpu"))
    assert asked == [False, True]


def test_bundle_contract_on_cpu():
    pytest.importorskip("triton")
    from hymba.ops.gpu import build_triton_kernels

    k = build_triton_kernels(conv="triton", require_cuda=False)
    assert k.name == "triton-conv"
    for name in ("causal_conv1d", "conv_step", "selective_scan", "ssm_step", "build_attention_mask", "attention"):
        assert callable(getattr(k, name))
    assert k.traceable  # our conv is a custom op: compiled layers trace it whole
    with pytest.raises(ValueError, match="conv must be"):
        build_triton_kernels(conv="cuda", require_cuda=False)
