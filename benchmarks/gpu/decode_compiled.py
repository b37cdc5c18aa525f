"""decode_8k with generate(compile_step=True): the CUDA graph replays the step as torch.compile made it
(inductor fuses the ~1,000 small elementwise kernels). Opt-in: the step compiles once per batch size and
cache length, i.e. twice for the protocol's two calls (~1.5-2.5 minutes each on an H100)."""

from __future__ import annotations

from ..common import Ctx
from .decode import measure

NAME = "decode_8k_compiled"
SUITE = "gpu"
DESCRIPTION = "decode_8k with generate(compile_step=True) (opt-in: ~5 minutes of compilation)"
DEFAULT = False
EST_S = 420


def run(ctx: Ctx) -> dict:
    return measure(ctx, compile_step=True)
