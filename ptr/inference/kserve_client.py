"""A model served by `ptr serve` (KServe V1 or V2), as a generation backend over HTTP.

``KServeBackend`` overrides :meth:`~ptr.inference.backend.Backend.refine`: each conversation goes to the
server in ONE request with ``parameters.rounds = R``, and the server runs the rounds itself.

Why server-side rounds rather than one request per round:

* the server keeps each conversation's attention cache between rounds (prefix reuse), so round k only
  runs the new tokens; turn by turn, every round would re-send and re-encode the whole conversation;
* one round trip per question instead of R, and the server's batcher mixes round 2 of one question
  with round 1 of another, so the model never waits for the client between rounds;
* the refine turn is built by the same code (``ptr.inference.continue_conversation``) that local
  evaluation uses, with the refine prompt sent as a parameter (or, when none is given, the server's
  default: the served model's trained prompt), so served and local results agree.

The cost: ``on_round`` callbacks arrive when a conversation's last round is back, not as each round
finishes. Requests run with bounded concurrency, a timeout, and retries with backoff on connection
errors, 429, 503 (model loading) and other 5xx; a 400 (a request the server will not run) fails at once
with the server's reason. The server stops each round at the model's end of turn (it has the
tokenizer). No kserve import: evaluation images need only httpx.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

from ptr.errors import PtrError
from ptr.inference.backend import Backend, BackendOptions
from ptr.inference.http import EndpointError, JsonClient
from ptr.inference.refine_protocol import completion_of, request_body
from ptr.inference.types import Completion, Conversation, SamplingParams

PROTOCOLS = ("v1", "v2")


class KServeBackend(Backend):
    name = "kserve"
    local = False

    def __init__(
        self,
        endpoint: str,
        model_name: str | None = None,
        *,
        protocol: str = "v1",
        timeout: float = 600.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        concurrency: int = 16,
        instances_per_request: int = 1,
        headers: dict | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        if concurrency < 1 or instances_per_request < 1:
            raise ValueError("concurrency and instances_per_request must be >= 1")
        self.endpoint = endpoint.rstrip("/")
        self.protocol = protocol
        self.concurrency, self.instances_per_request = concurrency, instances_per_request
        self.http = JsonClient(
            self.endpoint,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            headers=headers,
            connections=concurrency,
        )
        self.model_name = model_name or self._first_model()

    @classmethod
    def from_options(cls, model_ref, options: BackendOptions) -> KServeBackend:
        if not options.endpoint:
            raise PtrError(
                "the kserve backend needs --endpoint (the server's base URL, e.g. http://host:8080)"
            )
        return cls(options.endpoint, model_ref, concurrency=options.batch_size)

    # -- HTTP -------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        return self.http.request(method, path, body)

    def _first_model(self) -> str:
        models = self._request("GET", "/v1/models").get("models") or []
        if not models:
            raise EndpointError(f"{self.endpoint}/v1/models lists no model; pass a model name")
        return models[0]

    def _predict(self, conversations: list[Conversation], rounds: int, params, refine_prompt: str | None):
        request = request_body(conversations, rounds, params, refine_prompt)
        if self.protocol == "v1":
            data = self._request("POST", f"/v1/models/{self.model_name}:predict", request)
        else:
            v2 = {
                "inputs": [
                    {"name": "request", "datatype": "BYTES", "shape": [1], "data": [json.dumps(request)]}
                ]
            }
            out = self._request("POST", f"/v2/models/{self.model_name}/infer", v2)
            try:
                (output,) = [o for o in out["outputs"] if o["name"] == "response"]
                data = json.loads(output["data"][0])
            except (KeyError, ValueError, IndexError) as err:
                raise EndpointError(f"unexpected V2 response from {self.endpoint}: {err}") from None
        preds = data.get("predictions")
        if not isinstance(preds, list) or len(preds) != len(conversations):
            raise EndpointError(
                f"{self.endpoint} answered {len(preds or [])} predictions for {len(conversations)}"
            )
        results = [[completion_of(r) for r in p["rounds"]] for p in preds]
        if any(len(r) != rounds for r in results):
            raise EndpointError(f"{self.endpoint} answered fewer rounds than the {rounds} asked for")
        return results

    # -- the backend interface --------------------------------------------------------------------

    def refine(
        self,
        conversations,
        rounds: int,
        params: SamplingParams,
        *,
        refine_prompt: str | None = None,
        chunk_size: int = 64,
        on_round=None,
        progress=None,
    ) -> list[list[Completion]]:
        """Rounds 1..R per conversation, run server-side (``refine_prompt`` None: the server's
        default); ``on_round(k, indices, completions)`` is called for each round of each request once it
        is back, ``progress(n)`` per generation. ``chunk_size`` does not apply: the server bounds its
        caches."""
        if rounds < 1:
            raise ValueError("rounds must be >= 1")
        step = self.instances_per_request
        chunks = [
            list(range(i, min(i + step, len(conversations)))) for i in range(0, len(conversations), step)
        ]
        results: list[list[Completion] | None] = [None] * len(conversations)
        lock = threading.Lock()

        def run(indices: list[int]):
            got = self._predict([conversations[i] for i in indices], rounds, params, refine_prompt)
            with lock:  # callbacks are called one at a time, as from a single-threaded backend
                for i, r in zip(indices, got, strict=True):
                    results[i] = r
                if on_round is not None:
                    for k in range(rounds):
                        on_round(k + 1, indices, [r[k] for r in got])
                if progress is not None:
                    progress(len(indices) * rounds)

        if len(chunks) <= 1 or self.concurrency == 1:
            for chunk in chunks:
                run(chunk)
        else:
            with ThreadPoolExecutor(self.concurrency) as pool:
                list(pool.map(run, chunks))
        return results  # type: ignore[return-value]

    def generate(self, conversations, params: SamplingParams, *, progress=None, **_) -> list[Completion]:
        return [r[0] for r in self.refine(conversations, 1, params, progress=progress)]

    def close(self) -> None:
        self.http.close()
