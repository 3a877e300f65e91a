"""An OpenAI-compatible endpoint (vLLM's server, KServe's Hugging Face runtime, any chat API).

Chat conversations go to ``/chat/completions``, plain prompts to ``/completions``. Requests run with
bounded concurrency, a timeout, and retries with exponential backoff on connection errors, 429 and 5xx.

End of turn: the server holds the tokenizer and stops at the model's EOS. A chat-trained base model may
end its turn with a token the server does not stop at (its generation config lists only EOS), and a
server that returns special tokens as text shows it; so the usual end-of-turn markers
(:data:`ptr.chat.GENERIC_STOPS`) go out as stop strings after the caller's own, within the API's limit of
four, and every stop string is applied to the answer here too, whether or not the server honoured it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from ptr.chat import GENERIC_STOPS
from ptr.errors import PtrError
from ptr.inference.backend import Backend, BackendOptions
from ptr.inference.http import EndpointError, JsonClient
from ptr.inference.types import Completion, Conversation, SamplingParams

__all__ = ["EndpointError", "OpenAIBackend"]


class OpenAIBackend(Backend):
    name = "openai"
    local = False
    max_stop_strings = 4  # the OpenAI API's limit

    def __init__(
        self,
        base_url: str,
        model_name: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        concurrency: int = 8,
    ):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.concurrency = max(1, concurrency)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.http = JsonClient(
            self.base_url,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            headers=headers,
            connections=self.concurrency,
        )
        self.model_name = model_name or self._first_model()

    @classmethod
    def from_options(cls, model_ref, options: BackendOptions) -> OpenAIBackend:
        if not options.endpoint:
            raise PtrError("the openai backend needs --endpoint (the base URL, e.g. http://host:8000/v1)")
        return cls(options.endpoint, model_ref, concurrency=options.batch_size)

    def stops(self, params: SamplingParams) -> list[str]:
        """The caller's stop strings, then the end-of-turn markers, at most four."""
        return list(dict.fromkeys((*params.stop, *GENERIC_STOPS)))[: self.max_stop_strings]

    def _first_model(self) -> str:
        data = self._request("GET", "/models")
        models = data.get("data") or []
        if not models:
            raise EndpointError(f"{self.base_url}/models lists no model; pass a model name")
        return models[0]["id"]

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        return self.http.request(method, path, body)

    def _one(self, conversation: Conversation, params: SamplingParams) -> Completion:
        body = {
            "model": self.model_name,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.top_k:
            body["top_k"] = params.top_k  # vLLM extension; plain OpenAI ignores unknown keys poorly
        if params.seed is not None:
            body["seed"] = params.seed
        stops = self.stops(params)
        body["stop"] = stops
        if isinstance(conversation, str):
            data = self._request("POST", "/completions", {**body, "prompt": conversation})
            text = data["choices"][0].get("text") or ""
        else:
            data = self._request("POST", "/chat/completions", {**body, "messages": conversation})
            text = data["choices"][0]["message"].get("content") or ""
        usage = data.get("usage") or {}
        reason = data["choices"][0].get("finish_reason") or "stop"
        for stop in stops:  # a server that did not honour a stop string: cut there all the same
            cut = text.find(stop)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        return Completion(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason="length" if reason == "length" else "stop",
        )

    def generate(self, conversations, params: SamplingParams, *, progress=None, **_) -> list[Completion]:
        def run(c):
            result = self._one(c, params)
            if progress is not None:
                progress(1)
            return result

        if len(conversations) <= 1 or self.concurrency == 1:
            return [run(c) for c in conversations]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(run, conversations))
