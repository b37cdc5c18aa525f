"""Next-token selection for a batch of requests, each with its own settings, entirely on the device.

Every row carries its temperature (0: greedy), top-k (0: off), top-p (1: off), repetition penalty (1: off),
minimum length and seed as tensors, so one set of kernels serves any mix of requests and the host never
reads logits. Randomness is counter-based: the uniform draw for token v of row r at step s is a hash of
(seed_r, s, v), and a token is drawn by the Gumbel-max trick (argmax of logits/T + Gumbel noise over the
tokens top-k and top-p keep, which samples exactly from their renormalised softmax). A request's output
therefore depends on its seed alone, not on what else shares its batch or when it joined.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (values kept below 2**32 in int64, so no product overflows): consecutive inputs
    give unrelated outputs."""
    x = x & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def uniform(seeds: torch.Tensor, steps: torch.Tensor, token_hash: torch.Tensor) -> torch.Tensor:
    """[B, V] uniforms in (0, 1) from per-row seeds [B] and steps [B] and the hashed token ids [V]."""
    row = hash32(hash32(seeds ^ (seeds >> 32)) ^ (steps * 0x9E3779B1))  # [B]
    bits = hash32(token_hash[None, :] ^ row[:, None]) >> 8  # 24 random bits
    return (bits.to(torch.float32) + 0.5) * (1.0 / (1 << 24))


@dataclass
class RowParams:
    """The per-row settings of a pool of rows (dim 0 = row), kept on the device and moved with their rows."""

    temperature: torch.Tensor  # float32; 0 = greedy
    top_k: torch.Tensor  # int64; 0 = off
    top_p: torch.Tensor  # float32; 1 = off
    penalty: torch.Tensor  # float32; 1 = off
    min_tokens: torch.Tensor  # int64: end-of-sequence tokens are suppressed before this many new tokens
    seed: torch.Tensor  # int64
    step: torch.Tensor  # int64: tokens generated so far (the RNG counter)
    seen: torch.Tensor | None  # bool [rows, V]: tokens in the prompt or output (for the penalty), or None

    @classmethod
    def allocate(cls, rows: int, vocab_size: int, device, penalties: bool = True) -> "RowParams":
        f = dict(device=device, dtype=torch.float32)
        i = dict(device=device, dtype=torch.long)
        return cls(torch.zeros(rows, **f), torch.zeros(rows, **i), torch.ones(rows, **f), torch.ones(rows, **f),
                   torch.zeros(rows, **i), torch.zeros(rows, **i), torch.zeros(rows, **i),
                   torch.zeros(rows, vocab_size, dtype=torch.bool, device=device) if penalties else None)

    def tensors(self):
        return [t for t in (self.temperature, self.top_k, self.top_p, self.penalty, self.min_tokens, self.seed,
                            self.step, self.seen) if t is not None]

    def move_row(self, src: int, dst: int) -> None:
        if src != dst:
            for t in self.tensors():
                t[dst].copy_(t[src])

    def set_row(self, r: int, *, temperature: float, top_k: int, top_p: float, penalty: float, min_tokens: int,
                seed: int, prompt: torch.Tensor | None) -> None:
        """Settings of a new request in row r; `prompt` (its token ids on the device) seeds the penalty's set."""
        self.temperature[r], self.top_k[r], self.top_p[r], self.penalty[r] = temperature, top_k, top_p, penalty
        self.min_tokens[r], self.seed[r], self.step[r] = min_tokens, seed, 0
        if self.seen is not None:
            self.seen[r].fill_(False)
            if prompt is not None and penalty != 1.0:
                self.seen[r, prompt] = True


@dataclass(frozen=True)
class BatchMode:
    """What the rows of a step need, known on the host from their requests: kernels nobody needs are skipped."""

    sample: bool = False  # some row has temperature > 0
    filter: bool = False  # some sampling row uses top-k or top-p
    penalty: bool = False  # some row has a repetition penalty
    min_tokens: bool = False  # some row still has end-of-sequence tokens suppressed


def select(logits: torch.Tensor, rows: slice, p: RowParams, mode: BatchMode, eos: torch.Tensor | None,
           token_hash: torch.Tensor) -> torch.Tensor:
    """Tokens [B] for logits [B, V] (fp32) of pool rows `rows`; advances those rows' step counters and
    penalty sets (the caller decides which rows' tokens it keeps)."""
    scores = logits
    if mode.penalty:
        pen = p.penalty[rows, None]
        penalized = torch.where(scores > 0, scores / pen, scores * pen)
        scores = torch.where(p.seen[rows], penalized, scores)
    if mode.min_tokens and eos is not None and eos.numel():
        early = (p.step[rows] < p.min_tokens[rows])[:, None]
        is_eos = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        is_eos[eos] = True
        scores = scores.masked_fill(early & is_eos[None, :], float("-inf"))
    tokens = scores.argmax(dim=-1)
    if mode.sample:
        temperature = p.temperature[rows]
        hot = temperature > 0
        scaled = scores / torch.where(hot, temperature, 1.0)[:, None]
        if mode.filter:
            scaled = _top_k_top_p(scaled, p.top_k[rows], p.top_p[rows])
        u = uniform(p.seed[rows], p.step[rows], token_hash)
        gumbel = -torch.log(-torch.log(u))
        drawn = (scaled + gumbel).argmax(dim=-1)
        tokens = torch.where(hot, drawn, tokens)
    p.step[rows] += 1
    if mode.penalty:
        p.seen[rows][torch.arange(tokens.shape[0], device=tokens.device), tokens] = True
    return tokens


def _top_k_top_p(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per-row top-k (the k largest and any tied with the k-th; 0 keeps all), then top-p on the renormalised
    rest (a token is kept while the probability ranked above it is below p): excluded tokens -> -inf."""
    V = scaled.shape[-1]
    ordered, order = torch.sort(scaled, dim=-1, descending=True)
    k = torch.where(top_k > 0, top_k.clamp(max=V), V)
    kth = ordered.gather(1, (k - 1)[:, None])
    ordered = ordered.masked_fill(ordered < kth, float("-inf"))
    probs = torch.softmax(ordered, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = (before >= top_p[:, None]) | (ordered == float("-inf"))
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return scaled.masked_fill(drop, float("-inf"))


def token_hashes(vocab_size: int, device) -> torch.Tensor:
    return hash32(torch.arange(vocab_size, dtype=torch.long, device=device) * 0x632BE5AB)
