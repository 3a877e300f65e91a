"""KServe InferenceService manifests for the refining model, rendered from parameters.

Two runtimes:

* ``runtime="ptr"`` — a custom predictor: our image running ``ptr serve`` (V1, V2, OpenAI routes; the
  transformers backend on CPU, vLLM when ``gpus > 0``). KServe's storage initializer downloads
  ``model_uri`` (``STORAGE_URI``) into ``/mnt/models`` before the container starts.
* ``runtime="huggingface"`` — KServe's Hugging Face runtime (``modelFormat: huggingface``), vLLM backend
  on GPU, serving ``/openai/v1/chat/completions`` (``ptr eval --model_type openai``).

:func:`validate` checks a manifest against the InferenceService CRD's schema and, like ``kubectl
--validate=strict``, also rejects fields the schema does not know. No kserve or Kubernetes client import.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import jsonschema
import yaml

from ptr import images

API_VERSION = "serving.kserve.io/v1beta1"
RUNTIMES = ("ptr", "huggingface")
URI_SCHEMES = ("s3://", "pvc://")
MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts the model
PORT = 8080
DEFAULT_IMAGE = os.environ.get("PTR_IMAGE", images.DEFAULT_IMAGE)
DEFAULT_GPU_IMAGE = os.environ.get("PTR_GPU_IMAGE", images.DEFAULT_GPU_IMAGE)
CRD_FILE = "serving.kserve.io_inferenceservices.yaml"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _resources(resources: dict | None, gpus: int) -> dict:
    """``{"cpu": "2", "memory": "8Gi"}`` (requests = limits) or ``{"requests": …, "limits": …}``."""
    resources = dict(resources or {})
    if set(resources) <= {"requests", "limits"} and resources:
        requests, limits = dict(resources.get("requests") or {}), dict(resources.get("limits") or {})
    else:
        requests, limits = dict(resources), dict(resources)
    if gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)
    out = {}
    if requests:
        out["requests"] = {k: str(v) for k, v in requests.items()}
    if limits:
        out["limits"] = {k: str(v) for k, v in limits.items()}
    return out


def _check(name: str, model_uri: str, runtime: str, gpus: int, labels: dict | None, namespace: str | None):
    if not isinstance(name, str) or len(name) > 63 or not _DNS1035.match(name):
        raise ValueError(f"name {name!r}: must be a DNS-1035 label (lowercase letters, digits, '-'; ≤ 63)")
    if namespace is not None and (len(namespace) > 63 or not _DNS1035.match(namespace)):
        raise ValueError(f"namespace {namespace!r}: must be a DNS-1035 label")
    if not isinstance(model_uri, str) or not model_uri.startswith(URI_SCHEMES) or len(model_uri) <= 6:
        raise ValueError(
            f"model_uri {model_uri!r}: expected s3://bucket/prefix or pvc://claim/path "
            "(resolve models:/name@alias to its artifact URI first)"
        )
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
        raise ValueError(f"gpus {gpus!r}: expected a whole number >= 0")
    for key, value in (labels or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            raise ValueError(f"labels[{key!r}] = {value!r}: not a valid label value")


def inference_service(
    name: str,
    model_uri: str,
    *,
    runtime: str = "ptr",
    model_name: str = "ptr",
    image: str | None = None,
    resources: dict | None = None,
    gpus: int = 0,
    service_account: str | None = None,
    labels: dict | None = None,
    annotations: dict | None = None,
    namespace: str | None = None,
    min_replicas: int = 1,
    max_replicas: int | None = None,
    max_batch_size: int = 16,
    max_wait_ms: float = 10.0,
    max_rounds: int = 8,
    extra_args: list[str] | None = None,
) -> dict:
    """An InferenceService (a plain dict, ready for ``yaml.safe_dump`` or the Kubernetes client).

    ``service_account`` carries the S3 credentials the storage initializer uses (KServe's convention);
    ``gpus`` sets ``nvidia.com/gpu`` and, for ``runtime="ptr"``, switches ``ptr serve`` to vLLM.
    """
    _check(name, model_uri, runtime, gpus, labels, namespace)
    metadata: dict = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {
        "app.kubernetes.io/name": "ptr",
        "app.kubernetes.io/component": "serving",
        **(labels or {}),
    }
    if annotations:
        metadata["annotations"] = dict(annotations)

    predictor: dict = {"minReplicas": int(min_replicas)}
    if max_replicas is not None:
        predictor["maxReplicas"] = int(max_replicas)
    if service_account:
        predictor["serviceAccountName"] = service_account
    res = _resources(resources, gpus)

    if runtime == "ptr":
        args = [
            "serve",
            "--model_path", MODEL_DIR,
            "--model_name", model_name,
            "--host", "0.0.0.0",
            "--port", str(PORT),
            "--backend", "vllm" if gpus else "transformers",
            "--max_batch_size", str(max_batch_size),
            "--max_wait_ms", str(max_wait_ms),
            "--max_rounds", str(max_rounds),
            *(extra_args or []),
        ]  # fmt: skip
        container = {
            "name": "kserve-container",  # the name KServe's storage initializer looks for
            "image": image or (DEFAULT_GPU_IMAGE if gpus else DEFAULT_IMAGE),
            "command": ["ptr"],
            "args": args,
            "env": [
                {"name": "STORAGE_URI", "value": model_uri},
                {"name": "HF_HUB_OFFLINE", "value": "1"},
                {"name": "PTR_CACHE", "value": "/tmp/ptr-cache"},
            ],
            "ports": [{"containerPort": PORT, "protocol": "TCP"}],
            "readinessProbe": {
                "httpGet": {"path": "/v2/health/ready", "port": PORT},
                "periodSeconds": 10,
                "failureThreshold": 30,
            },
        }
        if res:
            container["resources"] = res
        predictor["containers"] = [container]
    else:
        model = {
            "modelFormat": {"name": "huggingface"},
            "args": [
                f"--model_name={model_name}",
                f"--model_dir={MODEL_DIR}",
                f"--backend={'vllm' if gpus else 'huggingface'}",
                *(extra_args or []),
            ],
            "storageUri": model_uri,
        }
        if image:
            model["image"] = image
        if res:
            model["resources"] = res
        predictor["model"] = model
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {"predictor": predictor},
    }


def to_yaml(manifest: dict) -> str:
    return yaml.safe_dump(manifest, sort_keys=False)


# -- validation against the CRD ----------------------------------------------------------------------


def find_crd(filename: str = CRD_FILE) -> Path | None:
    """The CRD file: ``$PTR_CRD_DIR/<file>``, else ``shared/crds/<file>`` in the repository or beside
    it (``../shared/crds``; a worktree one level deeper finds ``../../shared/crds``)."""
    candidates = []
    if os.environ.get("PTR_CRD_DIR"):
        candidates.append(Path(os.environ["PTR_CRD_DIR"]) / filename)
    repo = Path(__file__).resolve().parents[2]
    candidates += [d / "shared" / "crds" / filename for d in (repo, repo.parent, repo.parent.parent)]
    return next((p for p in candidates if p.is_file()), None)


@functools.lru_cache(maxsize=4)
def crd_schema(path: Path, version: str = "v1beta1") -> dict:
    """The CRD's OpenAPI schema for ``version`` (parsed once per process: the file is ~2 MB)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(Path(path).read_text(), Loader=loader)
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise ValueError(f"{path}: no version {version}")


def _unknown_fields(obj, schema: dict, where: str) -> list[str]:
    if not isinstance(schema, dict):
        return []
    problems = []
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return []
        for key, value in obj.items():
            if props is not None and key in props:
                problems += _unknown_fields(value, props[key], f"{where}.{key}")
            elif isinstance(extra, dict):
                problems += _unknown_fields(value, extra, f"{where}.{key}")
            elif props is not None or extra is False:
                problems.append(f"{where}.{key}: unknown field")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            problems += _unknown_fields(item, schema["items"], f"{where}[{i}]")
    return problems


def validate(manifest: dict, crd_path: Path | str | None = None) -> list[str]:
    """Every problem with ``manifest`` under the CRD (empty when it is valid)."""
    path = Path(crd_path) if crd_path else find_crd()
    if path is None:
        raise FileNotFoundError(f"{CRD_FILE} not found (set PTR_CRD_DIR or put it in ../shared/crds)")
    schema = crd_schema(path)
    problems = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in jsonschema.Draft4Validator(schema).iter_errors(manifest)
    ]
    problems += _unknown_fields(manifest, schema, "")
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != "InferenceService":
        problems.append(f"apiVersion/kind: expected {API_VERSION} InferenceService")
    name = (manifest.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not _DNS1035.match(name):
        problems.append(f"metadata.name: {name!r} is not a DNS-1035 label")
    return problems
