"""Kubernetes settings of a pipeline run (``run.cluster`` in a pipeline config): images, resources,
secrets, the shared storage. Plain validated data: importing them does not import the Kubernetes client.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ptr.images import DEFAULT_GPU_IMAGE, DEFAULT_IMAGE
from ptr.sections import Section


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
    # multi-user: the namespace is a KFP profile namespace and runs are submitted to it; standalone:
    # runs execute in KFP's own namespace (then namespace names that one, usually kubeflow).
    kfp_mode: Literal["multi-user", "standalone"] = "multi-user"
    image: str = DEFAULT_IMAGE
    gpu_image: str = DEFAULT_GPU_IMAGE
    # The steps' account (KFP's launcher needs, PyTorchJobs, InferenceServices: manifests/base/rbac.yaml)
    # and the account of training pods and model servers, which has no API rights.
    service_account: str = "ptr-pipeline"
    workload_service_account: str = "ptr-workload"
    storage: Storage = Storage(pvc="ptr-work")
    # Secrets whose keys every step and training pod receives as environment variables of the same
    # name (S3 credentials; add MLflow credentials here when the server asks for them).
    env_secrets: dict[str, list[str]] = {"ptr-s3-credentials": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]}
    # The services of manifests/ in the run's namespace: MLflow, and S3 for steps and training pods.
    env: dict[str, str] = {
        "MLFLOW_TRACKING_URI": "http://ptr-mlflow:5000",
        "AWS_ENDPOINT_URL": "http://ptr-s3:8333",
    }
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    train_resources: Resources = Resources(cpu="8", memory="64Gi", gpus=1)
    serve_resources: Resources = Resources(cpu="4", memory="32Gi", gpus=1)
    # Steps that generate text themselves (thoughts, the base model's evaluation) run on the GPU image.
    generate_resources: Resources = Resources(cpu="8", memory="64Gi", gpus=1)
    step_resources: Resources = Resources(cpu="2", memory="8Gi")
    # ptr: the custom predictor (ptr serve); huggingface: KServe's Hugging Face runtime with vLLM.
    serving_runtime: Literal["ptr", "huggingface"] = "ptr"
    # KServe's deployment mode (set on each InferenceService, so readiness is read the right way):
    # Serverless (Knative revisions) or RawDeployment (a Deployment per predictor).
    serving_mode: Literal["Serverless", "RawDeployment"] = "Serverless"
    production_service: str = "ptr-production"
    job_timeout_s: int = Field(6 * 3600, gt=0)
    ready_timeout_s: int = Field(1800, gt=0)
