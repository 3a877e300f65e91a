"""Where tracked runs go: the configured server, the local sqlite store, or nowhere (see
:mod:`ptr.tracking`)."""

from __future__ import annotations

import os
from pathlib import Path


def local_dir() -> Path:
    """The project's local state folder (``.ptr`` in the working directory, or ``PTR_LOCAL_DIR``)."""
    return Path(os.environ.get("PTR_LOCAL_DIR") or ".ptr").absolute()


def local_store_uri() -> str:
    return f"sqlite:///{local_dir() / 'mlflow.db'}"


def _mode() -> str:
    return os.environ.get("PTR_TRACKING", "").strip().lower()


def tracking_uri(*, fallback: bool = False) -> str | None:
    """The store runs go to, or None when stages should not track.

    ``fallback=True`` (the registry commands) always answers: the configured server, else the local
    sqlite store.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or None
    if fallback:
        return uri or local_store_uri()
    if _mode() in ("off", "0", "false", "no"):
        return None
    if uri:
        return uri
    return local_store_uri() if _mode() == "local" else None


def is_rank_zero() -> bool:
    """Training logs only from global rank 0 of a distributed job."""
    try:
        return int(os.environ.get("RANK") or 0) == 0
    except ValueError:
        return True


def enabled() -> bool:
    return tracking_uri() is not None and is_rank_zero()
