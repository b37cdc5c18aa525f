"""LoRA through `peft`: low-rank adapters on the mixer's in_proj/out_proj and the MLP projections.

Adapters are injected into the model in place (`peft.inject_adapter_in_model`), so the trainer, FSDP and
the checkpoints see the same module tree with `base_layer` / `lora_A` / `lora_B` children. A checkpoint
holds, by `lora.save`:
- "merged": the released format with W + (alpha / r) * B @ A folded in (loads anywhere, generates as is);
- "adapter": `adapter/` only: adapter_config.json + adapter_model.safetensors (peft's file layout);
- "both" (default).
"""

from __future__ import annotations

import contextlib
import json
import os
import re

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..utils import atomic_path, atomic_write_text
from .config import LoraSection

ADAPTER_NAME = "default"
_LORA_KEY = re.compile(r"^(?P<prefix>.+)\.lora_(?P<which>[AB])\.(?P<adapter>[^.]+)\.weight$")


def lora_config(cfg: LoraSection):
    from peft import LoraConfig

    if cfg.r < 1:
        raise ValueError(f"lora.r must be >= 1, got {cfg.r}")
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.target_modules), bias="none")


def apply_lora(model: nn.Module, cfg: LoraSection) -> nn.Module:
    """Inject adapters (B = 0: the model computes exactly what it did) and freeze everything else."""
    from peft import inject_adapter_in_model

    model = inject_adapter_in_model(lora_config(cfg), model, adapter_name=ADAPTER_NAME)
    trainable = 0
    for name, p in model.named_parameters():
        p.requires_grad = ".lora_" in name
        trainable += p.numel() if p.requires_grad else 0
    if trainable == 0:
        raise ValueError(f"lora.target_modules {cfg.target_modules} matched no module of the model")
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Run the base model (the DPO reference, with LoRA) without removing the adapters."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)


def has_lora(model: nn.Module) -> bool:
    return any(".lora_" in n for n, _ in model.named_parameters())


def merge_lora_state(state: dict[str, torch.Tensor], cfg: LoraSection) -> dict[str, torch.Tensor]:
    """A state dict of the adapted model -> the plain model's, each adapted weight W + (alpha / r) B @ A."""
    scaling = cfg.alpha / cfg.r
    out: dict[str, torch.Tensor] = {}
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _LORA_KEY.match(key)
        if m:
            factors.setdefault(m["prefix"], {})[m["which"]] = value
        elif ".base_layer." in key:
            out[key.replace(".base_layer.", ".")] = value
        else:
            out[key] = value
    for prefix, ab in factors.items():
        key = prefix + ".weight"
        if key not in out or set(ab) != {"A", "B"}:
            raise ValueError(f"incomplete LoRA factors for {prefix} (have {sorted(ab)})")
        w = out[key]
        delta = (ab["B"].double() @ ab["A"].double()) * scaling
        out[key] = (w.double() + delta).to(w.dtype)
    return out


def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter tensors under peft's saved names (`base_model.model.<module>.lora_A.weight`)."""
    out = {}
    for key, value in state.items():
        m = _LORA_KEY.match(key)
        if m:
            out[f"base_model.model.{m['prefix']}.lora_{m['which']}.weight"] = value.detach().cpu().contiguous()
    return out


def save_adapter(state: dict[str, torch.Tensor], cfg: LoraSection, directory: str,
                 base_model: str | None = None) -> None:
    tensors = adapter_state(state)
    if not tensors:
        raise ValueError("no LoRA tensors in the model state")
    os.makedirs(directory, exist_ok=True)
    with atomic_path(os.path.join(directory, "adapter_model.safetensors")) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    config = lora_config(cfg).to_dict()
    config["base_model_name_or_path"] = base_model
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    atomic_write_text(os.path.join(directory, "adapter_config.json"), json.dumps(config, indent=2, default=str) + "\n")


def load_adapter(model: nn.Module, directory: str) -> nn.Module:
    """Inject the adapter saved in `directory` into `model` (a plain HymbaForCausalLM) and load its weights."""
    with open(os.path.join(directory, "adapter_config.json"), encoding="utf-8") as f:
        saved = json.load(f)
    cfg = LoraSection(enabled=True, r=saved["r"], alpha=saved["lora_alpha"], dropout=saved.get("lora_dropout", 0.0),
                      target_modules=sorted(saved["target_modules"]))
    model = apply_lora(model, cfg)
    tensors = load_file(os.path.join(directory, "adapter_model.safetensors"))
    state = {}
    for key, value in tensors.items():
        name = key.removeprefix("base_model.model.")
        name = re.sub(r"\.lora_([AB])\.weight$", rf".lora_\1.{ADAPTER_NAME}.weight", name)
        state[name] = value
    missing = [k for k in state if k not in dict(model.named_parameters())]
    if missing:
        raise ValueError(f"{directory}: adapter tensors that match no module of the model: {missing[:5]}")
    model.load_state_dict(state, strict=False)
    return model
