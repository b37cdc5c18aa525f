"""The HTTP application: OpenAI's /v1/completions, /v1/chat/completions and /v1/models over an `AsyncEngine`,
with /health and Prometheus /metrics.

A request's prompt is tokenized and checked here, then its deltas come from the engine thread. The first
delta is awaited before the response starts, so that a full queue (429), a stopping engine (503) or a prompt
too long for the context (400) get their status code even when streaming. Whatever way a client leaves (a
closed stream, a dropped connection while a non-streamed answer is computed), its request is aborted and its
slot freed at the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import aclosing, suppress

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..engine import AsyncEngine, Delta, EngineBusyError, EngineStoppedError, SamplingParams
from ..errors import HymbaError, InputError
from .metrics import Metrics
from .protocol import ChatCompletionRequest, CompletionRequest, RequestError, error_body, parse, validation_error

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
DISCONNECT_POLL_S = 0.2
_GONE = object()


def error_response(status: int, message: str, type_: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, status), status_code=status)


class _Gate:
    """ASGI middleware: counts every HTTP request by endpoint and status, and refuses new work (503) once the
    server is draining."""

    def __init__(self, app, state):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        status = 500

        async def counted_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.state.draining and path.startswith("/v1/"):
                response = error_response(503, "the server is shutting down", "service_unavailable")
                return await response(scope, receive, counted_send)
            await self.app(scope, receive, counted_send)
        finally:
            self.state.metrics.count_request(path, status)


async def _read_json(request: Request):
    raw = await request.body()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON: {e}") from None


async def _unless_disconnected(request: Request, awaitable):
    """Await `awaitable` as a task, cancelling it if the client disconnects meanwhile (then: _GONE)."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
                return _GONE
    finally:
        if not task.done():
            task.cancel()


def _usage(delta: Delta) -> dict:
    return {"prompt_tokens": delta.num_prompt_tokens, "completion_tokens": delta.num_output_tokens,
            "total_tokens": delta.num_prompt_tokens + delta.num_output_tokens}


class _Generation:
    """One request's answer in OpenAI's shape: `chat` picks chat.completion(.chunk) over text_completion."""

    def __init__(self, chat: bool, model: str, return_token_ids: bool):
        self.chat, self.model, self.return_token_ids = chat, model, return_token_ids
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, obj: str, choices: list, **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                **extra}

    def response(self, text: str, token_ids: list[int], last: Delta) -> dict:
        choice = {"index": 0, "logprobs": None, "finish_reason": last.finish_reason}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if self.return_token_ids:
            choice["token_ids"] = token_ids
        return self._envelope("chat.completion" if self.chat else "text_completion", [choice], usage=_usage(last))

    def chunk(self, text: str | None, token_ids: list[int], finish_reason: str | None, usage: bool,
              role: bool = False) -> dict:
        choice = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
        if self.chat:
            choice["delta"] = ({"role": "assistant"} if role else {}) | ({} if text is None else {"content": text})
        else:
            choice["text"] = text or ""
        if self.return_token_ids:
            choice["token_ids"] = token_ids
        extra = {"usage": None} if usage else {}
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice], **extra)

    def usage_chunk(self, last: Delta) -> dict:
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [], usage=_usage(last))


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def build_app(async_engine: AsyncEngine, model_name: str, tokenizer=None) -> FastAPI:
    """The FastAPI app serving `async_engine`'s model as `model_name`. `tokenizer` encodes text prompts and
    renders chat templates (default: the engine's)."""
    engine = async_engine.engine
    tokenizer = tokenizer if tokenizer is not None else engine.tokenizer
    app = FastAPI(title="hymba", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.draining = False
    app.state.metrics = metrics = Metrics(engine)
    app.state.async_engine = async_engine
    app.add_middleware(_Gate, state=app.state)
    started = int(time.time())

    # ---- errors: OpenAI's body for every status ---------------------------------------------------------------
    @app.exception_handler(RequestError)
    async def _request_error(_, e: RequestError):
        return error_response(400, str(e), "invalid_request_error", e.param)

    @app.exception_handler(InputError)
    async def _input_error(_, e: InputError):
        return error_response(400, str(e), "invalid_request_error")

    @app.exception_handler(HymbaError)
    async def _hymba_error(_, e: HymbaError):
        if isinstance(e, EngineBusyError):
            return error_response(429, str(e), "rate_limit_error")
        if isinstance(e, EngineStoppedError):
            return error_response(503, str(e), "service_unavailable")
        return error_response(400, str(e), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_, e: RequestValidationError):
        err = validation_error(e.errors())
        return error_response(400, str(err), "invalid_request_error", err.param)

    @app.exception_handler(HTTPException)
    async def _http_error(_, e: HTTPException):
        return error_response(e.status_code, str(e.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def _internal_error(_, e: Exception):
        return error_response(500, f"internal error: {e!r}", "internal_error")

    # ---- endpoints ------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        ok = async_engine.healthy and not app.state.draining
        return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), headers={"Content-Type": metrics.content_type})

    @app.get("/v1/models")
    async def models():
        card = {"id": model_name, "object": "model", "created": started, "owned_by": "hymba",
                "max_model_len": engine.max_model_len}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse(CompletionRequest, await _read_json(request))
        prompt = req.single_prompt()
        if isinstance(prompt, str):
            if tokenizer is None:
                raise RequestError("text prompts need a tokenizer; send token ids", "prompt")
            ids, text = tokenizer.encode(prompt), prompt
        else:
            ids, text = list(prompt), None
        params = req.sampling_params(DEFAULT_COMPLETION_TOKENS)
        return await _generate(request, _Generation(False, model_name, req.return_token_ids), req, ids, text, params)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse(ChatCompletionRequest, await _read_json(request))
        if tokenizer is None or tokenizer.chat_template is None:
            raise RequestError(f"the model {model_name} has no chat template; use /v1/completions", "messages")
        try:
            ids = tokenizer.apply_chat_template([m.as_dict() for m in req.messages], add_generation_prompt=True,
                                                tokenize=True)
        except HymbaError as e:
            raise RequestError(f"the chat template failed on these messages: {e}", "messages") from None
        room = engine.max_model_len - len(ids)
        if room < 1:
            raise RequestError(f"the conversation has {len(ids)} tokens: no room left in the context of "
                               f"{engine.max_model_len} tokens", "messages")
        params = req.sampling_params(room)
        return await _generate(request, _Generation(True, model_name, req.return_token_ids), req, ids, None, params)

    # ---- one generation ---------------------------------------------------------------------------------------
    async def _generate(request: Request, out: _Generation, req, ids: list[int], text: str | None,
                        params: SamplingParams):
        stream = async_engine.generate(ids, params, request_id=out.id, prompt=text)
        try:
            first = await _unless_disconnected(request, anext(stream))
        except BaseException:
            await stream.aclose()
            raise
        if first is _GONE:
            await stream.aclose()
            return Response(status_code=499)
        if req.stream:
            return StreamingResponse(_events(out, stream, first, req.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})

        async def rest():
            pieces, tokens, last = [first.text], list(first.token_ids), first
            while not last.finished:
                last = await anext(stream)
                pieces.append(last.text)
                tokens += last.token_ids
            return "".join(pieces), tokens, last

        async with aclosing(stream):
            result = await _unless_disconnected(request, rest())
        if result is _GONE:
            metrics.observe(first.num_prompt_tokens, 0, first.arrival, None, time.monotonic(), "abort")
            return Response(status_code=499)
        answer, tokens, last = result
        metrics.observe(last.num_prompt_tokens, last.num_output_tokens, last.arrival, last.first_token_time,
                        time.monotonic(), last.finish_reason)
        return out.response(answer, tokens, last)

    async def _events(out: _Generation, stream, first: Delta, include_usage: bool):
        """Server-sent events: OpenAI's chunks, a usage chunk if asked for, then [DONE]. Closing this generator
        (the client went away) closes `stream`, which aborts the request."""
        last, reason = first, "abort"
        try:
            async with aclosing(stream):
                if out.chat:
                    yield _sse(out.chunk("", [], None, include_usage, role=True))
                delta, pending = first, []  # tokens whose text is not complete yet (part of a character)
                while True:
                    pending += delta.token_ids
                    if delta.text or delta.finished:
                        yield _sse(out.chunk(delta.text, pending, delta.finish_reason, include_usage))
                        pending = []
                    last = delta
                    if delta.finished:
                        reason = delta.finish_reason
                        break
                    delta = await anext(stream)
            if include_usage:
                yield _sse(out.usage_chunk(last))
        except EngineStoppedError as e:
            yield _sse(error_body(str(e), "service_unavailable", None, 503))
        finally:
            metrics.observe(last.num_prompt_tokens, last.num_output_tokens, last.arrival, last.first_token_time,
                            time.monotonic(), reason)
        yield _sse("[DONE]")

    return app
