"""The refine request and its answer as they travel between ``ptr serve`` and its client.

One request (V1 body, or the JSON inside the V2 ``request`` input)::

    {"instances": [{"messages": [{"role": "user", "content": "..."}]} | {"prompt": "..."}, ...],
     "parameters": {"rounds": 2, "max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "top_k": 0,
                    "seed": null, "stop": [], "refine_prompt": "..."}}

and its answer ``{"predictions": [{"rounds": [{"round", "text", "completion_tokens", "prompt_tokens",
"finish_reason"}, …]}, …]}``. The client (:mod:`ptr.inference.kserve_client`) builds the one and reads
the other with these functions; the server (:mod:`ptr.serve.schema`) checks requests strictly and writes
answers with them, so the two sides cannot drift apart.
"""

from __future__ import annotations

from ptr.inference.types import Completion, Conversation, SamplingParams


def request_body(
    conversations: list[Conversation], rounds: int, params: SamplingParams, refine_prompt: str | None
) -> dict:
    """A refine request; without ``refine_prompt`` the server uses its own default (the served
    model's trained refine prompt)."""
    parameters = {
        "rounds": rounds,
        "max_new_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "seed": params.seed,
        "stop": list(params.stop),
    }
    if refine_prompt is not None:
        parameters["refine_prompt"] = refine_prompt
    instances = [{"prompt": c} if isinstance(c, str) else {"messages": c} for c in conversations]
    return {"instances": instances, "parameters": parameters}


def round_record(k: int, c: Completion) -> dict:
    return {
        "round": k,
        "text": c.text,
        "completion_tokens": c.completion_tokens,
        "prompt_tokens": c.prompt_tokens,
        "finish_reason": c.finish_reason,
    }


def predictions(results: list[list[Completion]]) -> list[dict]:
    """Per instance: every round's answer, in order."""
    return [{"rounds": [round_record(k, c) for k, c in enumerate(rounds, 1)]} for rounds in results]


def completion_of(record: dict) -> Completion:
    """The inverse of :func:`round_record`."""
    return Completion(
        text=record["text"],
        prompt_tokens=int(record.get("prompt_tokens") or 0),
        completion_tokens=int(record.get("completion_tokens") or 0),
        finish_reason=record.get("finish_reason") or "stop",
    )
