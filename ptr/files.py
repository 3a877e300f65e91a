"""Files published whole: a reader sees the old file or the complete new one, never a partial write.

Every stage writes its outputs through these (a killed stage leaves no half-written summary behind).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, suffix: str = "", *, mode: int = 0o644):
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.
    ``mode``: the published file's permissions (0o600 for secrets)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, mode)  # mkstemp makes it 0600; an ordinary output is readable by all
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text: str, *, mode: int = 0o644) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj, *, mode: int = 0o644) -> None:
    """Write ``obj`` as indented JSON, atomically (values JSON cannot hold are written as strings)."""
    with atomic_path(path, mode=mode) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")
