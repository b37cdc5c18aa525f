"""What a request asks of the engine (`SamplingParams`) and what it gets back (`RequestOutput`), in the shape
people know from vLLM's offline API and OpenAI's completions."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError

MAX_SEED = 2**63 - 1


@dataclass
class SamplingParams:
    """How to continue one prompt. temperature 0 is greedy; top_k 0 (or -1) and top_p 1 are off; `seed` makes
    sampling reproducible whatever else runs beside the request (None: a fresh random seed).

    A request ends at `max_tokens` new tokens, at an end-of-sequence token (unless `ignore_eos`; never before
    `min_tokens`), at a token of `stop_token_ids` (kept in the output), or when its text contains one of
    `stop` (the text is cut before it unless `include_stop_str_in_output`)."""

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] | str | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        def whole(name, low):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")

        whole("max_tokens", 1)
        whole("min_tokens", 0)
        if self.min_tokens > self.max_tokens:
            raise InputError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if self.top_k == -1:
            self.top_k = 0
        whole("top_k", 0)
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise InputError(f"{name} must be a number, got {value!r}")
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise InputError(f"repetition_penalty must be > 0 (1: off), got {self.repetition_penalty}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed <= MAX_SEED):
            raise InputError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        for s in stop:
            if not isinstance(s, str) or not s:
                raise InputError(f"stop strings must be non-empty strings, got {s!r}")
        self.stop = stop
        self.stop_token_ids = [int(t) for t in self.stop_token_ids]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" (end of sequence, stop token or string), "length", "abort"; None: running
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: dict = field(default_factory=dict)  # arrival, first-token and finish times (time.monotonic)
