"""Validate Kubernetes objects: core kinds with kubernetes-validate, custom resources against the CRDs
in ../shared/crds (strict: unknown fields are errors, as ``kubectl apply --validate=strict`` makes them),
and kustomizations rendered with ``kubectl kustomize``."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO.parent / "shared" / "crds"
K8S_VERSION = "1.32"  # the kubectl this machine ships; any supported version validates the same kinds


def crd_dir() -> Path:
    """../shared/crds beside the repository (or beside $PTR_DATA_DIR, for a worktree elsewhere)."""
    candidates = [CRDS]
    if os.environ.get("PTR_DATA_DIR"):
        candidates.append(Path(os.environ["PTR_DATA_DIR"]).parent / "crds")
    for path in candidates:
        if path.is_dir():
            return path
    pytest.skip(f"no CRDs to validate against: {CRDS} is absent (it sits beside the repository in CI)")


def _strict(schema):
    """Forbid properties a structural schema does not declare (the API server would prune or reject them)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    return schema


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → strict JSON schema, for every CRD in ../shared/crds."""
    found = {}
    for path in sorted(crd_dir().glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                found[(f"{group}/{version['name']}", kind)] = _strict(schema)
    return found


def validate_custom(obj: dict) -> None:
    import jsonschema

    key = (obj["apiVersion"], obj["kind"])
    schemas = crd_schemas()
    assert key in schemas, f"no CRD for {key} in {crd_dir()}"
    jsonschema.validate(obj, schemas[key])


def validate_core(obj: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def kustomize(path: Path) -> list[dict]:
    """Render a kustomization with the real kustomize (``kubectl kustomize`` or ``kustomize build``)."""
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(path)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(path)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed: cannot render kustomizations")
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]
