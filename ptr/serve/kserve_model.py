"""The refining model as a ``kserve.Model``: V1 ``:predict`` and V2 ``/infer`` over one batcher.

V1 takes the request body itself; V2 takes the same request, JSON-encoded, as the BYTES input named
``request`` and answers with the BYTES output ``response``. Both answer ``{"predictions": [{"rounds":
[{"round", "text", "completion_tokens", "prompt_tokens", "finish_reason"}, …]}, …]}``.
"""

from __future__ import annotations

import json
import uuid

import kserve
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from ptr.inference import BackendOptions, load_backend, refine_prompt_for
from ptr.inference.refine_protocol import predictions
from ptr.serve.batcher import Scheduler, scheduler_for
from ptr.serve.schema import Limits, RequestError, parse_request

V2_INPUT = "request"
V2_OUTPUT = "response"


def _strings_of(infer_input) -> list[str]:
    """The elements of a BYTES input, as text (JSON bodies carry strings, binary bodies bytes)."""
    if infer_input._raw_data is not None:  # binary tensor extension
        items = infer_input.as_numpy().reshape(-1).tolist()
    else:
        items = infer_input.data
        while isinstance(items, list) and len(items) == 1 and isinstance(items[0], list):
            items = items[0]
    if not isinstance(items, list):
        raise RequestError(f"inputs[{V2_INPUT!r}].data must be a list")
    out = []
    for item in items:
        if isinstance(item, bytes | bytearray):
            try:
                item = bytes(item).decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(f"inputs[{V2_INPUT!r}]: element is not UTF-8") from None
        if not isinstance(item, str):
            raise RequestError(
                f"inputs[{V2_INPUT!r}]: elements must be JSON strings, not {type(item).__name__}"
            )
        out.append(item)
    return out


def v2_payload(request: InferRequest) -> str:
    """The JSON request carried by a V2 inference request."""
    names = [i.name for i in request.inputs]
    if names != [V2_INPUT]:
        raise RequestError(f"inputs: expected exactly one input named {V2_INPUT!r}, got {names}")
    (inp,) = request.inputs
    if inp.datatype != "BYTES":
        raise RequestError(f"inputs[{V2_INPUT!r}].datatype must be BYTES, not {inp.datatype}")
    if list(inp.shape or []) != [1]:
        raise RequestError(f"inputs[{V2_INPUT!r}].shape must be [1] (one JSON request), not {inp.shape}")
    items = _strings_of(inp)
    if len(items) != 1:
        raise RequestError(f"inputs[{V2_INPUT!r}]: shape [1] but {len(items)} elements")
    return items[0]


class RefiningModel(kserve.Model):
    """Answers, then refines, for the requested number of rounds; every round comes back.

    ``refine_prompt`` is the default for requests that send none; None: the one the model was trained
    with (its provenance), else the paper's."""

    def __init__(
        self,
        name: str,
        model_ref: str,
        *,
        backend: str = "transformers",
        dtype: str = "auto",
        max_batch_size: int = 16,
        max_wait_ms: float = 10.0,
        limits: Limits = Limits(),
        refine_prompt: str | None = None,
        threads: int = 0,
        kv_cache_gib: float | None = BackendOptions.kv_cache_gib,
        gpu_memory_share: float | None = BackendOptions.gpu_memory_share,
    ):
        super().__init__(name)
        self.threads = threads  # torch intra-op threads for generation (0 = torch's default)
        self.model_ref, self.backend_kind = model_ref, backend
        # one forward pass per gathered batch; requests arrive one at a time (vLLM: its async engine)
        self.backend_options = BackendOptions(
            dtype=dtype,
            batch_size=max_batch_size,
            kv_cache_gib=kv_cache_gib,
            gpu_memory_share=gpu_memory_share,
            serving=True,
        )
        self.max_batch_size, self.max_wait_ms = max_batch_size, max_wait_ms
        self.limits, self.refine_prompt = limits, refine_prompt
        self.backend = None
        self.batcher: Scheduler | None = None

    def load(self) -> bool:
        self.backend = load_backend(self.backend_kind, self.model_ref, self.backend_options)
        self.refine_prompt = refine_prompt_for(self.backend, self.refine_prompt)
        self.batcher = scheduler_for(
            self.backend,
            max_batch_size=self.max_batch_size,
            max_wait_ms=self.max_wait_ms,
            worker_init=self._set_threads if self.threads else None,
        )
        self.ready = True
        return self.ready

    def _set_threads(self):
        import torch

        torch.set_num_threads(self.threads)

    # -- V2 metadata ------------------------------------------------------------------------------

    def get_input_types(self) -> list[dict]:
        return [{"name": V2_INPUT, "datatype": "BYTES", "shape": [1]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": V2_OUTPUT, "datatype": "BYTES", "shape": [1]}]

    # -- inference --------------------------------------------------------------------------------

    async def predict(self, payload, headers=None, response_headers=None):
        v2 = isinstance(payload, InferRequest)
        try:
            request = parse_request(
                v2_payload(payload) if v2 else payload, self.limits, refine_prompt=self.refine_prompt
            )
            results = await self.batcher.refine(
                request.conversations, request.rounds, request.params, request.refine_prompt
            )
        except RequestError as err:
            raise InvalidInput(str(err)) from None
        body = {"predictions": predictions(results)}
        if not v2:
            return body
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=[InferOutput(name=V2_OUTPUT, shape=[1], datatype="BYTES", data=[json.dumps(body)])],
        )
