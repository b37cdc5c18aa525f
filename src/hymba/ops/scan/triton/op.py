"""The scan as torch.library custom ops, so that torch.compile treats them as opaque, with their autograd:
`selective_scan_triton` is the `Kernels.selective_scan` contract on the kernels."""

from __future__ import annotations

import torch

from . import launch
from .backward import scan_bwd
from .forward import scan_fwd


@torch.library.custom_op("hymba::selective_scan_fwd", mutates_args=())
def _scan_fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                 initial_state: torch.Tensor | None, delta_softplus: bool, save_states: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, ht, ckpt = scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, save_states)
    return y, ht, ckpt if ckpt is not None else ht.new_empty(0)


@_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, save_states):
    batch, L, d = u.shape
    N = A.shape[1]
    y = u.new_empty(batch, L, d)
    ht = u.new_empty(batch, d, N, dtype=torch.float32)
    ckpt = (u.new_empty(batch, -(-L // launch.CHUNK), N, d, dtype=torch.float32) if save_states
            else u.new_empty(0, dtype=torch.float32))
    return y, ht, ckpt


@torch.library.custom_op("hymba::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                 ckpt: torch.Tensor, dy: torch.Tensor, dfinal: torch.Tensor | None, delta_softplus: bool
                 ) -> list[torch.Tensor]:
    grads = scan_bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, dy, dfinal)
    return [g if g is not None else u.new_empty(0) for g in grads]


@_scan_bwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, ckpt, dy, dfinal, delta_softplus):
    batch, L, d = u.shape
    N = A.shape[1]
    e = u.new_empty(0)
    return [u.new_empty(batch, L, d), delta.new_empty(batch, L, d), A.new_empty(d, N), B.new_empty(B.shape),
            C.new_empty(C.shape), D.new_empty(d) if D is not None else e,
            z.new_empty(batch, L, d) if z is not None else e,
            delta_bias.new_empty(d) if delta_bias is not None else e,
            u.new_empty(batch, d, N, dtype=torch.float32)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, save_states = inputs
    ctx.delta_softplus = delta_softplus
    ctx.has = (D is not None, z is not None, delta_bias is not None, initial_state is not None)
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])


def _backward(ctx, dy, dfinal, _dckpt):
    u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
    if ckpt.numel() == 0 and u.shape[1] > 0:
        raise RuntimeError("selective_scan: backward needs the forward to run with save_states=True")
    if dy is None:
        dy = torch.zeros_like(u)
    du, ddt, dA, dB, dC, dD, dz, dbias, dh0 = _scan_bwd_op(
        u, delta, A, B, C, D, z, delta_bias, ckpt, dy.contiguous(), dfinal, ctx.delta_softplus)
    has_d, has_z, has_bias, has_h0 = ctx.has
    return (du, ddt, dA, dB, dC, dD if has_d else None, dz if has_z else None, dbias if has_bias else None,
            dh0 if has_h0 else None, None, None)


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                          initial_state=None):
    """The `Kernels.selective_scan` contract on the Triton kernels (differentiable; the forward saves the
    backward's checkpoints only when a gradient is needed). Returns (y, final_state)."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias, initial_state))
    y, ht, _ = _scan_fwd_op(u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus), needs_grad)
    return y, ht


def scan_bytes(batch: int, L: int, d: int, N: int, dtype: torch.dtype, with_z: bool = True) -> int:
    """The forward's floor in bytes: each input read once (u, delta, z, B, C), y written once."""
    es = torch.tensor([], dtype=dtype).element_size()
    return es * (batch * L * d * (3 + int(with_z)) + 2 * batch * L * N)
