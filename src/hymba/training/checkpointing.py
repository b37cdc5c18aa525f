"""Training checkpoints: one directory per step, written under a temporary name and renamed when complete.
At the end of a run, OUT/model holds the final model alone (hard links into its checkpoint).

    OUT/checkpoints/step-00000500/
        config.json, generation_config.json, model.safetensors    the released format (from_pretrained, generate)
        tokenizer.json, tokenizer_config.json                     the tokenizer the data was made with
        adapter/                                                  LoRA runs: the peft adapter (adapter_config.json, ...)
        trainer/state.json                                        step, tokens, data position, counters, config
        trainer/model.safetensors                                 the training model's whole state (LoRA unmerged)
        trainer/optimizer.safetensors, optimizer.json             the optimizer's whole state and its groups
        trainer/rng-00000.safetensors, rng-00000.json             each rank's RNG states

Nothing in a checkpoint is unpickled or executed: tensors are safetensors, everything else JSON. The state is
whole (gathered on rank 0 when sharded), so a run resumes on any number of ranks.

A crash (or SIGKILL) during a save leaves a hidden `.step-*.tmp` directory that is never taken for a
checkpoint and is removed by the next save or resume; the previous checkpoint is untouched until the new
one is complete. Only the newest `keep_last` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from ..checkpoint import CheckpointError, read_safetensors
from ..modeling import HymbaForCausalLM
from ..utils import atomic_dir, atomic_write_text, replace_dir
from . import distributed as D


class TrainingCheckpointError(CheckpointError):
    """A training checkpoint that cannot be resumed from (missing, truncated or corrupted files)."""


STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = os.path.join("trainer", "state.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def checkpoint_root(out_dir: str) -> str:
    return os.path.join(out_dir, "checkpoints")


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """Complete checkpoints under `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = STEP_DIR.match(name)
        if m and os.path.exists(os.path.join(root, name, STATE_FILE)):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(found)


def latest_checkpoint(out_dir: str) -> str | None:
    ckpts = list_checkpoints(checkpoint_root(out_dir))
    return ckpts[-1][1] if ckpts else None


def resume_candidates(resume: str | bool, out_dir: str) -> list[str]:
    """The checkpoints a resume may take, in order of preference. True: the run directory's checkpoints, newest
    first. A path: that checkpoint (then the older ones of its run, to name in an error), or the checkpoints of
    that run directory, newest first. Nothing to resume from is an error."""
    if resume is True:
        found = [p for _, p in reversed(list_checkpoints(checkpoint_root(out_dir)))]
        if not found:
            raise TrainingCheckpointError(f"--resume: there is no checkpoint in {checkpoint_root(out_dir)} to resume "
                                    "from (drop --resume to start a new run)")
        return found
    path = os.path.abspath(os.fspath(resume))
    if os.path.exists(os.path.join(path, STATE_FILE)):
        older = [p for step, p in reversed(list_checkpoints(os.path.dirname(path))) if os.path.abspath(p) != path
                 and step < _step_of(path)]
        return [path] + older
    found = [p for _, p in reversed(list_checkpoints(checkpoint_root(path)))]
    found = found or [p for _, p in reversed(list_checkpoints(path))]
    if not found:
        raise TrainingCheckpointError(f"--resume-from {path}: not a training checkpoint (no {STATE_FILE}) and no "
                                "checkpoints under it")
    return found


def _step_of(path: str) -> int:
    m = STEP_DIR.match(os.path.basename(path))
    return int(m.group(1)) if m else -1


def remove_stale(root: str) -> None:
    """Delete what interrupted saves left behind (hidden temporary directories)."""
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        if name.startswith(".step-") and (name.endswith(".tmp") or name.endswith(".old")):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def prune(root: str, keep_last: int) -> None:
    for _, path in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(root: str, step: int, write_all_ranks: Callable[[str], None],
                    write_main: Callable[[str], None], info: D.DistInfo, keep_last: int) -> str:
    """Write checkpoint `step` atomically: every rank runs write_all_ranks(tmp) (sharded state, RNG), then
    rank 0 runs write_main(tmp) (model export, state.json) and renames tmp to `step-NNNNNNNN`."""
    final = os.path.join(root, f"step-{step:08d}")
    tmp = None
    if info.is_main:
        os.makedirs(root, exist_ok=True)
        remove_stale(root)
        tmp = tempfile.mkdtemp(prefix=f".step-{step:08d}.", suffix=".tmp", dir=root)
    tmp = D.broadcast_object(tmp)
    try:
        write_all_ranks(tmp)
        D.barrier()
        if info.is_main:
            write_main(tmp)
            _make_readable(tmp)
            replace_dir(tmp, final)  # an existing step (a run resumed from an older checkpoint) is replaced
            prune(root, keep_last)
    finally:
        if info.is_main and tmp is not None and os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    D.barrier()
    return final


def _make_readable(path: str) -> None:
    """Temporary files are created private (0600); give the checkpoint the permissions of the user's umask."""
    mask = os.umask(0)
    os.umask(mask)
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


def publish_model(checkpoint: str, dest: str) -> None:
    """`OUT/model`: the final model without the trainer state, as hard links into the checkpoint (no copy of
    the weights; it outlives the checkpoint's pruning). Replaced whole, atomically."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another filesystem, or links not supported
            shutil.copy2(src, dst)

    with atomic_dir(dest) as tmp:
        for name in os.listdir(checkpoint):
            src = os.path.join(checkpoint, name)
            if name == "trainer":
                continue
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(tmp, name), copy_function=link)
            else:
                link(src, os.path.join(tmp, name))
        _make_readable(tmp)


# ---- pieces of a checkpoint -----------------------------------------------------------------------------------------
def export_pretrained(state: dict[str, torch.Tensor], config, directory: str, tokenizer_dir: str | None) -> None:
    """Write a full state dict as a released-format model directory (+ the tokenizer files)."""
    with torch.device("meta"):
        model = HymbaForCausalLM(config, init=False)
    state = dict(state)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"model state does not match its config: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(directory)
    if tokenizer_dir:
        copy_tokenizer(tokenizer_dir, directory)


def copy_tokenizer(src: str, dst: str) -> None:
    for name in TOKENIZER_FILES:
        path = os.path.join(src, name)
        if os.path.exists(path):
            shutil.copyfile(path, os.path.join(dst, name))


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise TrainingCheckpointError(f"{path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrainingCheckpointError(f"{path} is not valid JSON ({e})") from None


def _save_tensors(tensors: dict[str, torch.Tensor], path: str) -> dict[str, str]:
    """Write tensors as safetensors; a tensor sharing memory with one already written (tied weights) is
    recorded as an alias of it instead. Returns {alias: name}."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in tensors.items():
        t = t.detach().cpu()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        unique[name] = t.contiguous()
    save_file(unique, path)
    return aliases


def save_trainer_state(directory: str, model_state: dict[str, torch.Tensor], optim_state: dict[str, Any]) -> None:
    """The model's and the optimizer's whole state (rank 0), as safetensors + JSON."""
    d = os.path.join(directory, "trainer")
    os.makedirs(d, exist_ok=True)
    aliases = _save_tensors(model_state, os.path.join(d, "model.safetensors"))
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param, entries in optim_state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param}/{name}"] = value
            else:
                scalars.setdefault(param, {})[name] = value
    _save_tensors(tensors, os.path.join(d, "optimizer.safetensors"))
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in optim_state["param_groups"]]
    with open(os.path.join(d, "optimizer.json"), "w", encoding="utf-8") as f:
        json.dump({"param_groups": groups, "scalars": scalars, "model_aliases": aliases}, f, indent=1)


def read_trainer_state(directory: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state, optimizer state) written by `save_trainer_state`, checked to be complete; a damaged file
    raises a CheckpointError naming it. Nothing is unpickled."""
    d = os.path.join(directory, "trainer")
    meta_path = os.path.join(d, "optimizer.json")
    meta = _read_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("param_groups"), list):
        raise TrainingCheckpointError(f"{meta_path} does not describe an optimizer state (no param_groups)")
    model_state = read_safetensors(os.path.join(d, "model.safetensors"))
    for alias, name in meta.get("model_aliases", {}).items():
        if name not in model_state:
            raise TrainingCheckpointError(f"{meta_path}: {alias} is an alias of {name}, which "
                                          f"{os.path.join(d, 'model.safetensors')} does not hold")
        model_state[alias] = model_state[name]
    state: dict[str, dict[str, Any]] = {}
    for key, value in read_safetensors(os.path.join(d, "optimizer.safetensors")).items():
        param, _, name = key.rpartition("/")
        state.setdefault(param, {})[name] = value
    for param, entries in meta.get("scalars", {}).items():
        state.setdefault(param, {}).update(entries)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return model_state, {"state": state, "param_groups": groups}


def save_rng(directory: str, rank: int) -> None:
    """This rank's RNG states: torch's (CPU, CUDA) as tensors, numpy's and Python's as JSON."""
    d = os.path.join(directory, "trainer")
    os.makedirs(d, exist_ok=True)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(tensors, os.path.join(d, f"rng-{rank:05d}.safetensors"))
    with open(os.path.join(d, f"rng-{rank:05d}.json"), "w", encoding="utf-8") as f:
        json.dump({"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [version, list(internal), py_gauss]},
                  f)


def read_rng(directory: str, rank: int) -> dict[str, Any] | None:
    """This rank's saved RNG states, or None when the checkpoint has none for it (saved by fewer ranks)."""
    d = os.path.join(directory, "trainer")
    path = os.path.join(d, f"rng-{rank:05d}.safetensors")
    if not os.path.exists(path):
        return None
    tensors = read_safetensors(path)
    meta_path = os.path.join(d, f"rng-{rank:05d}.json")
    meta = _read_json(meta_path)
    try:
        kind, pos, has_gauss, gauss = meta["numpy"]
        version, internal, py_gauss = meta["python"]
        return {"torch": tensors["torch"], "cuda": [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")],
                "numpy": (kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss),
                "python": (version, tuple(internal), py_gauss)}
    except (KeyError, TypeError, ValueError) as e:
        raise TrainingCheckpointError(f"{meta_path} / {path}: not the RNG state this library writes ({e})") from None


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_state(directory: str, state: dict[str, Any]) -> None:
    os.makedirs(os.path.join(directory, "trainer"), exist_ok=True)
    atomic_write_text(os.path.join(directory, STATE_FILE), json.dumps(state, indent=2) + "\n")


def read_state(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, STATE_FILE)
    state = _read_json(path)
    missing = [k for k in ("task", "step", "tokens", "loader", "skipped_steps", "bad_in_a_row")
               if not isinstance(state, dict) or k not in state]
    if missing:
        raise TrainingCheckpointError(f"{path} lacks {', '.join(missing)}: not a state this library writes")
    return state
