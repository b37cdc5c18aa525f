"""Resuming reads a training checkpoint without unpickling anything, refuses damaged files by name, and passes
over a damaged newest checkpoint (with a warning) when asked to take the newest."""

import os
import pickle

import pytest
import torch
from training_helpers import tiny_config

from hymba.training import checkpointing as C
from hymba.training.trainer import Trainer, TrainingError


class Payload:
    """Unpickling this runs `touch MARKER`: what a malicious checkpoint file would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def run_dir(prepared, tmp_path_factory):
    """A run with checkpoints at steps 2 and 4 (read-only: tests copy it)."""
    out = str(tmp_path_factory.mktemp("run") / "run")
    Trainer(tiny_config(prepared, out, train={"max_steps": 4, "save_interval": 2, "keep_last": 5}),
            print_fn=lambda s: None).fit()
    return out


def copy_run(run_dir, tmp_path) -> str:
    import shutil

    out = str(tmp_path / "run")
    shutil.copytree(run_dir, out)
    return out


def test_a_checkpoint_holds_no_pickle(run_dir):
    trainer = os.path.join(C.latest_checkpoint(run_dir), "trainer")
    assert sorted(os.listdir(trainer)) == ["model.safetensors", "optimizer.json", "optimizer.safetensors",
                                           "rng-00000.json", "rng-00000.safetensors", "state.json"]
    for name in os.listdir(trainer):
        with open(os.path.join(trainer, name), "rb") as f:
            assert not f.read(2).startswith(b"\x80"), name  # no pickle protocol header


def test_pickle_payloads_in_every_file_are_refused_and_never_run(run_dir, prepared, tmp_path):
    out = copy_run(run_dir, tmp_path)
    ckpt = C.latest_checkpoint(out)
    marker = str(tmp_path / "payload-ran")
    files = [os.path.join(root, f) for root, _, fs in os.walk(ckpt) for f in fs]
    for name in [os.path.relpath(f, ckpt) for f in files if os.path.relpath(f, ckpt).startswith("trainer")]:
        damaged = copy_run(run_dir, tmp_path / name.replace(os.sep, "_"))
        path = os.path.join(C.latest_checkpoint(damaged), name)
        with open(path, "wb") as f:
            pickle.dump(Payload(marker), f)
        cfg = tiny_config(prepared, damaged, train={"max_steps": 6, "save_interval": 2})
        with pytest.raises(TrainingError, match=f"cannot resume from .*step-00000004.*{os.path.basename(name)}"):
            Trainer(cfg, resume=C.latest_checkpoint(damaged), print_fn=lambda s: None).fit()
    assert not os.path.exists(marker)


def test_a_damaged_newest_checkpoint_is_passed_over_for_the_previous(run_dir, prepared, tmp_path):
    out = copy_run(run_dir, tmp_path)
    newest = C.latest_checkpoint(out)
    with open(os.path.join(newest, "trainer", "optimizer.safetensors"), "r+b") as f:
        f.truncate(100)  # a truncated file
    cfg = tiny_config(prepared, out, train={"max_steps": 4, "save_interval": 2, "keep_last": 5})
    with pytest.warns(UserWarning, match="step-00000004 is damaged .*optimizer.safetensors.*resuming from "
                                         ".*step-00000002"):
        result = Trainer(cfg, resume=True, print_fn=lambda s: None).fit()
    assert result.steps == 4
    # named explicitly, the damaged checkpoint is refused, naming the file and the intact one before it
    with open(os.path.join(newest, "trainer", "state.json"), "w") as f:
        f.write('{"step": 4')
    with pytest.raises(TrainingError, match="state.json is not valid JSON.*the previous one is .*step-00000002"):
        Trainer(cfg, resume=newest, print_fn=lambda s: None).fit()


def test_resume_with_nothing_to_resume_is_refused(prepared, tmp_path):
    cfg = tiny_config(prepared, str(tmp_path / "fresh"))
    with pytest.raises(C.TrainingCheckpointError, match="no checkpoint in .*fresh.*checkpoints to resume from"):
        Trainer(cfg, resume=True, print_fn=lambda s: None).fit()


def test_the_saved_state_round_trips_exactly(run_dir):
    ckpt = C.latest_checkpoint(run_dir)
    model_state, optim_state = C.read_trainer_state(ckpt)
    assert model_state["lm_head.weight"] is model_state["model.embed_tokens.weight"]  # tied: stored once
    assert optim_state["param_groups"] and all(isinstance(g["betas"], tuple) for g in optim_state["param_groups"])
    some = next(iter(optim_state["state"].values()))
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(some) and isinstance(some["exp_avg"], torch.Tensor)


def test_windows_longer_than_the_models_positions_are_refused(prepared, tmp_path):
    cfg = tiny_config(prepared, str(tmp_path / "long"))
    cfg.data.seq_len = 513  # the tiny preset has 512 positions
    with pytest.raises(TrainingError, match="data.seq_len=513 is more than the model's max_position_embeddings .512."):
        Trainer(cfg, print_fn=lambda s: None).fit()
