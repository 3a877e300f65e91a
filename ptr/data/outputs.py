"""Output locations shared by the data stages: local paths, or ``s3://`` URIs staged in a local file
that is published when the stage finishes (and, for long stages, as it goes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ptr import storage
from ptr.cache import cache_root
from ptr.errors import PtrError


def summary_uri(output: str) -> str:
    """``q.jsonl`` → ``q.summary.json`` (the stage's counts, beside its output)."""
    for suffix in (".jsonl", ".json"):
        if output.endswith(suffix):
            return output[: -len(suffix)] + ".summary.json"
    return output + ".summary.json"


def staging_path(output: str) -> Path:
    """Where a stage writes ``output`` locally: the path itself, or a cache file for an s3 URI.

    The cache file is keyed by the URI, so a rerun on the same machine finds its earlier work.
    """
    if not storage.is_remote(output):
        path = Path(output)
        if path.is_dir():
            raise PtrError(f"--output_path {output}: is a directory, expected a file path")
        return path
    storage.split_s3(output)  # validates the URI before any work
    key = hashlib.sha256(output.encode()).hexdigest()[:16]
    return cache_root() / "outputs" / key / Path(output).name


def publish(local: Path, output: str) -> None:
    """Upload ``local`` to ``output`` when it is remote (a no-op for local outputs)."""
    if storage.is_remote(output):
        storage.publish(local, output)
