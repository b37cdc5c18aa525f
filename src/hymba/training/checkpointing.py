"""Training checkpoints: one directory per step, written under a temporary name and renamed when complete.
At the end of a run, OUT/model holds the final model alone (hard links into its checkpoint).

    OUT/checkpoints/step-00000500/
        config.json, generation_config.json, model.safetensors    the released format (from_pretrained, generate)
        tokenizer.json, tokenizer_config.json                     the tokenizer the data was made with
        adapter/                                                  LoRA runs: the peft adapter (adapter_config.json, ...)
        trainer/state.json                                        step, tokens, data position, counters, config
        trainer/dcp/                                              model + optimizer, torch.distributed.checkpoint shards
        trainer/rng-00000.pt                                      each rank's RNG states

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

from ..modeling import HymbaForCausalLM
from ..utils import atomic_dir, atomic_write_text, replace_dir
from . import distributed as D

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


def resolve_resume(resume: str | bool | None, out_dir: str) -> str | None:
    """`--resume` (True / "auto"): the newest checkpoint of out_dir, if any. A path: that checkpoint, or the
    newest one of that run directory."""
    if not resume:
        return None
    if resume is True or resume == "auto":
        return latest_checkpoint(out_dir)
    path = os.fspath(resume)
    if os.path.exists(os.path.join(path, STATE_FILE)):
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"--resume {path}: not a training checkpoint (no {STATE_FILE}) and no checkpoints "
                                "under it")
    return latest


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


def rng_state() -> dict[str, Any]:
    """Every RNG's state, as tensors and plain lists (loadable with weights_only=True: no pickled objects)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), py_gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = state["python"]
    random.setstate((version, tuple(internal), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(directory: str, rank: int) -> None:
    os.makedirs(os.path.join(directory, "trainer"), exist_ok=True)
    torch.save(rng_state(), os.path.join(directory, "trainer", f"rng-{rank:05d}.pt"))


def load_rng(directory: str, rank: int) -> bool:
    path = os.path.join(directory, "trainer", f"rng-{rank:05d}.pt")
    if not os.path.exists(path):
        return False
    set_rng_state(torch.load(path, weights_only=True))
    return True


def write_state(directory: str, state: dict[str, Any]) -> None:
    os.makedirs(os.path.join(directory, "trainer"), exist_ok=True)
    atomic_write_text(os.path.join(directory, STATE_FILE), json.dumps(state, indent=2) + "\n")


def read_state(directory: str) -> dict[str, Any]:
    with open(os.path.join(directory, STATE_FILE), encoding="utf-8") as f:
        return json.load(f)
