"""Where a corpus is built and how it is published: nothing half-written is ever visible.

The corpus is built in a hidden folder beside its final place (``.<corpus>.staging-<pid>``) and
renamed into place when complete, meta.json last; an earlier corpus of that name is swapped out whole.
For an ``s3://`` output the corpus is built in the cache, then uploaded shards first and meta.json
last (a reader that waits for meta.json sees every shard), and the local copy removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from ptr import storage
from ptr.files import write_json
from ptr.procs import pid_alive


class Staging:
    def __init__(self, output_path: str, corpus_name: str):
        self.output_path, self.corpus_name = output_path, corpus_name
        self.remote = storage.is_remote(output_path)
        if self.remote:
            storage.split_s3(output_path)  # a malformed URI fails before any work
            key = hashlib.sha256(output_path.encode()).hexdigest()[:16]
            self.parent = storage.cache_root() / "encode" / key
        else:
            self.parent = Path(output_path)
        self.final = self.parent / corpus_name
        self.dir = self.parent / f".{corpus_name}.staging-{os.getpid()}"

    @property
    def uri(self) -> str:
        """Where the published corpus is: the local folder, or its ``s3://`` prefix."""
        return f"{self.output_path.rstrip('/')}/{self.corpus_name}" if self.remote else str(self.final)

    def begin(self) -> Path:
        self.parent.mkdir(parents=True, exist_ok=True)
        self._clear_stale()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir()
        return self.dir

    def _clear_stale(self) -> None:
        """Staging folders of encoders that died (killed, out of memory) are removed."""
        for path in self.parent.glob(f".{self.corpus_name}.*-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)

    def complete(self, summary: dict, meta: dict) -> None:
        """Write summary.json and meta.json (last: it marks completion), then swap the corpus into place."""
        for name, obj in (("summary.json", summary), ("meta.json", meta)):
            write_json(self.dir / name, obj)
            os.chmod(self.dir / name, 0o644)  # readable by the trainer's user, like the shards
        old = self.parent / f".{self.corpus_name}.old-{os.getpid()}"
        if self.final.exists():
            os.rename(self.final, old)
        os.rename(self.dir, self.final)
        shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def upload(self, shards: list[str]) -> None:
        """For an ``s3://`` output: shards first, meta.json last."""
        for name in shards:
            storage.publish(self.final / name, f"{self.uri}/{name}")
        storage.publish(self.final / "summary.json", f"{self.uri}/summary.json")
        storage.publish(self.final / "meta.json", f"{self.uri}/meta.json")

    def drop_local_copy(self) -> None:
        """The store holds the corpus now: no second copy left in the cache."""
        if self.remote:
            shutil.rmtree(self.final, ignore_errors=True)
