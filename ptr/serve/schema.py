"""What a request to the served model may hold, checked before any work is queued.

The request's shape is :mod:`ptr.inference.refine_protocol`'s (the client builds it there). Every problem is a :class:`RequestError` whose message names the field (``instances[1].messages[0].role:
…``); the server answers it with HTTP 400. This module does not import kserve.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ptr.errors import describe
from ptr.inference import Conversation, SamplingParams
from ptr.prompts import REFINE_PROMPT


class RequestError(ValueError):
    """A request the server will not run; the message says why (HTTP 400): ``where: reason``, or the
    reason alone. Callers that know where themselves read ``reason``."""

    def __init__(self, reason: str, where: str = ""):
        self.reason, self.where = reason, where
        super().__init__(f"{where}: {reason}" if where else reason)


@dataclass(frozen=True)
class Limits:
    """Server-side bounds on one request (``ptr serve --max_rounds …``)."""

    max_rounds: int = 8
    max_instances: int = 64
    max_new_tokens: int = 2048
    max_stop: int = 8


@dataclass
class RefineRequest:
    conversations: list[Conversation]
    rounds: int
    params: SamplingParams
    refine_prompt: str


class _Strict(BaseModel):
    # strict: "2" is not a number and true is not an integer; forbid: a misspelt key is an error.
    model_config = ConfigDict(extra="forbid", strict=True)


class _Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class _Instance(_Strict):
    messages: list[_Message] | None = Field(default=None, min_length=1)
    prompt: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_of(self):
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' (a chat) or 'prompt' (plain text)")
        return self

    def conversation(self) -> Conversation:
        if self.prompt is not None:
            return self.prompt
        return [m.model_dump() for m in self.messages]


class _Parameters(_Strict):
    rounds: int = Field(default=1, ge=1)
    max_new_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    refine_prompt: str | None = Field(default=None, min_length=1)


class _Request(_Strict):
    instances: list[_Instance] = Field(min_length=1)
    parameters: _Parameters = Field(default_factory=_Parameters)


def _reason(err: ValidationError) -> str:
    return describe(err, whole="request")


def decode_body(body) -> dict:
    """A request body (bytes, str or an already decoded object) as a JSON object."""
    if isinstance(body, bytes | bytearray):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as err:
            raise RequestError(f"request body is not UTF-8 (byte {err.start})") from None
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as err:
            raise RequestError(f"request body is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise RequestError(f"request body must be a JSON object, not {type(body).__name__}")
    return body


def parse_request(body, limits: Limits = Limits(), refine_prompt: str = REFINE_PROMPT) -> RefineRequest:
    """Check one request against the schema and the server's limits."""
    obj = decode_body(body)
    try:
        req = _Request.model_validate(obj)
    except ValidationError as err:
        raise RequestError(_reason(err)) from None
    p = req.parameters
    if len(req.instances) > limits.max_instances:
        raise RequestError(
            f"instances: {len(req.instances)} instances; this server takes at most {limits.max_instances}"
        )
    if p.rounds > limits.max_rounds:
        raise RequestError(
            f"parameters.rounds: {p.rounds} rounds; this server runs at most {limits.max_rounds}"
        )
    if "max_new_tokens" not in p.model_fields_set:  # the default never exceeds the server's limit
        p.max_new_tokens = min(p.max_new_tokens, limits.max_new_tokens)
    if p.max_new_tokens > limits.max_new_tokens:
        raise RequestError(
            f"parameters.max_new_tokens: {p.max_new_tokens}; this server generates at most {limits.max_new_tokens}"
        )
    if len(p.stop) > limits.max_stop or any(not s for s in p.stop):
        raise RequestError(f"parameters.stop: at most {limits.max_stop} non-empty strings")
    params = SamplingParams(
        max_new_tokens=p.max_new_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        top_k=p.top_k,
        seed=p.seed,
        stop=tuple(p.stop),
    )
    return RefineRequest(
        conversations=[inst.conversation() for inst in req.instances],
        rounds=p.rounds,
        params=params,
        refine_prompt=p.refine_prompt or refine_prompt,
    )
