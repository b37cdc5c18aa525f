"""The OpenAI request bodies the server takes (`/v1/completions`, `/v1/chat/completions`), their conversion to
`SamplingParams`, and OpenAI's error body.

Validation is strict about types (a string where a number belongs is a 400, not a silent conversion) and
ignores fields it does not know, as OpenAI clients send some that change nothing here (`user`, ...). Fields
that would change the answer but are not supported (n > 1, logprobs, echo, penalties other than 0) are a 400
that names them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..engine.params import SamplingParams
from ..errors import InputError

STRICT = ConfigDict(strict=True, extra="ignore")
UNION_TAGS = {"str", "int", "float", "bool", "none", "StreamOptions", "TextPart"}  # names pydantic gives union members


class RequestError(InputError):
    """A request the server refuses with 400; `param` names the field at fault (None: the body as a whole)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def error_body(message: str, type_: str, param: str | None = None, code: str | int | None = None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class _Request(BaseModel):
    """What completions and chat completions share: the sampling settings and the response form."""

    model_config = STRICT
    model: str | None = None
    max_tokens: int | None = None
    min_tokens: int = 0
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    logprobs: bool | int | None = None
    return_token_ids: bool = False  # not OpenAI's: the choice also carries the generated token ids

    def check_supported(self) -> None:
        if self.n not in (None, 1):
            raise RequestError(f"n must be 1 (one completion per request), got {self.n}", "n")
        if self.logprobs not in (None, False, 0):
            raise RequestError("logprobs are not supported", "logprobs")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0):
                raise RequestError(f"{name} is not supported (use repetition_penalty)", name)
        if self.stream_options is not None and not self.stream:
            raise RequestError("stream_options needs stream: true", "stream_options")

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def max_tokens_field(self) -> str:
        return "max_tokens"

    def sampling_params(self, default_max_tokens: int) -> SamplingParams:
        """The engine's settings for this request; a bad value is a RequestError naming its field."""
        max_tokens = self.requested_max_tokens()
        kwargs = dict(max_tokens=default_max_tokens if max_tokens is None else max_tokens,
                      min_tokens=self.min_tokens, temperature=1.0 if self.temperature is None else self.temperature,
                      top_p=1.0 if self.top_p is None else self.top_p, top_k=self.top_k or 0,
                      repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
                      seed=self.seed, stop=self.stop, stop_token_ids=self.stop_token_ids or [],
                      ignore_eos=self.ignore_eos, include_stop_str_in_output=self.include_stop_str_in_output,
                      skip_special_tokens=self.skip_special_tokens)
        try:
            return SamplingParams(**kwargs)
        except InputError as e:
            message = str(e)
            param = next((k for k in kwargs if message.startswith(k)), None)
            if param == "max_tokens":
                param = self.max_tokens_field
            raise RequestError(message, param) from None


class CompletionRequest(_Request):
    """POST /v1/completions: one prompt, as text or token ids (a list holding one of those is taken too)."""

    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise RequestError("echo is not supported", "echo")
        if self.suffix:
            raise RequestError("suffix is not supported", "suffix")
        if self.best_of not in (None, 1):
            raise RequestError(f"best_of must be 1, got {self.best_of}", "best_of")

    def single_prompt(self) -> str | list[int]:
        """The prompt as text or token ids; several prompts in one request are refused."""
        p = self.prompt
        if isinstance(p, list) and p and not isinstance(p[0], int):
            if len(p) != 1:
                raise RequestError(f"one prompt per request, got {len(p)}", "prompt")
            p = p[0]
        if not p:
            raise RequestError("the prompt is empty", "prompt")
        return p


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = STRICT
    role: str
    content: str | list[TextPart] | None = None

    def as_dict(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        return {"role": self.role, "content": content or ""}


class ChatCompletionRequest(_Request):
    """POST /v1/chat/completions: a conversation rendered with the tokenizer's chat template."""

    messages: list[Message]
    max_completion_tokens: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if not self.messages:
            raise RequestError("messages is empty", "messages")

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def max_tokens_field(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"


def parse(model: type[_Request], body) -> _Request:
    """A validated request from a decoded JSON body; any problem is a RequestError naming the field."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        request = model.model_validate(body)
    except ValidationError as e:
        raise validation_error(e.errors()) from None
    request.check_supported()
    return request


def validation_error(errors) -> RequestError:
    """The first of pydantic's (or FastAPI's) validation errors, as one readable RequestError."""
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    # a union reports each of its members: name the field, not the member that was tried
    field = ".".join(p for p in loc if p not in UNION_TAGS and "[" not in p)
    if first.get("type") == "missing":
        return RequestError(f"{field or 'a field'} is required", field or None)
    got = first.get("input")
    return RequestError(f"{field or 'the body'}: {first.get('msg', 'invalid value')} (got {got!r:.80})", field or None)
