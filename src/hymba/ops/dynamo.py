"""torch.compile settings the library's compiled functions need, and the rule its inference-only fused kernels
follow under autograd and torch.compile."""

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


def reference_path(*tensors) -> bool:
    """Whether an inference-only fused kernel hands the call to its torch reference: gradients to track through
    one of `tensors` (None ones skipped), or a torch.compile trace (which fuses the reference itself)."""
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return grads or torch.compiler.is_compiling()
