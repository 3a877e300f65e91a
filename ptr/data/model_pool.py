"""Model specs for the data stages, and a pool that loads each distinct model once per run.

A spec is a model reference (see :mod:`ptr.models`) with an optional backend prefix, so that each
model of a run can use its own backend:

* ``smollm2-135m-instruct`` — the run's default backend (``--backend``, ``--endpoint``);
* ``vllm:Qwen/Qwen2-7B-Instruct`` — that model through vLLM;
* ``openai:served-name@http://host:8000/v1`` — a served model; ``openai:served-name`` uses
  ``--endpoint``; ``openai:@http://host/v1`` the first model the endpoint lists.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ptr.errors import PtrError
from ptr.inference import BACKENDS, Backend, BackendOptions, load_backend

BackendName = Literal["transformers", "vllm", "openai"]
# The share of GPU memory vLLM may take, divided among the vLLM engines a run holds at once: each
# engine reserves its fraction of the whole GPU up front, so two at 0.85 cannot share one.
VLLM_GPU_MEMORY = 0.85


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str  # the spec as written; records name their model by it
    ref: str | None
    backend: BackendName = "transformers"
    endpoint: str | None = None

    @property
    def key(self) -> tuple:
        return (self.backend, self.ref, self.endpoint)


def parse_spec(text: str, backend: str = "transformers", endpoint: str | None = None) -> ModelSpec:
    text = text.strip()
    if not text:
        raise PtrError("a model reference is empty")
    ref: str | None = text
    prefix, sep, rest = text.partition(":")
    if sep and prefix in BACKENDS:
        backend, ref = prefix, rest
    if backend == "openai":
        name, at, url = (ref or "").partition("@http")
        if at:
            endpoint = "http" + url
        ref = name or None
        if not endpoint:
            raise PtrError(f"model {text!r}: the openai backend needs an endpoint (--endpoint or name@URL)")
    elif not ref:
        raise PtrError(f"model {text!r}: no model reference after the backend prefix")
    if backend not in BACKENDS:
        raise PtrError(f"model {text!r}: unknown backend {backend!r} (expected {', '.join(BACKENDS)})")
    return ModelSpec(label=text, ref=ref, backend=backend, endpoint=endpoint)


class ModelPool:
    """Loads each distinct (backend, reference, endpoint) once; later requests get the same object."""

    def __init__(
        self,
        *,
        dtype: str = "auto",
        batch_size: int = 16,
        device: str | None = None,
        preloaded: dict | None = None,
    ):
        self.dtype, self.batch_size, self.device = dtype, batch_size, device
        self._loaded: dict[tuple, Backend] = {}
        self._vllm_engines = 1
        for spec, backend in (preloaded or {}).items():  # tests hand in models they already hold
            self._loaded[spec.key] = backend

    def plan(self, specs: list[ModelSpec]) -> None:
        """Tell the pool every model the run will hold at once, before the first is loaded, so the
        vLLM engines split the GPU's memory instead of each reserving most of it."""
        engines = {s.key for s in specs if s.backend == "vllm"}
        self._vllm_engines = max(1, len(engines))

    def get(self, spec: ModelSpec) -> Backend:
        if spec.key not in self._loaded:
            options = BackendOptions(
                dtype=self.dtype,
                batch_size=self.batch_size,
                device=self.device,
                endpoint=spec.endpoint,
                gpu_memory_share=round(VLLM_GPU_MEMORY / self._vllm_engines, 4),
            )
            self._loaded[spec.key] = load_backend(spec.backend, spec.ref, options)
        return self._loaded[spec.key]

    def __len__(self) -> int:
        return len(self._loaded)

    def release(self, spec: ModelSpec) -> None:
        """Forget a model (so its memory can be freed before the next one loads)."""
        self._loaded.pop(spec.key, None)
