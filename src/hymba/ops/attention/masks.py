"""Which keys a query may see, defined on positions so that one rule covers every case.

Every token has a position in the meta + text sequence: meta tokens 0..M-1, the j-th real text token M + j,
padding -1. The same rule then serves a plain forward, a left- or right-padded batch, chunked prefill and a
decode step against a cache (whose slots carry the positions of what they hold).
"""

from __future__ import annotations

import torch


def visible(q, k, window: int | None, num_meta: int):
    """The rule, elementwise on query/key positions (tensors that broadcast, or FlexAttention's indices).

    Global layers (window None): k <= q. Window layers: k <= q and (q - k <= window or k is a meta token),
    i.e. window + 1 keys counting the query itself, plus the meta tokens. Padding (-1) is never visible.
    """
    ok = (k >= 0) & (k <= q)
    if window is not None:
        ok = ok & (((q - k) <= window) | (k < num_meta))
    return ok


def allowed_keys(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, num_meta: int) -> torch.Tensor:
    """Boolean [batch, Tq, Tk]: key k is visible to query q (see `visible`)."""
    return visible(q_pos[:, :, None], k_pos[:, None, :], window, num_meta)
