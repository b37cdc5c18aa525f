"""torch.compile settings the library's compiled functions need."""

from __future__ import annotations

import torch
import torch._dynamo


def allow_recompiles(n: int) -> None:
    """Raise dynamo's per-function recompile limit to at least `n`: past it, a compiled function silently runs
    its unfused eager version instead of compiling one more variant (the setting's name changed across
    torch releases)."""
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), n))
