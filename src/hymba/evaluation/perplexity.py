"""Sliding-window perplexity of a long text, the standard way (as for WikiText).

The text is tokenized once (with the tokenizer's BOS). The model reads it in windows of at most `max_length`
tokens; each window scores only the tokens no earlier window scored (`stride` new tokens, the first window as
many as fit), so every token after the first is scored exactly once, with between max_length - stride + 1 and
max_length tokens of context (fewer only at the start). stride = max_length gives disjoint windows;
stride = 1 conditions every token on the full max_length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from ..errors import InputError
from .scoring import score_targets


@dataclass
class PerplexityResult:
    tokens: int  # tokens scored (all but the first)
    nll: float  # total negative log-likelihood, nats
    words: int  # whitespace-separated words of the text
    bytes: int  # UTF-8 bytes of the text
    windows: int
    max_length: int
    stride: int

    @property
    def perplexity(self) -> float:
        """Per token: exp(mean nll) (depends on the tokenizer)."""
        return math.exp(self.nll / self.tokens)

    @property
    def word_perplexity(self) -> float:
        """exp(nll / words): comparable across tokenizers, as lm-eval's wikitext reports it."""
        return math.exp(self.nll / self.words) if self.words else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes if self.bytes else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "nll_per_token": self.nll / self.tokens, "perplexity": self.perplexity,
                "word_perplexity": self.word_perplexity, "bits_per_byte": self.bits_per_byte}


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (begin, end, first) over tokens[0:n]: the model reads tokens[begin:end-1] (at most max_length)
    and scores targets tokens[first:end]. Targets cover 1..n-1 once, in order."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be in [1, max_length={max_length}], got {stride}")
    windows = []
    first = 1
    while first < n_tokens:
        end = min(n_tokens, first + stride if windows else max_length + 1)
        begin = max(0, end - 1 - max_length)
        windows.append((begin, end, first))
        first = end
    return windows


def token_nll(model, tokens: Sequence[int], max_length: int, stride: int, batch_size: int = 8,
              progress: Callable[[int], None] | None = None) -> tuple[float, int, int]:
    """(total nll in nats, tokens scored, windows) of a token sequence under sliding windows."""
    windows = sliding_windows(len(tokens), max_length, stride)
    if not windows:
        raise ValueError(f"nothing to score: the text has {len(tokens)} token(s); perplexity needs at least 2")
    requests = [(list(tokens[begin:end]), first - begin) for begin, end, first in windows]
    scores = score_targets(model, requests, batch_size=batch_size, max_length=max_length, progress=progress)
    return -sum(s.total for s in scores), sum(len(s.logprobs) for s in scores), len(windows)


def text_perplexity(model, tokenizer, text: str, max_length: int | None = None, stride: int | None = None,
                    batch_size: int = 8, progress: Callable[[int], None] | None = None) -> PerplexityResult:
    """Perplexity of `text` (CRLF line ends read as LF). Defaults: max_length = the model's context (its
    max_position_embeddings less the meta tokens), stride = max_length // 2."""
    text = text.replace("\r\n", "\n")
    limit = model.config.max_position_embeddings
    if max_length is None:
        max_length = limit - model.config.num_memory_tokens
    elif max_length > limit:
        raise InputError(f"max_length={max_length} is more than the model's max_position_embeddings ({limit})")
    if stride is None:
        stride = max(1, max_length // 2)
    tokens = tokenizer.encode(text)
    nll, scored, n_windows = token_nll(model, tokens, max_length, stride, batch_size, progress)
    return PerplexityResult(tokens=scored, nll=nll, words=len(text.split()), bytes=len(text.encode("utf-8")),
                            windows=n_windows, max_length=max_length, stride=stride)
