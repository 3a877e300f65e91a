"""The MLflow model registry: register an exported model, resolve ``models:/`` references, download.

A registered version holds the Hugging Face directory as an MLflow ``transformers`` model logged from
its checkpoint folder: the files are copied, the weights are never loaded, and the pip requirements
are given explicitly, so registering takes seconds whatever the model's size.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from importlib import metadata
from pathlib import Path

from ptr import storage
from ptr.cache import cached_dir
from ptr.errors import PtrError
from ptr.tracking import runs
from ptr.tracking.store import tracking_uri

CANDIDATE = "candidate"
CHAMPION = "champion"
MODEL_ARTIFACT = "model"  # the logged model's name; its Hugging Face files sit in model/ inside it
_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` → (name, alias, None); ``models:/name/3`` → (name, None, "3")."""
    m = _REF.match(str(ref))
    if not m:
        raise PtrError(f"model reference {ref!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return m["name"], m["alias"], m["version"]


def client():
    """A client for the registry (the tracking server, or the local store under ``.ptr/``)."""
    return runs.connect(tracking_uri(fallback=True))


def _not_found(err) -> bool:
    return getattr(err, "error_code", "") in (
        "RESOURCE_DOES_NOT_EXIST",
        "NOT_FOUND",
        "INVALID_PARAMETER_VALUE",
    )


def get_version(mlflow_client, name: str, *, alias: str | None = None, version: str | None = None):
    """The ModelVersion for an alias or a version number, or a PtrError saying what is missing."""
    from mlflow.exceptions import MlflowException

    where = mlflow_client.tracking_uri
    try:
        mlflow_client.get_registered_model(name)
    except MlflowException as err:
        if _not_found(err):
            raise PtrError(f"no registered model {name!r} in the registry at {where}") from None
        raise
    try:
        if alias:
            return mlflow_client.get_model_version_by_alias(name, alias)
        return mlflow_client.get_model_version(name, str(version))
    except MlflowException as err:
        if _not_found(err):
            what = f"alias {alias!r}" if alias else f"version {version}"
            raise PtrError(f"registered model {name!r} has no {what} (registry at {where})") from None
        raise


def resolve_version(ref: str):
    name, alias, version = parse_ref(ref)
    return get_version(client(), name, alias=alias, version=version)


def _hf_dir(root: Path) -> Path:
    for candidate in (root / MODEL_ARTIFACT, root):
        if (candidate / "config.json").exists():
            return candidate
    raise PtrError(f"the registered model's files at {root} hold no Hugging Face config.json")


def download_registered_model(ref: str) -> str:
    """``models:/name@alias`` or ``models:/name/version`` → a local Hugging Face directory.

    Versions are immutable, so each is downloaded once into the cache (keyed by the registry, the
    version and its source, so a recreated registry never serves a stale copy)."""
    import mlflow

    mlflow_client = client()
    name, alias, version = parse_ref(ref)
    mv = get_version(mlflow_client, name, alias=alias, version=version)
    identity = json.dumps([mlflow_client.tracking_uri, mv.name, mv.version, mv.source, mv.creation_timestamp])
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", mv.name)[:60]
    key = f"registry-{safe}-v{mv.version}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"

    def build(tmp: Path) -> None:
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{mv.name}/{mv.version}",
            dst_path=str(tmp),
            tracking_uri=mlflow_client.tracking_uri,
        )

    return str(_hf_dir(cached_dir(key, build)))


def pip_requirements() -> list[str]:
    """Exact pins of what loading the model needs, from this environment (never inferred by loading)."""
    reqs = []
    for dist in ("transformers", "torch", "tokenizers", "safetensors", "accelerate"):
        try:
            version = metadata.version(dist).split("+")[0]
        except metadata.PackageNotFoundError:
            continue
        reqs.append(f"{dist}=={version}")
    return reqs


def _check_model_dir(path: Path) -> dict:
    config_path = path / "config.json"
    if not config_path.exists():
        raise PtrError(f"--model_path {path}: not a Hugging Face model directory (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise PtrError(f"{config_path}: invalid JSON ({err})") from None
    if not config.get("architectures"):
        raise PtrError(f"{config_path}: architectures: missing (needed to record the model's type)")
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise PtrError(f"--model_path {path}: no tokenizer files (tokenizer.json or tokenizer_config.json)")
    return config


def _model_card(path: Path):
    from huggingface_hub import ModelCard

    readme = path / "README.md"
    # Given explicitly: otherwise MLflow asks the Hugging Face hub for a card.
    text = readme.read_text() if readme.exists() else ""
    if not text.startswith("---"):
        text = f"---\nlibrary_name: transformers\n---\n{text or f'# {path.name}'}\n"
    return ModelCard(text)


def register_model(
    model_path: str,
    name: str,
    *,
    ptr_run_id: str | None = None,
    alias: str = CANDIDATE,
    task: str = "text-generation",
) -> dict:
    """Log ``model_path`` (a local folder, ``s3://`` prefix or ``pvc://`` path) as a model, register a new version of
    ``name``, point ``alias`` at it and tag it with the pipeline's run id.

    Returns ``{name, version, uri, mlflow_run_id, ptr_run_id}``.
    """
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", name):
        raise PtrError(f"--name {name!r}: use letters, digits and . _ - (it becomes part of models:/ URIs)")
    source = str(model_path)
    local = Path(storage.resolve_pvc(source) if source.startswith("pvc://") else storage.fetch(source))
    if not local.is_dir():
        raise PtrError(f"--model_path {source}: not a directory")
    config = _check_model_dir(local)
    import mlflow
    import mlflow.transformers

    ptr_run_id = ptr_run_id or os.environ.get("PTR_RUN_ID") or None
    size = sum(f.stat().st_size for f in local.rglob("*") if f.is_file())
    params = {"model_path": source, "name": name, "model_type": config.get("model_type"), "model_bytes": size}
    with runs.open_run(
        "register", params, {"ptr.model_name": name}, tracking_uri(fallback=True), ptr_run_id
    ) as run:
        info = mlflow.transformers.log_model(
            transformers_model=str(local),
            name=MODEL_ARTIFACT,
            task=task,
            pip_requirements=pip_requirements(),
            model_card=_model_card(local),
        )
        mlflow_client = run.client
        with contextlib.redirect_stdout(io.StringIO()):  # MLflow's own "registered" chatter
            registered = mlflow.register_model(
                info.model_uri,
                name,
                tags={"ptr.model_path": source, **({"ptr.run_id": ptr_run_id} if ptr_run_id else {})},
            )
        version = str(registered.version)
        mlflow_client.set_model_version_tag(name, version, "ptr.mlflow_run_id", run.run_id)
        mlflow_client.set_registered_model_alias(name, alias, version)
        run.set_tags({"ptr.model_version": version})
    return {
        "name": name,
        "version": version,
        "uri": f"models:/{name}/{version}",
        "alias": alias,
        "mlflow_run_id": run.run_id,
        "ptr_run_id": ptr_run_id,
    }
