"""``ThoughtsConfig``: one run of the thoughts stage, in a module of its own so that
:mod:`ptr.data.chains` (which builds the chains) and :mod:`ptr.data.thoughts` (which runs the stage)
both import it without importing each other."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ptr import embeddings
from ptr.argv import config_argv
from ptr.data.filters import FilterConfig
from ptr.data.model_pool import BackendName
from ptr.prompts import FINAL_ANSWER_INSTRUCTION, REFINE_PROMPT


class ThoughtsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: str  # JSONL of {id, query} (the queries stage's output), local or s3://
    output_path: str
    weak_models: list[str] = Field(min_length=1)  # weakest first; specs as in ptr.data.model_pool
    strong_model: str
    judge_model: str | None = None  # None: the heuristic improvement score
    num_thoughts: int = Field(2, ge=1)
    data_len: int | None = Field(None, ge=1)  # the first N queries
    backend: BackendName = "transformers"  # for specs without a backend prefix
    endpoint: str | None = None
    dtype: str = "auto"
    batch_size: int = Field(16, ge=1)  # queries per batch (and per append)
    max_new_tokens: int = Field(256, ge=1)
    strong_max_new_tokens: int | None = Field(None, ge=1)  # default: max_new_tokens
    temperature: float = Field(0.7, ge=0)  # weak models
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    strong_temperature: float = Field(0.0, ge=0)
    strong_top_p: float = Field(1.0, gt=0, le=1)
    strong_top_k: int = Field(0, ge=0)
    seed: int = 0
    refine_prompt: str = REFINE_PROMPT
    final_instruction: str = FINAL_ANSWER_INSTRUCTION
    filters: FilterConfig = Field(default_factory=FilterConfig)
    embedding_model: str = embeddings.DEFAULT
    progress: bool = True
    publish_every_s: float = 300.0  # s3 outputs: publish partial progress this often

    def to_argv(self) -> list[str]:
        """``ptr thoughts`` flags that give back this config (filter settings flat, as the command
        takes them)."""
        argv = config_argv(self.model_copy(update={"filters": FilterConfig(), "progress": True}))
        return argv + config_argv(self.filters) + ([] if self.progress else ["--no_progress"])
