"""The pipeline's configuration: five typed sections instead of dozens of flat parameters.

A config file (``pipelines/configs/*.yaml``) holds one mapping per section; the Kubeflow pipeline takes
each section as one ``dict`` parameter, and every step validates the sections it receives here, so a
typo in a config fails at submission (``load_config``) and again, with the same message, in the step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ptr.cluster.settings import Cluster
from ptr.data.filters import FilterConfig
from ptr.data.queries import QueriesConfig
from ptr.data.thoughts_config import ThoughtsConfig
from ptr.encode.encoder import EncodeConfig
from ptr.errors import PtrError, describe, invalid
from ptr.evaluate.config import EvalConfig, TaskConfig
from ptr.sections import Section
from ptr.tracking import gate
from ptr.train.config import TrainConfig


class Run(Section):
    """Where and how the whole run happens."""

    runtime: Literal["local", "kubernetes"] = "local"
    experiment: str = "ptr"
    model_name: str = "ptr"
    # What this run trains, as MLflow (its parent run) and `ptr compare`'s table name it: ift, ptr, …
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    seed: int = 0
    cluster: Cluster | None = None

    @model_validator(mode="after")
    def _cluster_when_needed(self):
        if self.runtime == "kubernetes" and self.cluster is None:
            raise ValueError("run.runtime is kubernetes but run.cluster is missing")
        return self

    @property
    def kube(self) -> Cluster:
        return self.cluster or Cluster()


# Stage config fields a section sets itself (so its options may not): the rest are options.
THOUGHTS_SET = ("queries", "output_path", "weak_models", "strong_model", "num_thoughts", "max_new_tokens")
THOUGHTS_SET += ("backend", "seed", "thoughts_input")
TRAIN_SET = ("model_path", "data_path", "output_path", "save_name", "max_epochs", "max_steps")
TRAIN_SET += ("loss_weights", "deepspeed_config_path", "use_lora", "seed")
# save_infer_results too: the report and the promotion read the metrics files
EVAL_SET = ("model_path", "model_type", "endpoint", "tasks", "task_configs", "data_dir", "output_path")
EVAL_SET += ("save_name", "seed", "rounds", "max_new_tokens", "save_infer_results", "batch_size")


def _options(name: str, options: dict, owned: Collection[str], build: Callable[[dict], BaseModel]) -> None:
    """Check a section's free-form options against the stage config they end up in: a key the section
    sets itself, an unknown key or a bad value fails when the config is loaded, naming the key."""
    taken = sorted(set(options) & set(owned))
    if taken:
        raise ValueError(f"{name}.{taken[0]}: set by this section itself, not through {name}")
    try:
        build(options)
    except ValidationError as err:
        raise ValueError(describe(err, name)) from None


class Data(Section):
    """Phase 1: queries, then weak→strong thoughts — or, with ``thoughts_input``, thought data made
    elsewhere (the paper's release, a thoughts JSONL, s3://, hf:): no queries are sourced and nothing
    is generated, so the settings for that go unused. ``thoughts_options`` are further
    :class:`~ptr.data.thoughts_config.ThoughtsConfig` fields, filter settings written flat as on the
    command line (``allow_truncated: true``)."""

    thoughts_input: str | None = None
    queries_input: str = "builtin"
    queries_limit: int | None = Field(None, gt=0)
    decontaminate_dir: str | None = None
    weak_models: list[str] = ["smollm2-135m-instruct"]
    strong_model: str = "smollm2-135m-instruct"
    num_thoughts: int = Field(2, ge=1)
    max_new_tokens: int = Field(128, gt=0)
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    thoughts_options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _check_options(self):
        _options(
            "thoughts_options",
            self.thoughts_options,
            THOUGHTS_SET,
            lambda options: self.thoughts_config(
                "queries.jsonl", "thoughts.jsonl", seed=0, options=options, expand=False
            ),
        )
        return self

    def thoughts_source(self) -> str:
        """``thoughts_input`` with environment variables expanded where the step runs
        (``$PTR_DATA_DIR/queries/…``: the data folder of the machine that reads it)."""
        source = os.path.expandvars(self.thoughts_input or "")
        if "$" in source:
            raise PtrError(
                f"data.thoughts_input {self.thoughts_input!r}: {source!r} still names a variable that is not set "
                "here (PTR_DATA_DIR: the benchmark data folder)"
            )
        return source

    def queries_config(self, output_path: str, *, seed: int, data_dir: str | None) -> QueriesConfig:
        """``data_dir``: the evaluation data queries are decontaminated against unless
        ``decontaminate_dir`` names other data."""
        return QueriesConfig(
            inputs=[self.queries_input],
            output_path=output_path,
            limit=self.queries_limit,
            seed=seed,
            decontaminate_dir=self.decontaminate_dir or data_dir,
        )

    def thoughts_config(
        self, queries: str, output_path: str, *, seed: int, options: dict | None = None, expand: bool = True
    ) -> ThoughtsConfig:
        """Generating: from ``queries`` with the section's models; importing: ``thoughts_input``
        (``expand``: its environment variables expanded, as where the step runs)."""
        options = dict(self.thoughts_options if options is None else options)
        flat = {k: options.pop(k) for k in list(options) if k in FilterConfig.model_fields}
        if flat:  # filter settings written flat, as on the command line
            options["filters"] = {**options.get("filters", {}), **flat}
        if self.thoughts_input:
            return ThoughtsConfig(
                thoughts_input=self.thoughts_source() if expand else self.thoughts_input,
                output_path=output_path,
                seed=seed,
                **options,
            )
        return ThoughtsConfig(
            queries=queries,
            output_path=output_path,
            weak_models=self.weak_models,
            strong_model=self.strong_model,
            num_thoughts=self.num_thoughts,
            max_new_tokens=self.max_new_tokens,
            backend=self.backend,
            seed=seed,
            **options,
        )


class Train(Section):
    """Phase 2: encode the kept thoughts, fine-tune the base model with the PTR objective.
    ``train_options`` are further :class:`~ptr.train.config.TrainConfig` fields
    (``save_optimizer: false``, ``beta: quadratic`` …).

    ``layout``: ``ptr`` lays each record out as query → thoughts → refine → … → final answer (the
    thought mask); ``qa`` as query → final answer, no thoughts in context (plain instruction tuning,
    the paper's IFT baseline), keeping the records the ``ptr`` layout keeps at this ``max_length`` so
    that both train on the same data. ``overflow``: what happens to a record longer than
    ``max_length`` (``shorten_thoughts``: its thoughts are cut, the final answer stays whole)."""

    base_model: str = "smollm2-135m-instruct"
    layout: Literal["ptr", "qa"] = "ptr"
    max_length: int = Field(1024, gt=0)
    overflow: Literal["drop", "truncate", "shorten_thoughts"] = "shorten_thoughts"
    merge_data: bool = True
    max_steps: int | None = Field(None, gt=0)
    max_epochs: int = Field(1, gt=0)
    loss_weights: tuple[float, float, float] | None = None  # None: the corpus's (the encoder records them)
    # A config shipped in ptr/train/configs/ (by name: paper or paper.json) or a DeepSpeed config inline.
    deepspeed_config: str | dict[str, Any] | None = None
    # Merged over that config key by key (nested mappings merged too): small changes without a copy.
    deepspeed_overrides: dict[str, Any] = {}
    use_lora: bool = False
    num_nodes: int = Field(1, ge=1)
    nproc_per_node: int = Field(1, ge=1)
    save_name: str = "ptr"
    train_options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _check(self):
        weights = self.loss_weights
        if weights is not None and (abs(sum(weights) - 1.0) > 1e-6 or min(weights) < 0):
            raise ValueError(f"loss_weights must be non-negative and sum to 1, got {weights}")
        _options(
            "train_options",
            self.train_options,
            TRAIN_SET,
            lambda options: self.train_config("shards", "output", seed=0, options=options),
        )
        return self

    def encode_config(self, input: str, output_path: str, *, qa_overhead: int = 0) -> EncodeConfig:
        """``qa_overhead``: for the ``qa`` layout, how many tokens longer a record's ``ptr`` layout is
        at the least (its thought shortened to one token, the refine turn): the ``qa`` corpus is
        encoded to ``max_length`` minus that, so it drops exactly the records the ``ptr`` one drops."""
        if self.layout == "qa":
            return EncodeConfig(
                tokenizer_path=self.base_model,
                encode_type="qa",
                input=input,
                output_path=output_path,
                corpus_name="qa",
                max_length=self.max_length - qa_overhead,
                merge_data=self.merge_data,
                overflow="drop" if self.overflow == "shorten_thoughts" else self.overflow,
            )
        return EncodeConfig(
            tokenizer_path=self.base_model,
            encode_type="ptr",
            input=input,
            output_path=output_path,
            corpus_name="ptr",
            max_length=self.max_length,
            merge_data=self.merge_data,
            overflow=self.overflow,
        )

    def train_config(
        self,
        data_path: str,
        output_path: str,
        *,
        seed: int,
        deepspeed_config_path: str | None = None,
        options: dict | None = None,
    ) -> TrainConfig:
        return TrainConfig(
            model_path=self.base_model,
            data_path=data_path,
            output_path=output_path,
            save_name=self.save_name,
            max_epochs=self.max_epochs,
            max_steps=self.max_steps,
            loss_weights=self.loss_weights,
            deepspeed_config_path=deepspeed_config_path,
            use_lora=self.use_lora,
            seed=seed,
            **(self.train_options if options is None else options),
        )


class Evaluate(Section):
    """Multi-round evaluation of the base model and of the candidate, task × round.
    ``eval_options`` are further :class:`~ptr.evaluate.config.EvalConfig` fields
    (``save_infer_texts: false``, ``temperature: 0.7`` …)."""

    tasks: list[str] = ["arith", "gsm8k", "mmlu"]
    rounds: int = Field(3, ge=1)
    limit: int = Field(5, ge=0)  # questions per task; 0 = all
    # Which questions a limit keeps: a seeded sample across the whole set (MMLU's first N would all
    # come from its first subject), or the first N.
    sample: Literal["random", "first"] = "random"
    num_fewshots: int | None = Field(None, ge=0)  # None: each task's own default
    max_new_tokens: int = Field(256, gt=0)
    # Questions decoded together: the base model's batches, and how many the candidate's local server
    # gathers into one call. Larger batches cost less per token on a CPU; rows that stopped leave.
    batch_size: int = Field(16, ge=1)
    data_dir: str | None = None
    # Tasks whose data is not found under data_dir are skipped (with a note) instead of failing.
    skip_missing_data: bool = True
    base_model_type: Literal["transformers", "vllm"] = "transformers"
    eval_options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _check_options(self):
        _options(
            "eval_options",
            self.eval_options,
            EVAL_SET,
            lambda options: self.eval_config(
                "model",
                "transformers",
                tasks=self.tasks,
                output_path="out",
                save_name="x",
                seed=0,
                options=options,
            ),
        )
        return self

    def eval_config(
        self,
        model_path: str,
        model_type: str,
        *,
        tasks: list[str],
        output_path: str,
        save_name: str,
        seed: int,
        endpoint: str | None = None,
        data_dir: str | None = None,
        options: dict | None = None,
    ) -> EvalConfig:
        """``tasks``: the ones whose data was found (see ``steps.serving.available_tasks``)."""
        per_task = TaskConfig(limit=self.limit, num_fewshots=self.num_fewshots, sample=self.sample)
        return EvalConfig(
            model_path=model_path,
            model_type=model_type,
            endpoint=endpoint,
            tasks=tasks,
            task_configs={task: per_task for task in tasks},
            data_dir=data_dir,
            output_path=output_path,
            save_name=save_name,
            seed=seed,
            rounds=self.rounds,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            save_infer_results=True,
            **{"save_infer_texts": True, **(self.eval_options if options is None else options)},
        )


class Promote(Section):
    """The gate: the candidate becomes champion only when it wins on ``primary`` — against the
    champion, or with no champion yet against the base model's evaluation of the same run."""

    primary: str = "arith.round3"
    guards: dict[str, float] = {}
    min_delta: float = 0.0

    @field_validator("primary")
    @classmethod
    def _metric_name(cls, value: str) -> str:
        try:
            gate.parse_metric(value)
        except PtrError as err:
            raise ValueError(str(err)) from None
        return value


class PipelineConfig(Section):
    run: Run = Run()
    data: Data = Data()
    train: Train = Train()
    evaluate: Evaluate = Evaluate()
    promote: Promote = Promote()

    @property
    def trained_round(self) -> int:
        """The round a trained model answers as it was trained to: after ``num_thoughts`` attempts,
        the final answer is turn ``num_thoughts + 1``."""
        return self.data.num_thoughts + 1

    @model_validator(mode="after")
    def _gate_scores_the_trained_round(self):
        t, k = self.data.num_thoughts, self.trained_round
        if self.evaluate.rounds < k:
            raise ValueError(
                f"evaluate.rounds is {self.evaluate.rounds}, but with data.num_thoughts = {t} the model "
                f"is trained to answer in round {k} (the query, {t} thought(s), then the final answer): "
                f"evaluate at least {k} rounds"
            )
        metric = gate.parse_metric(self.promote.primary)
        if metric.k != k:
            raise ValueError(
                f"promote.primary {self.promote.primary!r} scores round {metric.k}, but with "
                f"data.num_thoughts = {t} the model is trained to answer in round {k}: name round {k} "
                f"({metric.task}.{metric.kind}{k})"
            )
        return self

    @model_validator(mode="after")
    def _promotion_is_evaluated(self):
        """The gate's metrics must be ones evaluation produces; else a run trains for hours and then
        cannot promote."""
        for name in (self.promote.primary, *self.promote.guards):
            try:
                metric = gate.parse_metric(name)
            except PtrError as err:
                raise ValueError(f"promote: {err}") from None
            if metric.task not in self.evaluate.tasks:
                raise ValueError(
                    f"promote: {name} needs task {metric.task} in evaluate.tasks {self.evaluate.tasks}"
                )
            if metric.k > self.evaluate.rounds:
                raise ValueError(
                    f"promote: {name} needs round {metric.k}, evaluate.rounds is {self.evaluate.rounds}"
                )
        return self

    def arguments(self) -> dict[str, dict]:
        """The pipeline's parameters: one JSON-able dict per section. (Kubeflow parameters cannot hold
        null, so unset optional fields are left out; every optional field defaults to None.)"""
        return {
            name: getattr(self, name).model_dump(mode="json", exclude_none=True)
            for name in type(self).model_fields
        }


SECTIONS = {"run": Run, "data": Data, "train": Train, "evaluate": Evaluate, "promote": Promote}


def section(name: str, value: dict | BaseModel) -> Section:
    """Validate one section as a step receives it (a dict from the pipeline)."""
    if isinstance(value, BaseModel):
        return value
    try:
        return SECTIONS[name].model_validate(value or {})
    except ValidationError as err:
        raise invalid(err, f"config section {name!r}") from None


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> PipelineConfig:
    """A config file (or the embedded defaults when ``path`` is None), then ``overrides`` on top."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise PtrError(f"{path}: cannot read pipeline config: {err}") from None
        if not isinstance(raw, dict):
            raise PtrError(f"{path}: a pipeline config is a mapping of sections")
    for name, values in (overrides or {}).items():
        raw[name] = {**(raw.get(name) or {}), **values}
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise invalid(err, str(path or "pipeline config")) from None
