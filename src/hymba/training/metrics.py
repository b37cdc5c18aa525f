"""What a run reports, on rank 0 only: a JSONL log (one record per line), TensorBoard scalars, a rich
progress bar with loss, learning rate, tokens/s and ETA, log lines, and the loss-curve PNG at the end.

The JSONL records carry `kind` ("train", "eval" or "info") and `step`. A resumed run first drops the records
past the step it resumes from, so the log reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from ..utils import atomic_path, atomic_write_text

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def read_metrics(path: str) -> list[dict[str, Any]]:
    file = path if path.endswith(".jsonl") else os.path.join(path, METRICS_FILE)
    records = []
    if os.path.exists(file):
        with open(file, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:  # a line cut short by a kill: the run resumes before it
                        continue
    return records


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RunLogger:
    def __init__(self, out_dir: str, enabled: bool, *, resume_step: int | None = None, total_steps: int = 0,
                 time_budget_s: float = 0.0, tensorboard: bool = True, progress: bool = True,
                 print_fn=None, indent: str = ""):
        self.enabled = enabled
        self.out_dir = out_dir
        self.total_steps = total_steps
        self.time_budget_s = time_budget_s
        self._print = print_fn
        self.indent = indent
        self._tb = None
        self._progress = None
        self._task = None
        self._file = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, METRICS_FILE)
        if resume_step is not None:
            kept = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step]

            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        elif os.path.exists(path):
            os.remove(path)  # a fresh run in an existing directory starts a fresh log
        self._file = open(path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                kw = {"purge_step": resume_step + 1} if resume_step is not None else {}
                self._tb = SummaryWriter(os.path.join(out_dir, "tensorboard"), **kw)
            except ImportError:
                self.message("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
        if progress and print_fn is None:
            try:
                from rich.console import Console
            except ImportError:  # no progress bar, log lines only
                return
            console = Console(stderr=True)
            if console.is_terminal:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

                self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                          TextColumn("{task.fields[stats]}"), console=console, transient=False)
                self._progress.start()
                total = total_steps if not time_budget_s else time_budget_s
                self._task = self._progress.add_task("train", total=total, stats="")

    # ---- output -------------------------------------------------------------------------------------------------
    def message(self, text: str) -> None:
        if not self.enabled:
            return
        text = self.indent + text
        if self._print is not None:
            self._print(text)
        elif self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False)
        else:
            print(text, flush=True)

    def record(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record.get("step", 0)
            prefix = {"train": "train/", "eval": "val/"}.get(record.get("kind"), "")
            for k, v in record.items():
                if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(prefix + k, v, step)

    def train(self, step: int, record: dict[str, Any], elapsed: float) -> None:
        if not self.enabled:
            return
        self.record({"kind": "train", "step": step, **record})
        eta = self.eta(step, elapsed)
        line = (f"step {step:>6}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                f"grad {record.get('grad_norm', float('nan')):.2f}  {record.get('tokens_per_s', 0):,.0f} tok/s  "
                f"elapsed {_fmt_duration(elapsed)}  eta {_fmt_duration(eta)}")
        if record.get("skipped_steps"):
            line += f"  skipped {record['skipped_steps']}"
        if self._progress is not None:
            stats = (f"loss {record['loss']:.3f} | lr {record['lr']:.1e} | {record.get('tokens_per_s', 0):,.0f} tok/s "
                     f"| eta {_fmt_duration(eta)}")
            done = elapsed if self.time_budget_s else step
            self._progress.update(self._task, completed=done, stats=stats)
        self.message(line)

    def eval(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.record({"kind": "eval", "step": step, **record})
        extra = "".join(f"  {k} {v:.4f}" for k, v in record.items() if k not in ("loss", "perplexity", "tokens")
                        and isinstance(v, float))
        ppl = f"  perplexity {record['perplexity']:.2f}" if "perplexity" in record else ""
        self.message(f"step {step:>6}  val loss {record['loss']:.4f}{ppl}{extra}")

    def eta(self, step: int, elapsed: float) -> float:
        if self.time_budget_s:
            return max(0.0, self.time_budget_s - elapsed)
        return elapsed / max(step, 1) * (self.total_steps - step)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._file is not None:
            self._file.close()
            self._file = None


def plot_loss_curve(out_dir: str, title: str = "", baselines: dict[str, float] | None = None) -> str | None:
    """loss.png from metrics.jsonl: training loss (and its running mean), validation loss, baselines."""
    records = read_metrics(out_dir)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and math.isfinite(r.get("loss", math.nan))]
    val = [(r["step"], r["loss"]) for r in records if r.get("kind") == "eval" and math.isfinite(r.get("loss", math.nan))]
    if not train and not val:
        return None
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no loss plot (pip install matplotlib)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    if train:
        ax.plot(*zip(*train), lw=1, alpha=0.8, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", lw=1.5, ms=4, label="validation loss")
    for name, value in (baselines or {}).items():
        ax.axhline(value, ls="--", lw=1, color="gray")
        ax.annotate(name, (ax.get_xlim()[0], value), xytext=(4, 3), textcoords="offset points", fontsize=8,
                    color="dimgray")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or os.path.basename(os.path.abspath(out_dir)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, PLOT_FILE)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    os.chmod(path, 0o644)
    return path


def now() -> float:
    return time.perf_counter()


__all__ = ["METRICS_FILE", "PLOT_FILE", "RunLogger", "now", "plot_loss_curve", "read_metrics"]
