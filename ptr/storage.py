"""Object storage (``s3://``) and mounted volumes (``pvc://``) for every stage, through boto3.

Endpoint from ``AWS_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL``; credentials from the environment.
(The tracking issue hardens this module: retries, all-or-nothing uploads, tests against SeaweedFS.)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ptr.errors import PtrError
from ptr.models.cache import cache_root

PVC_ROOT = os.environ.get("PTR_PVC_ROOT", "/mnt/pvc")


def is_remote(uri) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise PtrError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise PtrError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key


def client():
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint)


def fetch(uri, dest: Path | None = None) -> Path:
    """A local path for ``uri``: local paths as they are; s3 objects or prefixes downloaded."""
    uri = str(uri)
    if not is_remote(uri):
        return Path(uri)
    bucket, key = split_s3(uri)
    dest = dest or cache_root() / "s3" / hashlib.sha256(uri.encode()).hexdigest()[:16] / Path(key).name
    s3 = client()
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        for o in page.get("Contents", [])
    ]
    if not keys:
        raise PtrError(f"{uri}: no such object or prefix")
    if keys == [key]:
        dest.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(dest))
        return dest
    prefix = key.rstrip("/") + "/"
    for k in keys:
        target = dest / k[len(prefix) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, k, str(target))
    return dest


def publish(local, uri) -> None:
    """Upload a file or a folder to ``uri`` (a no-op copy target when ``uri`` is local)."""
    local, uri = Path(local), str(uri)
    if not is_remote(uri):
        return
    bucket, key = split_s3(uri)
    s3 = client()
    if local.is_file():
        s3.upload_file(str(local), bucket, key)
        return
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, f"{key.rstrip('/')}/{path.relative_to(local)}")


def download_model(ref: str) -> str:
    """``s3://bucket/prefix`` holding a Hugging Face directory → a local copy in the cache."""
    return str(fetch(ref))


def resolve_pvc(ref: str) -> str:
    """``pvc://claim/path`` → the path where KServe's storage initializer mounts it."""
    rest = ref[len("pvc://") :]
    path = Path(PVC_ROOT) / rest
    if not path.exists():
        raise PtrError(f"{ref}: {path} does not exist (PTR_PVC_ROOT={PVC_ROOT})")
    return str(path)
