"""The training loop, shared by pretraining, SFT and DPO (a `Task` supplies data and loss).

One optimizer step:
    this rank's part of the global batch -> micro-batches -> forward/backward each (loss sums scaled by
    world_size / global count, so the averaged gradients equal those of one process on the whole batch)
    -> all-reduced loss -> clip -> skip the step if the loss or gradient norm is non-finite, else AdamW
    with the scheduled learning rate.
Around it: periodic validation, metrics (JSONL, TensorBoard, progress bar), atomic checkpoints every
`save_interval` steps and at the end, exact resume (model, optimizer, data position, RNG, counters).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointError
from ..config import HymbaConfig
from ..modeling import HymbaForCausalLM, compile_layers
from ..utils import atomic_write_text
from . import checkpointing as C
from . import distributed as D
from .config import TrainConfig
from .cpu_threads import ThreadTuner
from .dpo import DPOTask
from .lora import apply_lora, merge_lora_state, save_adapter
from .metrics import RunLogger, plot_loss_curve
from .optim import LRSchedule, build_optimizer, set_lr
from .pretrain import PretrainTask
from .sft import SFTTask
from .task import Batch, Task, TrainingError


def split_batch(batch: Batch, size: int) -> list[Batch]:
    """Cut every tensor of `batch` into consecutive micro-batches of `size` rows."""
    n = next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))
    return [{k: (v[i:i + size] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            for i in range(0, n, size)]


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    tokens: int
    final_checkpoint: str | None
    train_loss: float
    val_loss: float | None
    skipped_steps: int
    elapsed_s: float


@dataclass
class _Run:
    """Everything one `fit` works with, and its counters (those saved in checkpoints come first)."""

    info: D.DistInfo
    task: Task
    model: nn.Module  # unwrapped
    wrapped: nn.Module  # what the forward goes through (DDP, or the FSDP-sharded model itself)
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    loader: Any
    micro: int
    precision: Any
    log: RunLogger | None = None
    tuner: Any = None  # cpu_threads.ThreadTuner with train.adaptive_threads
    step: int = 0
    tokens: int = 0
    skipped: int = 0
    bad_in_a_row: int = 0
    elapsed_before: float = 0.0  # seconds trained before a resume
    t_start: float = 0.0
    last_saved: int = -1
    final_checkpoint: str | None = None
    last_train_loss: float = math.nan
    last_val: dict[str, float] | None = None
    window_loss: float = 0.0  # the current logging window
    window_steps: int = 0
    window_tokens: int = 0
    window_t: float = 0.0

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start


class Trainer:
    def __init__(self, cfg: TrainConfig, task: Task | None = None, *, resume: str | bool | None = None,
                 print_fn=None, log_indent: str = ""):
        self.cfg = cfg
        self.task = task
        self.resume = True if resume == "auto" else resume
        self.print_fn = print_fn  # receives every log line instead of the terminal (no progress bar)
        self.log_indent = log_indent
        self.model: nn.Module | None = None  # unwrapped (after fit: the trained model)
        self.baselines: dict[str, float] = {}  # horizontal lines for the loss plot

    # ---- set-up ---------------------------------------------------------------------------------------------------
    def _build_task(self) -> Task:
        if self.task is not None:
            return self.task
        return {"pretrain": PretrainTask, "sft": SFTTask, "dpo": DPOTask}[self.cfg.task]()

    def build_model(self, task: Task, device: torch.device) -> nn.Module:
        m = self.cfg.model
        if m.init_from:
            if m.config:
                raise TrainingError("model.config overrides apply to fresh models (model.preset); a model loaded "
                                    "with model.init_from keeps its architecture")
            model = HymbaForCausalLM.from_pretrained(m.init_from, dtype=torch.float32, device=device)
        else:
            fields = {**task.model_overrides(), **m.config}
            config = HymbaConfig.from_preset(m.preset or "tiny", **fields)
            with torch.device(device):
                model = HymbaForCausalLM(config)
        model.set_kernels(m.kernels)
        task.check_model(model)
        if self.cfg.data.seq_len > model.config.max_position_embeddings:
            raise TrainingError(f"data.seq_len={self.cfg.data.seq_len} is more than the model's "
                                f"max_position_embeddings ({model.config.max_position_embeddings})")
        return model.train()

    def _precision(self, device: torch.device):
        p = self.cfg.train.precision
        if p == "auto":
            p = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        if p == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- the run --------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        run = self._setup()
        t = self.cfg.train
        try:
            while run.step < t.max_steps:
                progress = None
                if t.time_budget_s:  # every rank stops at the same step: rank 0's clock decides
                    progress = D.broadcast_object(run.elapsed() / t.time_budget_s)
                    if progress >= 1.0:
                        break
                self._train_step(run, progress)
                if t.eval_interval and run.step % t.eval_interval == 0 and run.step < t.max_steps:
                    run.last_val = self.evaluate(run)
                if t.save_interval and run.step % t.save_interval == 0 and run.step < t.max_steps:
                    run.final_checkpoint = self._save(run)
            run.last_val = self.evaluate(run)
            if run.last_saved != run.step:
                run.final_checkpoint = self._save(run)
            elif run.final_checkpoint is None:  # resumed at the end: nothing new to save
                run.final_checkpoint = os.path.join(C.checkpoint_root(t.out_dir), f"step-{run.step:08d}")
        finally:
            run.log.close()
        elapsed = run.elapsed()
        if run.info.is_main:
            C.publish_model(run.final_checkpoint, os.path.join(t.out_dir, "model"))
            if t.plot:
                plot_loss_curve(t.out_dir, title=f"{run.task.name}: {os.path.basename(os.path.abspath(t.out_dir))}",
                                baselines=self.baselines)
            run.log.message(f"done: {run.step} steps, {run.tokens:,} tokens in {elapsed:.0f}s; final model in "
                            f"{os.path.join(t.out_dir, 'model')} (checkpoint {run.final_checkpoint})")
        return TrainResult(t.out_dir, run.step, run.tokens, run.final_checkpoint, run.last_train_loss,
                           run.last_val["loss"] if run.last_val else None, run.skipped, elapsed)

    def _setup(self) -> "_Run":
        """Process group, data, model (LoRA, checkpointing, compile, DDP/FSDP), optimizer, schedule, loader,
        the resumed state if any, and the logger."""
        cfg, t, o = self.cfg, self.cfg.train, self.cfg.optim
        info = D.setup(t.device, cfg.distributed.backend)
        if t.threads:
            torch.set_num_threads(t.threads)
        torch.manual_seed(t.seed)
        task = self._build_task()
        task.prepare(cfg, info)

        model = self.build_model(task, info.device)
        if cfg.lora.enabled:
            model = apply_lora(model, cfg.lora)
        task.attach(model, cfg, info)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if cfg.model.compile:
            compile_layers(model)
        wrapped = D.wrap_model(model, cfg.distributed.strategy, info)
        self.model = model
        optimizer = build_optimizer(wrapped, o.lr, o.weight_decay, o.betas, o.eps, o.fused)
        schedule = LRSchedule(o.lr, t.max_steps, cfg.schedule.name, cfg.schedule.warmup_steps, o.min_lr,
                              cfg.schedule.decay_fraction, cfg.schedule.decay_shape)

        world = info.world_size
        if t.batch_size % world:
            raise TrainingError(f"train.batch_size={t.batch_size} is not divisible by the {world} data-parallel ranks")
        per_rank = t.batch_size // world
        micro = t.micro_batch_size or per_rank
        if per_rank % micro:
            raise TrainingError(f"train.micro_batch_size={micro} does not divide the per-rank batch {per_rank} "
                                f"(batch_size {t.batch_size} / {world} ranks)")
        run = _Run(info=info, task=task, model=model, wrapped=wrapped, optimizer=optimizer, schedule=schedule,
                   loader=task.train_loader(t.batch_size, info, t.seed), micro=micro,
                   precision=self._precision(info.device))
        if t.adaptive_threads and info.device.type == "cpu":
            run.tuner = ThreadTuner()

        resume_from = self._resume(run, task)
        if info.is_main:
            os.makedirs(t.out_dir, exist_ok=True)
            atomic_write_text(os.path.join(t.out_dir, "config.yaml"), cfg.to_yaml())
            C.remove_stale(C.checkpoint_root(t.out_dir))
        run.log = RunLogger(t.out_dir, info.is_main, resume_step=run.step if resume_from else None,
                            total_steps=t.max_steps, time_budget_s=t.time_budget_s, tensorboard=t.tensorboard,
                            progress=t.progress, print_fn=self.print_fn, indent=self.log_indent)
        unique = {id(p): p for p in model.parameters()}.values()
        n_params = sum(p.numel() for p in unique)
        n_train = sum(p.numel() for p in unique if p.requires_grad)
        run.log.message(f"{task.name}: {n_params:,} parameters ({n_train:,} trainable) on {info.device} x {world}, "
                        f"batch {t.batch_size} = {world} rank(s) x {per_rank // micro} micro-batch(es) of {micro}"
                        + (f"; resumed from {resume_from} at step {run.step}" if resume_from else ""))
        if not resume_from:
            run.log.record({"kind": "info", "step": 0, "parameters": n_params, "trainable_parameters": n_train,
                            "world_size": world, "task": task.name})
        run.t_start = run.window_t = time.perf_counter()
        return run

    def _resume(self, run: "_Run", task: Task) -> str | None:
        """Restore the checkpoint `self.resume` names (None: none; True: the newest of the run directory) into
        `run`; returns its path. Rank 0 reads the whole state and checks it before anything is applied; with
        True a damaged newest checkpoint is passed over, with a warning, for the newest intact one."""
        if not self.resume:
            return None
        info = run.info
        chosen = loaded = None
        if info.is_main:
            candidates = C.resume_candidates(self.resume, self.cfg.train.out_dir)
            for i, path in enumerate(candidates):
                try:
                    state = C.read_state(path)
                    if state["task"] != task.name:
                        raise TrainingError(f"--resume {path}: that checkpoint is from a {state['task']!r} run, "
                                            f"this is {task.name!r}")
                    loaded = (state, *C.read_trainer_state(path), C.read_rng(path, 0))
                except CheckpointError as e:
                    older = candidates[i + 1:]
                    if self.resume is not True or not older:
                        hint = f"; the previous one is {older[0]}" if older else ""
                        raise TrainingError(f"cannot resume from {path}: {e}{hint}") from None
                    warnings.warn(f"checkpoint {path} is damaged ({e}); resuming from {older[0]} instead",
                                  stacklevel=2)
                    continue
                chosen = path
                break
        chosen = D.broadcast_object(chosen)
        state = D.broadcast_object(loaded[0] if loaded else None)
        model_state, optim_state = loaded[1:3] if loaded else ({}, {})
        D.load_full_state(run.wrapped, run.optimizer, model_state, optim_state, info)
        run.loader.load_state_dict(state["loader"])
        run.step, run.tokens = state["step"], state["tokens"]
        run.skipped, run.bad_in_a_row = state["skipped_steps"], state["bad_in_a_row"]
        run.elapsed_before = state.get("elapsed_s", 0.0)
        run.last_saved = run.step
        rng = loaded[3] if info.is_main else C.read_rng(chosen, info.rank)  # rank 0's was read with the rest
        if rng is not None:
            C.set_rng_state(rng)
        return chosen

    def _train_step(self, run: "_Run", progress: float | None) -> None:
        """One optimizer step over this rank's part of the next global batch (see the module docstring)."""
        t, task, info, world = self.cfg.train, run.task, run.info, run.info.world_size
        if run.tuner is not None:
            run.tuner.before_step()
        t0 = time.perf_counter()
        micro_batches = split_batch(run.loader.next_batch(), run.micro)
        count = D.all_reduce_sum(torch.tensor([float(sum(task.count(mb) for mb in micro_batches))],
                                              device=info.device))
        if count.item() == 0:
            raise TrainingError(f"step {run.step}: the global batch has nothing to learn from (no target tokens)")
        loss_sum = torch.zeros(1, device=info.device)
        metric_sums: dict[str, torch.Tensor] = {}
        tokens = 0
        for i, mb in enumerate(micro_batches):
            with D.set_gradient_sync(run.wrapped, i == len(micro_batches) - 1), run.precision:
                loss, metrics = task.loss(run.wrapped, mb)
                (loss * (world / count)).backward()
            loss_sum += loss.detach().float()
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0) + v.detach().float()
            tokens += task.tokens(mb)
        step_loss = (D.all_reduce_sum(loss_sum) / count).item()
        grad_norm = self._clip([p for p in run.wrapped.parameters() if p.requires_grad], self.cfg.optim.grad_clip)
        lr = run.schedule(run.step, progress)
        if math.isfinite(step_loss) and math.isfinite(grad_norm):
            set_lr(run.optimizer, lr)
            run.optimizer.step()
            run.bad_in_a_row = 0
            run.window_loss += step_loss
            run.window_steps += 1
            run.last_train_loss = step_loss
        else:
            run.skipped += 1
            run.bad_in_a_row += 1
            run.log.message(f"step {run.step}: non-finite loss ({step_loss}) or gradient norm ({grad_norm}); step "
                            f"skipped ({run.bad_in_a_row} in a row, {run.skipped} in all)")
            if run.bad_in_a_row >= t.max_bad_steps:
                raise TrainingError(
                    f"the loss or gradient norm was non-finite for {run.bad_in_a_row} steps in a row (up to step "
                    f"{run.step}; {run.skipped} skipped in all). Training diverged: lower optim.lr, raise "
                    "schedule.warmup_steps, keep optim.grad_clip on, or check the data. The last good checkpoint "
                    f"is in {C.checkpoint_root(t.out_dir)}.")
        run.optimizer.zero_grad(set_to_none=True)
        run.step += 1
        if run.tuner is not None:
            message = run.tuner.after_step(time.perf_counter() - t0)
            if message:
                run.log.message(message)
        tokens = int(D.all_reduce_sum(torch.tensor([float(tokens)], device=info.device)).item())
        run.tokens += tokens
        run.window_tokens += tokens
        if run.step % t.log_interval == 0 or run.step == t.max_steps:
            now = time.perf_counter()
            record = {"loss": run.window_loss / run.window_steps if run.window_steps else math.nan, "lr": lr,
                      "grad_norm": grad_norm, "tokens": run.tokens,
                      "tokens_per_s": run.window_tokens / max(now - run.window_t, 1e-9), "elapsed_s": run.elapsed()}
            for k, v in metric_sums.items():  # the last step's metrics
                record[k] = (D.all_reduce_sum(v.clone()) / count).item()
            if run.skipped:
                record["skipped_steps"] = run.skipped
            run.log.train(run.step, record, record["elapsed_s"])
            run.window_loss, run.window_steps, run.window_tokens, run.window_t = 0.0, 0, 0, now

    def _save(self, run: "_Run") -> str:
        """Checkpoint the run at its current step (every rank takes part)."""
        export: dict[str, Any] = {}

        def all_ranks(tmp: str) -> None:
            C.save_rng(tmp, run.info.rank)
            export["state"] = D.full_model_state(run.wrapped)
            export["optim"] = D.full_optimizer_state(run.wrapped, run.optimizer)

        def main(tmp: str) -> None:
            C.save_trainer_state(tmp, export["state"], export["optim"])
            self._export(run.model, export["state"], tmp, run.task)
            C.write_state(tmp, {
                "task": run.task.name, "step": run.step, "tokens": run.tokens, "loader": run.loader.state_dict(),
                "skipped_steps": run.skipped, "bad_in_a_row": run.bad_in_a_row, "world_size": run.info.world_size,
                "elapsed_s": run.elapsed(), "config": self.cfg.to_dict()})

        path = C.save_checkpoint(C.checkpoint_root(self.cfg.train.out_dir), run.step, all_ranks, main, run.info,
                                 self.cfg.train.keep_last)
        run.last_saved = run.step
        return path

    # ---- pieces ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _clip(params: list[torch.Tensor], max_norm: float) -> float:
        """Clip to max_norm (0: measure only); the global gradient norm, across shards and ranks."""
        grads = [p for p in params if p.grad is not None]
        if not grads:
            return 0.0
        norm = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        return float(norm)

    @torch.no_grad()
    def evaluate(self, run: "_Run") -> dict[str, float] | None:
        """Mean validation loss (and perplexity for token losses) over `eval_batches` global batches."""
        t, info, task = self.cfg.train, run.info, run.task
        run.wrapped.eval()
        try:
            loss_sum = torch.zeros(1, device=info.device)
            count = torch.zeros(1, device=info.device)
            batches = torch.zeros(1, device=info.device)
            metric_sums: dict[str, torch.Tensor] = {}
            for mb in task.val_batches(run.micro, info, t.eval_batches * t.batch_size):
                with run.precision:
                    loss, metrics = task.loss(run.wrapped, mb)
                loss_sum += loss.float()
                count += task.count(mb)
                batches += 1
                for k, v in metrics.items():
                    metric_sums[k] = metric_sums.get(k, 0) + v.float()
            if D.all_reduce_sum(batches).item() == 0:
                return None
            D.all_reduce_sum(loss_sum)
            D.all_reduce_sum(count)
            result = {"loss": (loss_sum / count).item()}
            if task.name != "dpo":
                result["perplexity"] = math.exp(min(result["loss"], 50.0))
            for k in sorted(metric_sums):
                result[k] = (D.all_reduce_sum(metric_sums[k]) / count).item()
            result["units"] = int(count.item())
            run.log.eval(run.step, result)
            return result
        finally:
            run.wrapped.train()

    def _export(self, model: nn.Module, state: dict[str, torch.Tensor], directory: str, task: Task) -> None:
        """The released-format model (LoRA merged unless lora.save is "adapter") and the tokenizer."""
        lora = self.cfg.lora
        config = model.config
        if lora.enabled:
            if lora.save in ("adapter", "both"):
                save_adapter(state, lora, os.path.join(directory, "adapter"), base_model=self.cfg.model.init_from)
            if lora.save == "adapter":  # the adapter alone: the base model is model.init_from
                config.save(directory)
                if task.tokenizer_dir:
                    C.copy_tokenizer(task.tokenizer_dir, directory)
                return
            state = merge_lora_state(state, lora)
        C.export_pretrained(state, config, directory, task.tokenizer_dir)
