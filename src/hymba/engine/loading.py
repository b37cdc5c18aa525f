"""A checkpoint and its tokenizer, ready for inference, with errors that say which file or directory is wrong."""

from __future__ import annotations

import os

import torch

from ..modeling import HymbaForCausalLM
from ..tokenizer import Tokenizer, load_tokenizer


def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """"auto" device: CUDA when available, else the CPU; "auto" dtype: bfloat16 on CUDA, float32 elsewhere."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"--device {device!r} is not a device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    return dev, getattr(torch, dtype)


def load_model_and_tokenizer(model_dir: str, tokenizer_dir: str | None = None, device: str = "auto",
                             dtype: str = "auto") -> tuple[HymbaForCausalLM, Tokenizer]:
    """The checkpoint in `model_dir` (in eval mode) and the tokenizer of `tokenizer_dir` (default: the same
    directory), checked to belong together."""
    if not os.path.isdir(model_dir):
        raise ValueError(f"--model {model_dir}: no such directory (expected a checkpoint: config.json + "
                         "model.safetensors)")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        raise ValueError(f"--model {model_dir}: no config.json there; is it a checkpoint directory?")
    tok_dir = tokenizer_dir or model_dir
    if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        hint = "" if tokenizer_dir else "; pass --tokenizer DIR to use another directory's tokenizer"
        raise ValueError(f"no tokenizer.json in {tok_dir}{hint}")
    dev, dt = resolve_device_dtype(device, dtype)
    tokenizer = load_tokenizer(tok_dir)
    model = HymbaForCausalLM.from_pretrained(model_dir, dtype=dt, device=dev)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer in {tok_dir} has {tokenizer.vocab_size} tokens but the model in "
                         f"{model_dir} only {model.config.vocab_size} (vocab_size): they do not belong together")
    return model.eval(), tokenizer
