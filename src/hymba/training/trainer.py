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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from . import checkpointing as C
from . import distributed as D
from .config import TrainConfig
from .metrics import RunLogger, plot_loss_curve
from .optim import LRSchedule, build_optimizer, set_lr


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, misconfigured data/model pairing, ...)."""


Batch = dict[str, Any]


class Task(Protocol):
    """What a kind of training brings to the loop."""

    name: str
    tokenizer_dir: str | None  # copied into every checkpoint

    def prepare(self, cfg: TrainConfig, info: D.DistInfo) -> None:
        """Load data (and tokenizer); called before the model is built."""

    def model_overrides(self) -> dict[str, Any]:
        """HymbaConfig fields the data dictates for a fresh model (vocab size, special token ids)."""

    def check_model(self, model: nn.Module) -> None:
        """Raise if the model cannot be trained on this data."""

    def attach(self, model: nn.Module, cfg: TrainConfig, info: D.DistInfo) -> None:
        """Last set-up with the (unwrapped, LoRA-adapted) model, e.g. a DPO reference."""

    def train_loader(self, global_batch: int, info: D.DistInfo, seed: int):
        """An object with next_batch() -> Batch (this rank's part), state_dict(), load_state_dict()."""

    def val_batches(self, micro_batch: int, info: D.DistInfo, max_items: int) -> Iterator[Batch]:
        """This rank's validation micro-batches over the first `max_items` items (0: all), the same number on
        every rank (see `even_shards`); empty if there is no validation data."""

    def count(self, batch: Batch) -> int:
        """The units the loss is averaged over (target tokens, preference pairs)."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(sum of the loss over the batch's units, other metrics as sums over the same units)."""

    def tokens(self, batch: Batch) -> int:
        """Tokens processed (for tokens/s)."""


def split_batch(batch: Batch, size: int) -> list[Batch]:
    """Cut every tensor of `batch` into consecutive micro-batches of `size` rows."""
    n = next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))
    return [{k: (v[i:i + size] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            for i in range(0, n, size)]


def pad_batch(rows: list[list[int]], pad_value: int) -> torch.Tensor:
    """Right-pad lists of ints to a [len(rows), longest] tensor."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def even_shards(num_items: int, micro_batch: int, info: D.DistInfo, max_items: int = 0) -> list[list[int]]:
    """Item indices of this rank's validation micro-batches. The first `max_items` items (0: all) are dealt in
    steps of micro_batch x world_size items, so every rank runs the same number of forwards (FSDP needs every
    rank in every one) and the items scored do not depend on the world size (when max_items is a multiple of
    the step, as batch_size multiples are)."""
    world = info.world_size
    per_step = micro_batch * world
    n = min(num_items, max_items) if max_items else num_items
    steps = n // per_step
    if steps == 0:
        per_rank = n // world
        if per_rank == 0:
            return []
        start = info.rank * per_rank
        return [list(range(start, start + per_rank))]
    return [list(range(s * per_step + info.rank * micro_batch, s * per_step + (info.rank + 1) * micro_batch))
            for s in range(steps)]


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


class Trainer:
    def __init__(self, cfg: TrainConfig, task: Task | None = None, *, resume: str | bool | None = None,
                 print_fn=None, log_indent: str = ""):
        self.cfg = cfg
        self.task = task
        self.resume = resume
        self.print_fn = print_fn  # receives every log line instead of the terminal (no progress bar)
        self.log_indent = log_indent
        self.model: nn.Module | None = None  # unwrapped (after fit: the trained model)
        self.baselines: dict[str, float] = {}  # horizontal lines for the loss plot

    # ---- set-up ---------------------------------------------------------------------------------------------------
    def _build_task(self) -> Task:
        if self.task is not None:
            return self.task
        if self.cfg.task == "pretrain":
            from .pretrain import PretrainTask

            return PretrainTask()
        if self.cfg.task == "sft":
            from .sft import SFTTask

            return SFTTask()
        from .dpo import DPOTask

        return DPOTask()

    def build_model(self, task: Task, device: torch.device) -> nn.Module:
        from ..config import HymbaConfig
        from ..modeling import HymbaForCausalLM

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
        cfg, t = self.cfg, self.cfg.train
        info = D.setup(t.device, cfg.distributed.backend)
        if t.threads:
            torch.set_num_threads(t.threads)
        torch.manual_seed(t.seed)
        task = self._build_task()
        task.prepare(cfg, info)

        model = self.build_model(task, info.device)
        if cfg.lora.enabled:
            from .lora import apply_lora

            model = apply_lora(model, cfg.lora)
        task.attach(model, cfg, info)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if cfg.model.compile:
            for layer in model.modules():
                if type(layer).__name__ == "HymbaDecoderLayer":
                    layer.compile()
        wrapped = D.wrap_model(model, cfg.distributed.strategy, info)
        self.model = model
        o = cfg.optim
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
        loader = task.train_loader(t.batch_size, info, t.seed)

        step, tokens_seen, skipped, bad_in_a_row, elapsed_before = 0, 0, 0, 0, 0.0
        resume_from = C.resolve_resume(self.resume, t.out_dir)
        if resume_from:
            state = C.read_state(resume_from)
            if state.get("task") != task.name:
                raise TrainingError(f"--resume {resume_from}: that checkpoint is from a {state.get('task')!r} run, "
                                    f"this is {task.name!r}")
            D.load_sharded_state(wrapped, optimizer, os.path.join(resume_from, "trainer", "dcp"))
            loader.load_state_dict(state["loader"])
            step, tokens_seen = state["step"], state["tokens"]
            skipped, bad_in_a_row = state["skipped_steps"], state["bad_in_a_row"]
            elapsed_before = state.get("elapsed_s", 0.0)
            C.load_rng(resume_from, info.rank)
        if info.is_main:
            os.makedirs(t.out_dir, exist_ok=True)
            from ..utils import atomic_write_text

            atomic_write_text(os.path.join(t.out_dir, "config.yaml"), cfg.to_yaml())
            C.remove_stale(C.checkpoint_root(t.out_dir))
        log = RunLogger(t.out_dir, info.is_main, resume_step=step if resume_from else None, total_steps=t.max_steps,
                        time_budget_s=t.time_budget_s, tensorboard=t.tensorboard, progress=t.progress,
                        print_fn=self.print_fn, indent=self.log_indent)
        n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        n_train = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
        log.message(f"{task.name}: {n_params:,} parameters ({n_train:,} trainable) on {info.device} x {world}, "
                    f"batch {t.batch_size} = {world} rank(s) x {per_rank // micro} micro-batch(es) of {micro}"
                    + (f"; resumed from {resume_from} at step {step}" if resume_from else ""))
        if not resume_from:
            log.record({"kind": "info", "step": 0, "parameters": n_params, "trainable_parameters": n_train,
                        "world_size": world, "task": task.name})

        def save(at_step: int) -> str:
            export: dict[str, Any] = {}

            def all_ranks(tmp: str) -> None:
                D.save_sharded_state(wrapped, optimizer, os.path.join(tmp, "trainer", "dcp"))
                C.save_rng(tmp, info.rank)
                export["state"] = D.full_model_state(wrapped)

            def main(tmp: str) -> None:
                self._export(model, export["state"], tmp, task)
                C.write_state(tmp, {
                    "task": task.name, "step": at_step, "tokens": tokens_seen, "loader": loader.state_dict(),
                    "skipped_steps": skipped, "bad_in_a_row": bad_in_a_row, "world_size": world,
                    "elapsed_s": elapsed_before + (time.perf_counter() - t_start), "config": cfg.to_dict()})

            return C.save_checkpoint(C.checkpoint_root(t.out_dir), at_step, all_ranks, main, info, t.keep_last)

        params = [p for p in wrapped.parameters() if p.requires_grad]
        n_micro = per_rank // micro
        t_start = time.perf_counter()
        window_loss, window_n, window_tokens, window_t = 0.0, 0, 0, time.perf_counter()
        last_train_loss, last_val = math.nan, None
        final_ckpt = None
        last_saved = step if resume_from else -1
        precision = self._precision(info.device)
        try:
            while step < t.max_steps:
                elapsed = elapsed_before + time.perf_counter() - t_start
                progress = None
                if t.time_budget_s:
                    progress = D.broadcast_object(elapsed / t.time_budget_s)
                    if progress >= 1.0:
                        break
                batch = loader.next_batch()
                micro_batches = split_batch(batch, micro)
                count = torch.tensor([float(sum(task.count(mb) for mb in micro_batches))], device=info.device)
                D.all_reduce_sum(count)
                if count.item() == 0:
                    raise TrainingError(f"step {step}: the global batch has nothing to learn from (no target tokens)")
                loss_sum = torch.zeros(1, device=info.device)
                metric_sums: dict[str, torch.Tensor] = {}
                step_tokens = 0
                for i, mb in enumerate(micro_batches):
                    last = i == n_micro - 1
                    with D.set_gradient_sync(wrapped, last), precision:
                        loss, metrics = task.loss(wrapped, mb)
                        (loss * (world / count)).backward()
                    loss_sum += loss.detach().float()
                    for k, v in metrics.items():
                        metric_sums[k] = metric_sums.get(k, 0) + v.detach().float()
                    step_tokens += task.tokens(mb)
                D.all_reduce_sum(loss_sum)
                step_loss = (loss_sum / count).item()
                grad_norm = self._clip(params, o.grad_clip)
                lr = schedule(step, progress)
                if math.isfinite(step_loss) and math.isfinite(grad_norm):
                    set_lr(optimizer, lr)
                    optimizer.step()
                    bad_in_a_row = 0
                    window_loss += step_loss
                    window_n += 1
                    last_train_loss = step_loss
                else:
                    skipped += 1
                    bad_in_a_row += 1
                    log.message(f"step {step}: non-finite loss ({step_loss}) or gradient norm ({grad_norm}); "
                                f"step skipped ({bad_in_a_row} in a row, {skipped} in all)")
                    if bad_in_a_row >= t.max_bad_steps:
                        raise TrainingError(
                            f"the loss or gradient norm was non-finite for {bad_in_a_row} steps in a row (up to step "
                            f"{step}; {skipped} skipped in all). Training diverged: lower optim.lr, raise "
                            "schedule.warmup_steps, keep optim.grad_clip on, or check the data. The last good "
                            f"checkpoint is in {C.checkpoint_root(t.out_dir)}.")
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tok = torch.tensor([float(step_tokens)], device=info.device)
                step_tokens = int(D.all_reduce_sum(tok).item())
                tokens_seen += step_tokens
                window_tokens += step_tokens

                if step % t.log_interval == 0 or step == t.max_steps:
                    now = time.perf_counter()
                    record = {"loss": window_loss / window_n if window_n else math.nan, "lr": lr,
                              "grad_norm": grad_norm, "tokens": tokens_seen,
                              "tokens_per_s": window_tokens / max(now - window_t, 1e-9),
                              "elapsed_s": elapsed_before + now - t_start}
                    for k, v in metric_sums.items():
                        record[k] = (D.all_reduce_sum(v.clone()) / count).item()
                    if skipped:
                        record["skipped_steps"] = skipped
                    log.train(step, record, record["elapsed_s"])
                    window_loss, window_n, window_tokens, window_t = 0.0, 0, 0, now
                if t.eval_interval and step % t.eval_interval == 0 and step < t.max_steps:
                    last_val = self.evaluate(wrapped, task, info, micro, precision, step, log)
                if t.save_interval and step % t.save_interval == 0 and step < t.max_steps:
                    final_ckpt = save(step)
                    last_saved = step
            # the end: final validation and checkpoint
            last_val = self.evaluate(wrapped, task, info, micro, precision, step, log)
            if last_saved != step:
                final_ckpt = save(step)
            elif final_ckpt is None:
                final_ckpt = os.path.join(C.checkpoint_root(t.out_dir), f"step-{step:08d}")
        finally:
            log.close()
        elapsed = elapsed_before + time.perf_counter() - t_start
        if info.is_main and final_ckpt:
            C.publish_model(final_ckpt, os.path.join(t.out_dir, "model"))
        if info.is_main and t.plot:
            plot_loss_curve(t.out_dir, title=f"{task.name}: {os.path.basename(os.path.abspath(t.out_dir))}",
                            baselines=self.baselines)
        if info.is_main:
            log.message(f"done: {step} steps, {tokens_seen:,} tokens in {elapsed:.0f}s; final model in "
                        f"{os.path.join(t.out_dir, 'model')} (checkpoint {final_ckpt})")
        return TrainResult(t.out_dir, step, tokens_seen, final_ckpt, last_train_loss,
                           last_val["loss"] if last_val else None, skipped, elapsed)

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
    def evaluate(self, wrapped: nn.Module, task: Task, info: D.DistInfo, micro: int, precision, step: int,
                 log: RunLogger) -> dict[str, float] | None:
        """Mean validation loss (and perplexity for token losses) over `eval_batches` global batches."""
        wrapped.eval()
        try:
            loss_sum = torch.zeros(1, device=info.device)
            count = torch.zeros(1, device=info.device)
            metric_sums: dict[str, torch.Tensor] = {}
            any_batch = torch.zeros(1, device=info.device)
            t = self.cfg.train
            for mb in task.val_batches(micro, info, t.eval_batches * t.batch_size):
                with precision:
                    loss, metrics = task.loss(wrapped, mb)
                loss_sum += loss.float()
                count += task.count(mb)
                any_batch += 1
                for k, v in metrics.items():
                    metric_sums[k] = metric_sums.get(k, 0) + v.float()
            D.all_reduce_sum(any_batch)
            if any_batch.item() == 0:
                return None
            D.all_reduce_sum(loss_sum)
            D.all_reduce_sum(count)
            result = {"loss": (loss_sum / count).item()}
            if task.name != "dpo":
                result["perplexity"] = math.exp(min(result["loss"], 50.0))
            for k in sorted(metric_sums):
                result[k] = (D.all_reduce_sum(metric_sums[k]) / count).item()
            result["units"] = int(count.item())
            log.eval(step, result)
            return result
        finally:
            wrapped.train()

    def _export(self, model: nn.Module, state: dict[str, torch.Tensor], directory: str, task: Task) -> None:
        """The released-format model (LoRA merged unless lora.save is "adapter") and the tokenizer."""
        lora = self.cfg.lora
        config = model.config
        if lora.enabled:
            from .lora import merge_lora_state, save_adapter

            if lora.save in ("adapter", "both"):
                save_adapter(state, lora, os.path.join(directory, "adapter"), base_model=self.cfg.model.init_from)
            if lora.save == "adapter":  # the adapter alone: the base model is model.init_from
                config.save(directory)
                if task.tokenizer_dir:
                    C.copy_tokenizer(task.tokenizer_dir, directory)
                return
            state = merge_lora_state(state, lora)
        C.export_pretrained(state, config, directory, task.tokenizer_dir)
