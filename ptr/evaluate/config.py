"""Evaluation settings: the run (:class:`EvalConfig`) and each task's entry in ``config.json``
(:class:`TaskConfig`).

``config.json`` maps task names to ``{num_fewshots, limit, …}``; missing entries and fields take the
task's defaults. The paper's own config file is accepted as it is: its ``arc: {arc_e, arc_c}``
grouping, and entries for tasks this harness does not have (reported, then ignored).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ptr.errors import InputError, PtrError, field_path, problems
from ptr.evaluate.task_registry import canonical_name, task_names
from ptr.inference import BACKENDS, BackendOptions

MODEL_TYPES = BACKENDS
FORMAT_TYPES = ("auto", "default", "chat")


class TaskConfig(BaseModel):
    """One task's settings. Fields beyond these are task options, checked by the task itself."""

    model_config = ConfigDict(extra="allow")

    num_fewshots: int | None = Field(default=None, ge=0)
    limit: int | None = Field(default=None, ge=0, description="null or 0: every question")
    sample: Literal["first", "random"] = Field(
        default="first", description="which questions a limit keeps: the first N, or N at random (seeded)"
    )
    instruction: str | None = Field(default=None, description="replaces the task's 0-shot instruction")
    max_new_tokens: int | None = Field(default=None, ge=1)

    def options(self) -> dict:
        return dict(self.model_extra or {})


class EvalConfig(BaseModel):
    """Everything one model's evaluation needs; :func:`ptr.evaluate.evaluate` takes it."""

    model_config = ConfigDict(extra="forbid")

    model_path: str = Field(description="a model reference (ptr.models), or the served model's name")
    model_name: str | None = Field(default=None, description="the name results are filed under")
    model_type: Literal[BACKENDS] = "transformers"  # type: ignore[valid-type]
    format_type: Literal["auto", "default", "chat"] = "auto"
    endpoint: str | None = None
    tasks: list[str] = Field(default_factory=lambda: ["arith"])
    task_configs: dict[str, TaskConfig] = Field(default_factory=dict)
    data_dir: str | None = Field(default_factory=lambda: os.environ.get("PTR_DATA_DIR") or None)
    output_path: str = "out"
    save_name: str | None = None
    save_infer_texts: bool = True
    save_infer_results: bool = True
    rounds: int = Field(default=3, ge=1)
    max_new_tokens: int | None = Field(default=None, ge=1, description="None: each task's default")
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    seed: int = 0
    refine_prompt: str | None = Field(
        default=None,
        description="None: the one the model was trained with (its ptr_train.json), else the paper's",
    )
    batch_size: int = Field(default=16, ge=1)
    dtype: str = "auto"
    kv_cache_gib: float | None = Field(default=BackendOptions.kv_cache_gib, gt=0)  # vllm: its memory
    gpu_memory_share: float | None = Field(default=BackendOptions.gpu_memory_share, gt=0, le=1)
    embedding_model: str = "minilm"
    bootstrap: int = Field(default=1000, ge=10)
    plot: bool = True

    def task_config(self, name: str) -> TaskConfig:
        return self.task_configs.get(name) or TaskConfig()

    def folder_name(self) -> str:
        return self.save_name or self.model_name or default_model_name(self.model_path)


def default_model_name(model_path: str) -> str:
    name = str(model_path).rstrip("/").split("/")[-1].split("@")[0]
    return name or "model"


def load_task_configs(path) -> dict[str, TaskConfig]:
    """Read ``config.json``; errors name the file and the task/field."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "no such file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(path, err.lineno, f"invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(raw, dict):
        raise InputError(path, None, "expected a JSON object mapping task names to settings")
    known = set(task_names())
    flat: dict[str, object] = {}
    for key, value in raw.items():
        name = canonical_name(key)
        if name in known:
            flat[name] = value
        elif isinstance(value, dict) and value and all(canonical_name(k) in known for k in value):
            for sub, sub_value in value.items():  # a group, e.g. the paper's "arc": {"arc_e", "arc_c"}
                flat[canonical_name(sub)] = sub_value
        else:
            print(f"warning: {path}: no task named {key!r}; its entry is ignored", file=sys.stderr)
    out = {}
    for name, value in flat.items():
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise InputError(path, None, "expected an object of settings", field=name)
        try:
            out[name] = TaskConfig.model_validate(value)
        except ValidationError as err:
            loc, reason = problems(err)[0]
            raise InputError(path, None, reason, field=field_path((name, *loc))) from None
    return out


def check_rounds(rounds: int) -> None:
    if rounds < 1:
        raise PtrError("--rounds must be >= 1")
