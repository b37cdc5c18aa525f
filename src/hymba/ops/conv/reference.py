"""Depthwise causal conv1d in plain torch (the reference for any faster kernel)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_ref(x, weight, bias=None, initial_state=None, activation: str | None = "silu"):
    """y_t = act(bias + sum_k weight[:, k] * x_{t - K + 1 + k}), with the K-1 inputs before x taken from
    `initial_state` (zeros when None).

    x [batch, L, d] (channels last); weight [d, K]; bias [d]; initial_state [batch, K-1, d].
    Returns (y [batch, L, d], final_state [batch, K-1, d]: the last K-1 inputs, for continuing).
    """
    batch, L, d = x.shape
    K = weight.shape[-1]
    if initial_state is None:
        initial_state = x.new_zeros(batch, K - 1, d)
    xs = torch.cat([initial_state.to(x.dtype), x], dim=1)  # [batch, K-1+L, d]
    y = F.conv1d(xs.transpose(1, 2), weight.view(d, 1, K), bias, groups=d).transpose(1, 2)
    if activation == "silu":
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"unsupported conv activation {activation!r}")
    return y, xs[:, L:].clone() if K > 1 else x.new_zeros(batch, 0, d)


def causal_conv1d_step_ref(x, state, weight, bias=None, activation: str | None = "silu"):
    """One decode step: x [batch, d]; `state` [batch, K-1, d] is shifted in place. Returns y [batch, d]."""
    K = weight.shape[-1]
    window = torch.cat([state, x[:, None, :].to(state.dtype)], dim=1)  # [batch, K, d]
    y = (window * weight.t()[None].to(window.dtype)).sum(1)
    if bias is not None:
        y = y + bias.to(y.dtype)
    if K > 1:
        state.copy_(window[:, 1:])
    if activation == "silu":
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"unsupported conv activation {activation!r}")
    return y.to(x.dtype)
