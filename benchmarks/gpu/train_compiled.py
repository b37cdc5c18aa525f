"""train_step with every decoder layer compiled (`compile_layers`, as the trainer's --compile): the elementwise
work fused by inductor. Last in the GPU suite: a fresh machine compiles for minutes (its warm-up job starts
first in the parallel phase), so it runs when the budget leaves room, and is skipped, not failed, when not."""

from __future__ import annotations

from ..common import Ctx, Skip
from .train import measure

NAME = "train_step_compiled"
SUITE = "gpu"
DESCRIPTION = "train_step with the decoder layers compiled (torch.compile per layer)"
DEFAULT = True
EST_S = 90
WARM_S = 240  # seconds of its warm-up job (the parallel phase starts the longest first)


def run(ctx: Ctx) -> dict:
    if ctx.device.type != "cuda":
        raise Skip("needs CUDA: torch.compile of the layers is not run under --smoke")
    return measure(ctx, compiled=True)
