"""A build-once cache of directories (models, downloads) under ``$PTR_CACHE`` (default ``~/.cache/ptr``),
or another root (the pipeline's stage cache).

A directory is built under a temporary name while an exclusive file lock is held, then renamed into
place: other processes either wait for the lock or find the finished directory, never a half-written one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("PTR_CACHE") or "~/.cache/ptr").expanduser()


def cached_dir(key: str, build: Callable[[Path], None], *, root: Path | None = None) -> Path:
    """Return ``<root>/<key>`` (default root ``$PTR_CACHE``), calling ``build(tmp_dir)`` to create it
    the first time."""
    root = root or cache_root()
    final = root / key
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():  # another process finished it while we waited
            return final
        for stale in root.glob(f".{key}.tmp-*"):  # left by a builder that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
        try:
            build(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
