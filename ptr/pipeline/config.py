"""The pipeline's configuration: five typed sections instead of dozens of flat parameters.

A config file (``pipelines/configs/*.yaml``) holds one mapping per section; the Kubeflow pipeline takes
each section as one ``dict`` parameter, and every step validates the sections it receives here, so a
typo in a config fails at submission (``load_config``) and again, with the same message, in the step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ptr.errors import PtrError

DEFAULT_IMAGE = "ptr:0.1.0"
DEFAULT_GPU_IMAGE = "ptr-gpu:0.1.0"


def _whole_numbers(value):
    """Integral floats back to ints, all the way down: a pipeline hands dict parameters over as JSON
    structs whose numbers are all floats, and DeepSpeed refuses ``warmup_num_steps: 2.0``."""
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _free_form_ints(cls, data):
        # only free-form mappings (options, DeepSpeed settings): typed fields convert themselves
        if isinstance(data, dict):
            return {k: _whole_numbers(v) if isinstance(v, dict) else v for k, v in data.items()}
        return data


class Resources(Section):
    """Requests (= limits) of one container; ``gpus`` are whole devices of ``gpu_resource``."""

    cpu: str = "2"
    memory: str = "8Gi"
    gpus: int = Field(0, ge=0)
    gpu_resource: str = "nvidia.com/gpu"

    def limits(self) -> dict[str, str]:
        limits = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus:
            limits[self.gpu_resource] = str(self.gpus)
        return limits


class Storage(Section):
    """Where cluster steps and training pods share files: a ReadWriteMany PVC or an S3 prefix."""

    pvc: str | None = None
    mount_path: str = "/mnt/ptr"
    s3_uri: str | None = None
    s3_secret: str = "ptr-s3-credentials"

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.pvc is None) == (self.s3_uri is None):
            raise ValueError("storage needs exactly one of pvc or s3_uri")
        if self.s3_uri is not None and not self.s3_uri.startswith("s3://"):
            raise ValueError(f"storage.s3_uri must start with s3://, got {self.s3_uri!r}")
        return self

    def run_root(self, run_id: str) -> str:
        """The folder (on the PVC mount) or prefix (in S3) that holds one pipeline run's files."""
        if self.pvc:
            return f"{self.mount_path.rstrip('/')}/runs/{run_id}"
        return f"{self.s3_uri.rstrip('/')}/runs/{run_id}"


class Toleration(Section):
    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class Cluster(Section):
    """Kubernetes settings: only read when ``run.runtime`` is ``kubernetes``."""

    namespace: str = "ptr"
    image: str = DEFAULT_IMAGE
    gpu_image: str = DEFAULT_GPU_IMAGE
    service_account: str = "ptr-pipeline"
    storage: Storage = Storage(pvc="ptr-work")
    # Secrets whose keys every step and training pod receives as environment variables of the same
    # name (S3 credentials; add MLflow credentials here when the server asks for them).
    env_secrets: dict[str, list[str]] = {"ptr-s3-credentials": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]}
    env: dict[str, str] = {"MLFLOW_TRACKING_URI": "http://mlflow.ptr.svc.cluster.local:5000"}
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    train_resources: Resources = Resources(cpu="8", memory="64Gi", gpus=1)
    serve_resources: Resources = Resources(cpu="4", memory="32Gi", gpus=1)
    # Steps that generate text themselves (thoughts, the base model's evaluation) run on the GPU image.
    generate_resources: Resources = Resources(cpu="8", memory="64Gi", gpus=1)
    step_resources: Resources = Resources(cpu="2", memory="8Gi")
    # ptr: the custom predictor (ptr serve); huggingface: KServe's Hugging Face runtime with vLLM.
    serving_runtime: Literal["ptr", "huggingface"] = "ptr"
    production_service: str = "ptr-production"
    job_timeout_s: int = Field(6 * 3600, gt=0)
    ready_timeout_s: int = Field(1800, gt=0)


class Run(Section):
    """Where and how the whole run happens."""

    runtime: Literal["local", "kubernetes"] = "local"
    experiment: str = "ptr"
    model_name: str = "ptr"
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


class Data(Section):
    """Phase 1: queries, then weak→strong thoughts (options passed to the stages as they are) — or,
    with ``thoughts_input``, thought data made elsewhere (the paper's release, a thoughts JSONL, s3://,
    hf:): no queries are sourced and nothing is generated, so the settings for that go unused."""

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


class Train(Section):
    """Phase 2: encode the kept thoughts, fine-tune the base model with the PTR objective."""

    base_model: str = "smollm2-135m-instruct"
    max_length: int = Field(1024, gt=0)
    merge_data: bool = True
    max_steps: int | None = Field(None, gt=0)
    max_epochs: int = Field(1, gt=0)
    loss_weights: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # A config shipped in ptr/train/configs/ (by file name) or a DeepSpeed config inline.
    deepspeed_config: str | dict[str, Any] | None = None
    # Merged over that config key by key (nested mappings merged too): small changes without a copy.
    deepspeed_overrides: dict[str, Any] = {}
    use_lora: bool = False
    num_nodes: int = Field(1, ge=1)
    nproc_per_node: int = Field(1, ge=1)
    save_name: str = "ptr"
    train_options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _weights(self):
        if abs(sum(self.loss_weights) - 1.0) > 1e-6 or min(self.loss_weights) < 0:
            raise ValueError(f"loss_weights must be non-negative and sum to 1, got {self.loss_weights}")
        return self


class Evaluate(Section):
    """Multi-round evaluation of the base model and of the candidate, task × round."""

    tasks: list[str] = ["arith", "gsm8k", "mmlu"]
    rounds: int = Field(2, ge=1)
    limit: int = Field(5, ge=0)  # questions per task; 0 = all
    num_fewshots: int | None = Field(None, ge=0)  # None: each task's own default
    max_new_tokens: int = Field(256, gt=0)
    data_dir: str | None = None
    # Tasks whose data is not found under data_dir are skipped (with a note) instead of failing.
    skip_missing_data: bool = True
    base_model_type: Literal["transformers", "vllm"] = "transformers"
    eval_options: dict[str, Any] = {}


class Promote(Section):
    """The gate: the candidate becomes champion only when it wins on ``primary``."""

    primary: str = "arith.round2"
    guards: dict[str, float] = {}
    min_delta: float = 0.0


class PipelineConfig(Section):
    run: Run = Run()
    data: Data = Data()
    train: Train = Train()
    evaluate: Evaluate = Evaluate()
    promote: Promote = Promote()

    def arguments(self) -> dict[str, dict]:
        """The pipeline's parameters: one JSON-able dict per section. (Kubeflow parameters cannot hold
        null, so unset optional fields are left out; every optional field defaults to None.)"""
        return {
            name: getattr(self, name).model_dump(mode="json", exclude_none=True)
            for name in type(self).model_fields
        }


SECTIONS = {"run": Run, "data": Data, "train": Train, "evaluate": Evaluate, "promote": Promote}


def _explain(err: ValidationError, where: str) -> str:
    lines = []
    for problem in err.errors():
        field = ".".join(str(p) for p in problem["loc"])
        lines.append(f"{where}: {field}: {problem['msg']}")
    return "\n".join(lines)


def section(name: str, value: dict | BaseModel) -> Section:
    """Validate one section as a step receives it (a dict from the pipeline)."""
    if isinstance(value, BaseModel):
        return value
    try:
        return SECTIONS[name].model_validate(value or {})
    except ValidationError as err:
        raise PtrError(_explain(err, f"config section {name!r}")) from None


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
        raise PtrError(_explain(err, str(path or "pipeline config"))) from None
