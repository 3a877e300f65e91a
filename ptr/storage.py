"""Object storage (``s3://``) and mounted volumes (``pvc://``) for every stage, through boto3.

Endpoint from ``AWS_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL``; credentials from the environment
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or any source boto3 knows). Requests are retried
(``PTR_S3_MAX_ATTEMPTS``, default 5). Failures become one-line :class:`PtrError` messages that say
whether the store is unreachable, the credentials were rejected, or the bucket or key is missing.

Uploads are all-or-nothing: a file is one S3 object (a multipart upload appears only when it
completes); a folder is staged under ``.ptr-staging/<id>/`` in the same bucket and copied under its
final prefix only once every file is up, so a failed upload leaves nothing under the final key.
Downloads land under a temporary name and are renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from ptr.cache import cache_root
from ptr.errors import PtrError

PVC_ROOT = os.environ.get("PTR_PVC_ROOT", "/mnt/pvc")
STAGING_PREFIX = ".ptr-staging"
# Error codes by which S3 says the credentials (not the request) are wrong.
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "InvalidClientTokenId",
    "403",
}


class NotFound(PtrError):
    """The bucket holds no object (or prefix) at the URI: a caller may treat that as "nothing yet"."""


def is_remote(uri) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise PtrError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise PtrError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key


def endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


def client():
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": int(os.environ.get("PTR_S3_MAX_ATTEMPTS", "5")), "mode": "standard"},
        connect_timeout=5,
        read_timeout=120,
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # A fresh session each time: boto3's default one keeps the first credentials it found.
    session = boto3.session.Session(region_name=region)
    return session.client("s3", endpoint_url=endpoint(), config=config)


def _where() -> str:
    return endpoint() or "the default AWS endpoint"


def explain(err: BaseException, uri: str, action: str) -> PtrError | None:
    """A user-facing error for a boto3/botocore failure, or None when ``err`` is not one."""
    from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(err, S3UploadFailedError | S3TransferFailedError) and err.__context__ is not None:
        inner = explain(err.__context__, uri, action)
        if inner is not None:
            return inner
    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return PtrError(
            f"cannot {action} {uri}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    if isinstance(err, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError):
        return PtrError(
            f"cannot {action} {uri}: the S3 store at {_where()} is unreachable or stopped responding "
            f"({type(err).__name__}); is it running? (`make stack-up` starts a local one)"
        )
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        message = err.response.get("Error", {}).get("Message", "") or str(err)
        if code in _CREDENTIAL_CODES:
            key_id = os.environ.get("AWS_ACCESS_KEY_ID", "")
            shown = f" (AWS_ACCESS_KEY_ID={key_id[:4]}…)" if key_id else ""
            return PtrError(
                f"cannot {action} {uri}: the S3 store at {_where()} rejected the credentials{shown}: {code}"
            )
        if code in ("NoSuchBucket", "404") and "bucket" in message.lower():
            return PtrError(f"cannot {action} {uri}: no such bucket at {_where()}")
        if code in ("NoSuchKey", "404"):
            return NotFound(f"cannot {action} {uri}: no such object")
        return PtrError(f"cannot {action} {uri}: S3 error {code}: {message}")
    if isinstance(err, S3UploadFailedError | S3TransferFailedError):
        return PtrError(f"cannot {action} {uri}: {err}")
    return None


@contextlib.contextmanager
def s3_errors(uri: str, action: str):
    """Turn boto3 failures inside the block into a PtrError naming the URI and the cause."""
    try:
        yield
    except PtrError:
        raise
    except Exception as err:
        explained = explain(err, uri, action)
        if explained is None:
            raise
        raise explained from err


def _list(s3, bucket: str, prefix: str) -> list[dict]:
    return [
        o
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]


def _object_exists(s3, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    if not key or key.endswith("/"):
        return False
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as err:
        if str(err.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def _download(s3, bucket: str, key: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        s3.download_file(bucket, key, tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fetch(uri, dest: Path | str | None = None) -> Path:
    """A local path for ``uri``: local paths as they are; an s3 object or prefix downloaded.

    ``s3://b/k`` is the object ``k`` when it exists, else every object under ``k/``. Without ``dest``
    the copy goes to the cache (``$PTR_CACHE/s3/…``), replaced whole on every fetch.
    """
    uri = str(uri)
    if not is_remote(uri):
        return Path(uri)
    bucket, key = split_s3(uri)
    s3 = client()
    with s3_errors(uri, "download"):
        if _object_exists(s3, bucket, key):
            target = Path(dest) if dest else _cache_path(uri) / (Path(key).name or "object")
            _download(s3, bucket, key, target)
            return target
        prefix = key.rstrip("/") + "/" if key else ""
        keys = [o["Key"] for o in _list(s3, bucket, prefix) if not o["Key"].endswith("/")]
        if not keys:
            raise NotFound(f"{uri}: no such object or prefix")
        if dest:
            dest = Path(dest)
            for k in keys:
                _download(s3, bucket, k, dest / k[len(prefix) :])
            return dest
        # Cache copies are built beside their final place and swapped in whole.
        final = _cache_path(uri) / (Path(key.rstrip("/")).name or bucket)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            for k in keys:
                _download(s3, bucket, k, tmp / k[len(prefix) :])
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final


def _cache_path(uri: str) -> Path:
    return cache_root() / "s3" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    chunk = int(os.environ.get("PTR_S3_CHUNK_MB", "8")) * 1024 * 1024
    return TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk)


def publish(local, uri, *, progress: Callable[[int], None] | None = None) -> None:
    """Upload a file or a folder to ``uri``, all or nothing (a no-op when ``uri`` is local).

    ``progress`` is called with the number of bytes sent since its last call.
    """
    local, uri = Path(local), str(uri)
    if not is_remote(uri):
        return
    if not local.exists():
        raise PtrError(f"cannot upload {local}: no such file or folder")
    bucket, key = split_s3(uri)
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    if not files:
        raise PtrError(f"cannot upload {local}: the folder holds no files")
    s3 = client()
    config = _transfer_config()
    with (
        _progress_bar(sum(p.stat().st_size for p in files), uri, progress) as sent,
        s3_errors(uri, "upload to"),
    ):
        if local.is_file():
            if not key or key.endswith("/"):
                key = key + local.name
            s3.upload_file(str(local), bucket, key, Config=config, Callback=sent)
            return
        prefix = key.rstrip("/") + "/" if key else ""
        staging = f"{STAGING_PREFIX}/{uuid.uuid4().hex}/"
        relative = [p.relative_to(local).as_posix() for p in files]
        copied: list[str] = []
        try:
            for path, rel in zip(files, relative, strict=True):
                s3.upload_file(str(path), bucket, staging + rel, Config=config, Callback=sent)
            for rel in relative:  # server-side copies: no data crosses the network again
                s3.copy({"Bucket": bucket, "Key": staging + rel}, bucket, prefix + rel, Config=config)
                copied.append(prefix + rel)
        except BaseException:
            _delete_quietly(s3, bucket, copied)
            raise
        finally:
            _delete_quietly(s3, bucket, [staging + rel for rel in relative])


@contextlib.contextmanager
def _progress_bar(total: int, uri: str, progress: Callable[[int], None] | None):
    """A byte counter on stderr (shown on terminals only) that also forwards to ``progress``."""
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"upload {uri}", disable=None) as bar:

        def sent(n: int) -> None:
            bar.update(n)
            if progress is not None:
                progress(n)

        yield sent


def _delete_quietly(s3, bucket: str, keys: list[str]) -> None:
    """Best effort: the store may be the thing that failed."""
    for start in range(0, len(keys), 1000):
        batch = keys[start : start + 1000]
        with contextlib.suppress(Exception):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})


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
