"""``ThoughtsConfig``: one run of the thoughts stage, in a module of its own so that
:mod:`ptr.data.chains` (which builds the chains) and :mod:`ptr.data.thoughts` (which runs the stage)
both import it without importing each other.

A run either generates thought data (``queries`` through ``weak_models`` and ``strong_model``) or
imports it (``thoughts_input``: thought data someone already made, such as the paper's release).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ptr import embeddings
from ptr.argv import config_argv
from ptr.data.filters import FilterConfig
from ptr.data.model_pool import BackendName
from ptr.prompts import FINAL_ANSWER_INSTRUCTION, REFINE_PROMPT

GENERATION_ONLY = ("queries", "weak_models", "strong_model", "judge_model")


class ThoughtsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output_path: str  # thoughts JSONL, local or s3://
    # Generate: JSONL of {id, query} (the queries stage's output), local or s3://
    queries: str | None = None
    weak_models: list[str] | None = Field(
        None, min_length=1
    )  # weakest first; specs as in ptr.data.model_pool
    strong_model: str | None = None
    judge_model: str | None = None  # None: the heuristic improvement score
    # Import instead: a thoughts JSONL, the paper's [{question, output1, …, outputN}], s3:// or hf:name
    thoughts_input: str | None = None
    num_thoughts: int = Field(2, ge=1)
    data_len: int | None = Field(None, ge=1)  # the first N queries (or imported records)
    backend: BackendName = "transformers"  # for specs without a backend prefix
    endpoint: str | None = None
    dtype: str = "auto"
    batch_size: int = Field(16, ge=1)  # queries per batch (and per append)
    max_new_tokens: int = Field(256, ge=1)  # each thought
    # The final answer's own budget (default 3 × max_new_tokens): an answer that hits it is dropped.
    answer_max_new_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.7, ge=0)  # weak models
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    strong_temperature: float = Field(0.0, ge=0)
    strong_top_p: float = Field(1.0, gt=0, le=1)
    strong_top_k: int = Field(0, ge=0)
    seed: int = 0
    # The user turn after each thought. Imported records that do not name theirs get this one.
    refine_prompt: str = REFINE_PROMPT
    final_instruction: str = FINAL_ANSWER_INSTRUCTION
    filters: FilterConfig = Field(default_factory=FilterConfig)
    embedding_model: str = embeddings.DEFAULT
    progress: bool = True
    publish_every_s: float = 300.0  # s3 outputs: publish partial progress this often

    @model_validator(mode="after")
    def _generate_or_import(self):
        if self.thoughts_input is not None:
            given = [f"--{name}" for name in GENERATION_ONLY if getattr(self, name) is not None]
            if given:
                raise ValueError(
                    f"--thoughts_input imports thought data, nothing is generated: drop {', '.join(given)}"
                )
        else:
            missing = [f"--{n}" for n in ("queries", "weak_models", "strong_model") if not getattr(self, n)]
            if missing:
                raise ValueError(
                    f"{', '.join(missing)}: required to generate thoughts (or give --thoughts_input)"
                )
        return self

    @property
    def imports(self) -> bool:
        return self.thoughts_input is not None

    def to_argv(self) -> list[str]:
        """``ptr thoughts`` flags that give back this config (filter settings flat, as the command
        takes them)."""
        argv = config_argv(self.model_copy(update={"filters": FilterConfig(), "progress": True}))
        return argv + config_argv(self.filters) + ([] if self.progress else ["--no_progress"])
