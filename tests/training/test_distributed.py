"""The trainer under torchrun: 2 CPU processes with gloo give the losses of 1 process on the same global batch."""

import os
import subprocess
import sys

import pytest
import torch

from hymba import HymbaForCausalLM
from hymba.training import checkpointing as C
from hymba.training.metrics import read_metrics

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SETTINGS = ["--preset", "tiny", "--max-steps", "4", "train.batch_size=4", "train.micro_batch_size=1",
            "data.seq_len=32", "train.log_interval=1", "train.save_interval=2", "train.keep_last=5",
            "train.eval_interval=2", "train.eval_batches=2", "train.threads=1", "train.tensorboard=false",
            "train.plot=false", "train.progress=false", "schedule.warmup_steps=1"]


def losses(out_dir: str, kind: str = "train") -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out_dir) if r["kind"] == kind]


@pytest.fixture(scope="module")
def single_process(prepared, tmp_path_factory):
    from hymba.cli import main

    out = str(tmp_path_factory.mktemp("single") / "run")
    assert main(["train", "--data", prepared, "--out", out] + SETTINGS) == 0
    return out


def torchrun(prepared: str, out: str, strategy: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.join(REPO, "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "hymba.cli", "train", "--data", prepared, "--out", out] + SETTINGS + [f"distributed.strategy={strategy}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]


def assert_same_run(a: str, b: str) -> None:
    for kind in ("train", "eval"):
        la, lb = losses(a, kind), losses(b, kind)
        assert [s for s, _ in la] == [s for s, _ in lb] and la
        # the same micro-batch gradients summed in another grouping (an all-reduce): ~eps32 apart; AdamW's
        # normalized steps keep 4 steps' losses within ~10 eps32: rel 2e-5 is ~170 eps32
        for (_, x), (_, y) in zip(la, lb):
            assert x == pytest.approx(y, rel=2e-5), kind


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one(prepared, single_process, tmp_path, strategy):
    out = str(tmp_path / strategy)
    torchrun(prepared, out, strategy)
    assert_same_run(out, single_process)
    # rank 0 alone logged: one record per step
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4]
    # the consolidated checkpoint is the released format, equal to the single-process weights
    a = HymbaForCausalLM.from_pretrained(C.latest_checkpoint(out))
    b = HymbaForCausalLM.from_pretrained(C.latest_checkpoint(single_process))
    # weights ~0.1 after 4 AdamW steps of lr 3e-3 whose sizes differ by ~eps32 relative: 1e-5 + 1e-4 |w| is
    # far above that and far below one step (3e-3)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)
    if strategy == "fsdp":
        # the state saved by 2 ranks resumes in 1 process: the same last two steps
        from training_helpers import tiny_config

        from hymba.training.trainer import Trainer

        mid = os.path.join(C.checkpoint_root(out), "step-00000002")
        assert sorted(f for f in os.listdir(os.path.join(mid, "trainer")) if f.startswith("rng-")) == [
            "rng-00000.json", "rng-00000.safetensors", "rng-00001.json", "rng-00001.safetensors"]
        resumed = str(tmp_path / "resumed")
        cfg = tiny_config(prepared, resumed, train={"max_steps": 4, "micro_batch_size": 1, "eval_interval": 2})
        cfg.schedule.warmup_steps = 1
        Trainer(cfg, resume=mid, print_fn=lambda s: None).fit()
        for (s1, x), (s2, y) in zip(losses(resumed), losses(single_process)[2:]):
            assert s1 == s2 and x == pytest.approx(y, rel=2e-5)  # as above
