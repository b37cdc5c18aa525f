import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from training_helpers import tiny_config

from hymba import HymbaForCausalLM
from hymba.engine import generate
from hymba.training import checkpointing as C
from hymba.training.metrics import read_metrics
from hymba.training.trainer import Trainer, TrainingError

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def curve(out_dir: str) -> list[tuple]:
    """The deterministic part of a run's log: (step, loss, lr, grad_norm, tokens) per training record."""
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"], r["tokens"]) for r in read_metrics(out_dir)
            if r["kind"] == "train"]


def test_a_tiny_model_learns(prepared, tmp_path):
    from hymba.training.data import open_shards, unigram_cross_entropy

    cfg = tiny_config(prepared, str(tmp_path / "run"), train={"max_steps": 30, "eval_interval": 15, "plot": True},
                      optim={"lr": 1e-2})
    result = Trainer(cfg, print_fn=lambda s: None).fit()
    losses = [loss for _, loss, *_ in curve(str(tmp_path / "run"))]
    start = math.log(320)
    unigram = unigram_cross_entropy(open_shards(prepared, "train"), open_shards(prepared, "val"), 320)
    assert losses[0] > start - 0.5  # it starts near the uniform guess over the 320 ids
    assert result.val_loss < start - 2.5  # and ends far below it (a synthetic grammar is easy)
    assert result.val_loss < unigram - 1.0  # well below what ignoring the context gets
    assert os.path.getsize(tmp_path / "run" / "loss.png") > 1000
    evals = [r for r in read_metrics(str(tmp_path / "run")) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [15, 30]
    assert evals[-1]["perplexity"] == pytest.approx(math.exp(evals[-1]["loss"]))  # float64 exp: approx's 1e-6


def test_gradient_accumulation_matches_one_big_batch(prepared, tmp_path):
    big = tiny_config(prepared, str(tmp_path / "a"), train={"max_steps": 3})
    acc = tiny_config(prepared, str(tmp_path / "b"), train={"max_steps": 3, "micro_batch_size": 1})
    Trainer(big, print_fn=lambda s: None).fit()
    Trainer(acc, print_fn=lambda s: None).fit()
    for (s1, l1, lr1, g1, t1), (s2, l2, lr2, g2, t2) in zip(curve(str(tmp_path / "a")), curve(str(tmp_path / "b"))):
        assert (s1, lr1, t1) == (s2, lr2, t2)
        # the same per-token gradients summed in another grouping differ by ~eps32 relative; AdamW's normalized
        # steps pass that on at about the same size, so 3 steps stay near 10 eps32: rel 1e-5 (loss) and 1e-4
        # (the gradient norm, a difference-sensitive sum of squares) are ~80 and ~800 eps32
        assert l1 == pytest.approx(l2, rel=1e-5) and g1 == pytest.approx(g2, rel=1e-4)


CLI_SETTINGS = ["train.batch_size=4", "data.seq_len=32", "train.log_interval=1", "train.save_interval=3",
                "train.keep_last=2", "train.eval_interval=0", "train.eval_batches=2", "train.threads=1",
                "train.tensorboard=false", "train.plot=false", "train.progress=false", "schedule.warmup_steps=2",
                "optim.lr=3e-3"]


def test_resume_after_sigkill_is_bit_identical(prepared, tmp_path):
    from hymba.cli import main

    steps = 16
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    args = ["train", "--preset", "tiny", "--data", prepared, "--max-steps", str(steps)] + CLI_SETTINGS
    assert main(args[:1] + ["--out", full] + args[1:]) == 0  # the uninterrupted run, in this process

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.join(REPO, "src")}
    cmd = [sys.executable, "-m", "hymba.cli", "train", "--out", killed] + args[1:]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # let it pass a checkpoint (every 3 steps) and train on, then kill it hard
        done = [r["step"] for r in read_metrics(killed) if r.get("kind") == "train"]
        if done and done[-1] >= 7:
            break
        if proc.poll() is not None:
            pytest.fail("the training process ended before it could be killed")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    resumed_at = C.read_state(C.latest_checkpoint(killed))["step"]
    assert 3 <= resumed_at < steps
    assert max(r["step"] for r in read_metrics(killed) if r["kind"] == "train") > resumed_at  # work was lost

    subprocess.run(cmd + ["--resume"], check=True, env=env, capture_output=True)
    assert curve(killed) == curve(full)  # bit-identical: every loss, lr, gradient norm
    assert len(curve(full)) == steps
    a = HymbaForCausalLM.from_pretrained(C.latest_checkpoint(full))
    b = HymbaForCausalLM.from_pretrained(C.latest_checkpoint(killed))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert len(C.list_checkpoints(C.checkpoint_root(killed))) == 2  # keep_last


def test_a_mid_run_checkpoint_loads_and_generates(prepared, tmp_path, capsys):
    from hymba.cli import main
    from hymba.tokenizer import load_tokenizer

    cfg = tiny_config(prepared, str(tmp_path / "run"), train={"max_steps": 6, "save_interval": 3, "keep_last": 5})
    Trainer(cfg, print_fn=lambda s: None).fit()
    ckpts = C.list_checkpoints(C.checkpoint_root(str(tmp_path / "run")))
    assert [s for s, _ in ckpts] == [3, 6]
    mid = ckpts[0][1]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(mid))
    model = HymbaForCausalLM.from_pretrained(mid)
    tok = load_tokenizer(mid)
    ids = torch.tensor([tok.encode("the cat saw")])
    out = generate(model, ids, max_new_tokens=5, do_sample=True, temperature=1.0, seed=0)
    assert out.shape[1] > ids.shape[1] and int(out.max()) < model.config.vocab_size
    # the weights are the step-3 weights: resuming from this checkpoint reloads the same tensors
    state = C.read_state(mid)
    assert state["step"] == 3 and state["loader"]["step_in_epoch"] + state["loader"]["epoch"] > 0
    assert main(["generate", "--model", mid, "--prompt", "the cat", "--max-new-tokens", "4", "--quiet"]) == 0
    assert capsys.readouterr().out.strip("\n")  # the continuation was printed


def test_a_crash_during_save_never_replaces_the_last_good_checkpoint(prepared, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    cfg = tiny_config(prepared, out, train={"max_steps": 6, "save_interval": 3, "keep_last": 1})
    real_export = C.export_pretrained
    calls = {"n": 0}

    def crashing_export(state, config, directory, tokenizer_dir):
        calls["n"] += 1
        if calls["n"] == 2:  # the second save: write part of it, then die
            real_export(state, config, directory, tokenizer_dir)
            os.remove(os.path.join(directory, "model.safetensors"))
            raise OSError("disk full (simulated)")
        real_export(state, config, directory, tokenizer_dir)

    monkeypatch.setattr(C, "export_pretrained", crashing_export)
    with pytest.raises(OSError, match="simulated"):
        Trainer(cfg, print_fn=lambda s: None).fit()
    root = C.checkpoint_root(out)
    assert os.listdir(root) == ["step-00000003"]  # no half-written directory, the good one kept
    good = HymbaForCausalLM.from_pretrained(os.path.join(root, "step-00000003"))
    assert good.config.vocab_size == 320

    # a save killed outright leaves a hidden temporary directory: ignored, then cleaned up by the resume
    stale = os.path.join(root, ".step-00000006.abc123.tmp")
    os.makedirs(os.path.join(stale, "trainer"))
    with open(os.path.join(stale, "trainer", "state.json"), "w") as f:
        f.write("{")  # half-written
    assert C.latest_checkpoint(out) == os.path.join(root, "step-00000003")
    monkeypatch.setattr(C, "export_pretrained", real_export)
    result = Trainer(cfg, resume=True, print_fn=lambda s: None).fit()
    assert result.steps == 6 and sorted(os.listdir(root)) == ["step-00000006"]


class NaNAfter:
    """Wraps a task so that the loss is NaN on chosen steps (counted by calls to count())."""

    def __init__(self, bad_steps):
        from hymba.training.pretrain import PretrainTask

        self.inner, self.bad_steps, self.step = PretrainTask(), set(bad_steps), -1

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def train_loader(self, *args):
        loader = self.inner.train_loader(*args)
        nxt = loader.next_batch

        def next_batch():
            self.step += 1
            return nxt()

        loader.next_batch = next_batch
        return loader

    def loss(self, model, batch):
        loss, metrics = self.inner.loss(model, batch)
        if self.step in self.bad_steps and model.training:
            loss = loss * float("nan")
        return loss, metrics


def test_non_finite_steps_are_skipped_and_counted(prepared, tmp_path):
    cfg = tiny_config(prepared, str(tmp_path / "run"), train={"max_steps": 6})
    result = Trainer(cfg, NaNAfter({2, 3}), print_fn=lambda s: None).fit()
    assert result.skipped_steps == 2 and result.steps == 6
    records = [r for r in read_metrics(str(tmp_path / "run")) if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert math.isnan(records[2]["loss"]) and math.isnan(records[3]["loss"])  # steps 3 and 4 (1-based)
    assert records[-1]["skipped_steps"] == 2 and math.isfinite(records[-1]["loss"])


def test_training_stops_after_too_many_bad_steps_in_a_row(prepared, tmp_path):
    cfg = tiny_config(prepared, str(tmp_path / "run"), train={"max_steps": 20, "max_bad_steps": 3})
    with pytest.raises(TrainingError, match="non-finite for 3 steps in a row"):
        Trainer(cfg, NaNAfter(range(4, 20)), print_fn=lambda s: None).fit()


def test_a_skipped_step_leaves_the_weights_alone(prepared, tmp_path):
    cfg = tiny_config(prepared, str(tmp_path / "run"), train={"max_steps": 1})
    trainer = Trainer(cfg, NaNAfter({0}), print_fn=lambda s: None)
    torch.manual_seed(0)
    trainer.fit()
    from hymba import HymbaConfig

    torch.manual_seed(0)  # the same initialization the trainer made (seed 0)
    fresh = HymbaForCausalLM(HymbaConfig.from_preset("tiny", **trainer.task.model_overrides()))
    for (name, a), (_, b) in zip(fresh.state_dict().items(), trainer.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_resume_refuses_a_different_batch(prepared, tmp_path):
    out = str(tmp_path / "run")
    Trainer(tiny_config(prepared, out, train={"max_steps": 2}), print_fn=lambda s: None).fit()
    other = tiny_config(prepared, out, train={"max_steps": 4, "batch_size": 8})
    from hymba.training.data import DataError

    with pytest.raises(DataError, match="global_batch=4"):
        Trainer(other, resume=True, print_fn=lambda s: None).fit()


def test_metrics_log_and_config_are_written(prepared, tmp_path):
    out = str(tmp_path / "run")
    Trainer(tiny_config(prepared, out, train={"max_steps": 2, "tensorboard": True}), print_fn=lambda s: None).fit()
    records = read_metrics(out)
    assert records[0]["kind"] == "info" and records[0]["parameters"] > 0
    train = [r for r in records if r["kind"] == "train"]
    assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"} <= set(train[0])
    assert train[-1]["tokens"] == 2 * 4 * 32
    assert os.path.exists(os.path.join(out, "config.yaml"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(out, "tensorboard")))
    with open(os.path.join(C.latest_checkpoint(out), "trainer", "state.json")) as f:
        assert json.load(f)["config"]["train"]["batch_size"] == 4


def test_gradient_checkpointing_changes_memory_not_results(prepared, tmp_path):
    plain = tiny_config(prepared, str(tmp_path / "a"), train={"max_steps": 3})
    ckpt = tiny_config(prepared, str(tmp_path / "b"), train={"max_steps": 3}, model={"gradient_checkpointing": True})
    Trainer(plain, print_fn=lambda s: None).fit()
    trainer = Trainer(ckpt, print_fn=lambda s: None)
    trainer.fit()
    assert trainer.model.model.gradient_checkpointing
    # the forward recomputed as it ran: the same arithmetic, so at most gradient-accumulation order differs
    # (~eps32): loss to rel 1e-6 (~8 eps32), the gradient norm to 1e-5, as in the test above
    for a, b in zip(curve(str(tmp_path / "a")), curve(str(tmp_path / "b"))):
        assert a[0] == b[0] and a[1] == pytest.approx(b[1], rel=1e-6) and a[3] == pytest.approx(b[3], rel=1e-5)
