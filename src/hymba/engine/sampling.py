"""Next-token selection: plain functions on a batch of logits [B, V] (fp32), each testable on its own.

The order is the usual one: repetition penalty on the raw logits, then the minimum-length rule, then for
sampling temperature -> top-k -> top-p -> a draw from the softmax. Filters set excluded tokens to -inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al., 2019): every token already in the row (`seen` [B, V] bool) has its logit
    divided by `penalty` when positive and multiplied by it when negative, so it always becomes less likely
    for penalty > 1."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def suppress_tokens(logits: torch.Tensor, token_ids: list[int], rows: torch.Tensor | None = None) -> torch.Tensor:
    """Set the logits of `token_ids` to -inf (in the rows where `rows` [B] is true; all rows by default)."""
    if not token_ids:
        return logits
    ids = torch.tensor(token_ids, device=logits.device)
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[:, ids] = True
    if rows is not None:
        mask &= rows[:, None]
    return logits.masked_fill(mask, float("-inf"))


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        raise InputError(f"temperature must be > 0 for sampling, got {temperature} (use greedy decoding instead)")
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (and any tied with the k-th); k <= 0 keeps everything."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al., 2020): keep the smallest set of most likely tokens whose total
    probability reaches p. A token is kept when the probability of the tokens ranked above it is below p, so
    the most likely token always survives."""
    if not 0 < p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {p}")
    if p == 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@dataclass(frozen=True)
class SelectionParams:
    """How to pick the next token. `do_sample=False` is greedy (argmax) and ignores the sampling knobs."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.do_sample and self.temperature <= 0:
            raise InputError(f"temperature must be > 0 when sampling, got {self.temperature}; "
                             "pass do_sample=False for greedy decoding")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise InputError(f"repetition_penalty must be > 0 (1.0 disables it), got {self.repetition_penalty}")


def sampling_probs(logits: torch.Tensor, params: SelectionParams) -> torch.Tensor:
    """The distribution a sampled token is drawn from: temperature, top-k, top-p, softmax."""
    logits = apply_temperature(logits, params.temperature)
    logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    return torch.softmax(logits, dim=-1)


def select_next_tokens(logits: torch.Tensor, params: SelectionParams,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, V] processed logits -> [B] token ids: argmax, or one draw per row from `sampling_probs`."""
    if not params.do_sample:
        return logits.argmax(dim=-1)
    probs = sampling_probs(logits, params)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
