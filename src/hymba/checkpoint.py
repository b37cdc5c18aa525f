"""Loading and saving the released checkpoint format: `config.json` + `model.safetensors` (or shards with
`model.safetensors.index.json`). Tensor names are the release's; every mismatch is reported at once."""

from __future__ import annotations

import contextlib
import json
import os
import re

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .config import HymbaConfig
from .errors import HymbaError
from .utils import atomic_path, atomic_write_text

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")
# Tensors the release may carry that our model has no use for (consumer layers never compute k).
_IGNORABLE = re.compile(r"model\.layers\.\d+\.mamba\.self_attn\.k_norm\.weight")


class CheckpointError(HymbaError, ValueError):
    """A checkpoint directory that does not match the model its config describes."""


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", size.upper())
    if not m:
        raise ValueError(f"cannot parse size {size!r} (examples: 5GB, 500MB, 1000000)")
    return int(float(m.group(1)) * {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[m.group(2)])


def _read_index(index: str) -> dict[str, str]:
    try:
        with open(index, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in weight_map.items()):
        raise CheckpointError(f"{index} is not a valid safetensors index (it needs a \"weight_map\" object of "
                              "tensor name -> shard file name)")
    return weight_map


def _shard_path(path: str, index: str, name: str, shard: str) -> str:
    """The shard file an index entry names, which must lie inside the checkpoint directory: no absolute
    paths, no `..`, no symbolic link leading out of it."""
    parts = shard.replace("\\", "/").split("/")
    file = os.path.join(path, shard)
    root = os.path.realpath(path)
    if (os.path.isabs(shard) or ".." in parts or not shard
            or os.path.commonpath([root, os.path.realpath(file)]) != root):
        raise CheckpointError(f"{index}: the entry for {name!r} names the shard {shard!r}, which is not a file "
                              f"inside {path}; refusing to read it")
    return file


def checkpoint_files(path: str) -> dict[str, str]:
    """Map every tensor name to the safetensors file holding it."""
    single = os.path.join(path, SINGLE_FILE)
    index = os.path.join(path, INDEX_FILE)
    if os.path.exists(index):
        files = {name: _shard_path(path, index, name, shard) for name, shard in _read_index(index).items()}
        missing = sorted({f for f in files.values() if not os.path.isfile(f)})
        if missing:
            raise CheckpointError(f"{index} names shard files that do not exist: {', '.join(missing)}")
        return files
    if os.path.exists(single):
        with _open_safetensors(single) as f:
            return {name: single for name in f.keys()}
    pickles = [p for p in PICKLE_FILES if os.path.exists(os.path.join(path, p))]
    if pickles:
        raise CheckpointError(
            f"{path} holds only pickle checkpoints ({', '.join(pickles)}); hymba refuses to unpickle weights "
            "(arbitrary code execution). Convert them to safetensors first.")
    raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}")


@contextlib.contextmanager
def _open_safetensors(file: str, device: str = "cpu"):
    """safe_open, with a damaged file (truncated, garbage, a bad header) reported by name."""
    try:
        with safe_open(file, framework="pt", device=device) as f:
            yield f
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{file} is not a readable safetensors file ({type(e).__name__}: {e})") from None


def read_safetensors(file: str) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file (on the CPU); a missing or damaged file is a CheckpointError naming it."""
    if not os.path.isfile(file):
        raise CheckpointError(f"{file} is missing")
    with _open_safetensors(file) as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def read_state_dict(path: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    by_file: dict[str, list[str]] = {}
    for name, file in checkpoint_files(path).items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with _open_safetensors(file, str(device)) as f:
            held = set(f.keys())
            absent = [n for n in names if n not in held]
            if absent:
                raise CheckpointError(f"{file} does not hold {', '.join(absent[:5])}, which the index puts there")
            for name in names:
                tensors[name] = f.get_tensor(name)
    return tensors


def check_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise one error naming every missing, unexpected, mis-shaped and non-floating-point tensor."""
    expected = {n: tuple(p.shape) for n, p in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        tensors = {n: t for n, t in tensors.items() if n != "lm_head.weight"}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(n for n in set(tensors) - set(expected) if not _IGNORABLE.fullmatch(n))
    misshaped = sorted(n for n in set(expected) & set(tensors) if tuple(tensors[n].shape) != expected[n])
    mistyped = sorted(n for n in set(expected) & set(tensors) if not tensors[n].is_floating_point())
    if missing or unexpected or misshaped or mistyped:
        lines = [f"{source} does not match the model described by its config.json:"]
        lines += [f"  missing:    {n} (expected shape {list(expected[n])})" for n in missing]
        lines += [f"  unexpected: {n} (shape {list(tensors[n].shape)})" for n in unexpected]
        lines += [f"  mis-shaped: {n}: checkpoint {list(tensors[n].shape)}, model expects {list(expected[n])}"
                  for n in misshaped]
        lines += [f"  mis-typed:  {n}: {tensors[n].dtype}, a floating-point tensor expected" for n in mistyped]
        raise CheckpointError("\n".join(lines))


def check_all_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise naming every tensor that holds NaN or infinity (such weights make every output NaN)."""
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise CheckpointError(f"{source} holds non-finite values (NaN or inf) in {', '.join(sorted(bad)[:10])}{more}; "
                              "the weights are damaged (pass check_finite=False to load them anyway)")


def _resolve_dtype(dtype, config_dict: dict, tensors: dict[str, torch.Tensor]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        name = config_dict.get("torch_dtype")
        if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        floats = [t.dtype for t in tensors.values() if t.is_floating_point()]
        return floats[0] if floats else torch.float32
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ValueError(f"unknown dtype {dtype!r}")


def load_pretrained(cls, path, dtype="auto", device="cpu", kernels="auto", check_finite: bool = True) -> nn.Module:
    """`cls` (HymbaForCausalLM) built on the meta device from the directory's config.json, its weights loaded
    from the safetensors files, in `dtype` on `device`, in eval mode. Everything is checked before the model
    takes a tensor (names, shapes, dtypes and, with `check_finite`, NaN/inf), so a bad checkpoint raises a
    CheckpointError naming the file or tensor and nothing is half loaded."""
    path = os.fspath(path)
    if os.path.isfile(path):
        raise CheckpointError(f"{path} is a file; a checkpoint is a directory (config.json + model.safetensors)")
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    config = HymbaConfig.from_json(path)
    tensors = read_state_dict(path)
    dtype = _resolve_dtype(dtype, config.extra, tensors)
    with torch.device("meta"):
        model = cls(config, init=False)
    check_state_dict(model, tensors, path)
    if check_finite:
        check_all_finite(tensors, path)
    wanted = set(model.state_dict())  # drops the ignorable extras (and lm_head when tied)
    if config.tie_word_embeddings:
        wanted.discard("lm_head.weight")
    state = {n: t.to(dtype) for n, t in tensors.items() if n in wanted}
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if model.model.rotary is not None:  # buffers are not in the file: rebuild them from the config
        model.model.rotary = type(model.model.rotary)(config)
    model.to(device)
    model.set_kernels(kernels)
    model.eval()
    return model


def save_pretrained(model: nn.Module, path, max_shard_size: int | str = "5GB") -> None:
    """Write config.json, generation_config.json and safetensors weights (sharded above max_shard_size).

    Each file is written to a temporary name and renamed, so an interrupted save never leaves a half-written
    file under a real name. Tied embeddings are stored once (no lm_head.weight), as the release does."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    state = {n: t.detach().contiguous().cpu() for n, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    limit = _parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        with atomic_path(os.path.join(path, SINGLE_FILE)) as tmp:
            save_file(shards[0], tmp, metadata=metadata)
        stale = os.path.join(path, INDEX_FILE)
        if os.path.exists(stale):
            os.remove(stale)
    else:
        weight_map = {}
        total = sum(t.numel() * t.element_size() for t in state.values())
        for k, shard in enumerate(shards, start=1):
            fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            with atomic_path(os.path.join(path, fname)) as tmp:
                save_file(shard, tmp, metadata=metadata)
            weight_map.update({n: fname for n in shard})
        atomic_write_text(os.path.join(path, INDEX_FILE),
                          json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        stale = os.path.join(path, SINGLE_FILE)
        if os.path.exists(stale):
            os.remove(stale)
    config = model.config.to_dict()
    config["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    atomic_write_text(os.path.join(path, "config.json"), json.dumps(config, indent=2) + "\n")
    gen = {"bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id,
           "pad_token_id": model.config.pad_token_id}
    atomic_write_text(os.path.join(path, "generation_config.json"), json.dumps(gen, indent=2) + "\n")
