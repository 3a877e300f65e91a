"""ptr.storage against a real S3 store: SeaweedFS (`weed server -s3`) on free 127.0.0.1 ports.

One store for the module, started and stopped by pid through ptr.devstack; the test that kills
it mid-upload starts it again on the same ports and data folder.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from ptr import storage
from ptr.devstack import Stack, _wait_gone
from ptr.errors import PtrError


@pytest.fixture()
def s3_store(s3_store, monkeypatch, tmp_path):
    """The session's store, with few retries and small parts so failures show quickly."""
    monkeypatch.setenv("PTR_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("PTR_S3_CHUNK_MB", "5")
    monkeypatch.setenv("PTR_CACHE", str(tmp_path / "cache"))
    return s3_store


def _keys(prefix: str, bucket: str = "ptr") -> list[str]:
    s3 = storage.client()
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_publish_and_fetch_roundtrip(s3_store, tmp_path):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"a": 1}')
    (model / "sub" / "weights.bin").write_bytes(os.urandom(7 * 2**20))  # multipart at 5 MiB chunks
    sibling = tmp_path / "model2"
    sibling.mkdir()
    (sibling / "other.txt").write_text("not part of model")

    sent = []
    storage.publish(model, "s3://ptr/runs/r1/model", progress=sent.append)
    storage.publish(sibling, "s3://ptr/runs/r1/model2")
    assert sum(sent) == sum(len(v) for v in _tree(model).values())
    assert _keys("runs/r1/model/") == ["runs/r1/model/config.json", "runs/r1/model/sub/weights.bin"]
    assert _keys(storage.STAGING_PREFIX) == []  # staging copies are removed once committed

    # A prefix means that folder, not every key that starts with the same letters (model2).
    fetched = storage.fetch("s3://ptr/runs/r1/model", tmp_path / "back")
    assert _tree(fetched) == _tree(model)
    cached = Path(storage.download_model("s3://ptr/runs/r1/model"))
    assert _tree(cached) == _tree(model)

    single = tmp_path / "report.json"
    single.write_text('{"ok": true}')
    storage.publish(single, "s3://ptr/runs/r1/")
    assert storage.fetch("s3://ptr/runs/r1/report.json").read_text() == '{"ok": true}'
    with pytest.raises(PtrError, match="no such object or prefix"):
        storage.fetch("s3://ptr/runs/missing")
    with pytest.raises(PtrError, match="no such bucket"):
        storage.publish(single, "s3://no-such-bucket/x.json")
    with pytest.raises(PtrError, match="no such bucket"):
        storage.fetch("s3://no-such-bucket/x.json")


def test_bad_or_missing_credentials_are_named(s3_store, tmp_path, monkeypatch):
    f = tmp_path / "x.txt"
    f.write_text("x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(PtrError, match=r"rejected the credentials .*SignatureDoesNotMatch"):
        storage.publish(f, "s3://ptr/creds/x.txt")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(PtrError, match=r"rejected the credentials \(AWS_ACCESS_KEY_ID=nobo"):
        storage.fetch("s3://ptr/creds/x.txt")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(PtrError, match="no S3 credentials"):
        storage.fetch("s3://ptr/creds/x.txt")


def _kill_store(stack: Stack) -> None:
    """Crash the store: SIGKILL its process group, as a node failure would."""
    pid = stack.pid("weed")
    os.killpg(pid, signal.SIGKILL)
    assert _wait_gone(pid, 10)


def test_store_stopped_mid_upload_leaves_nothing(s3_store, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "a_small.json").write_text("{}")
    (folder / "b_large.bin").write_bytes(os.urandom(24 * 2**20))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(24 * 2**20))

    for local, uri in ((folder, "s3://ptr/crash/ckpt"), (big, "s3://ptr/crash/big.bin")):
        killed = []

        def crash_once(_n, killed=killed):
            if not killed:
                killed.append(True)
                _kill_store(s3_store)

        with pytest.raises(PtrError, match=r"unreachable or stopped responding.*is it running"):
            storage.publish(local, uri, progress=crash_once)
        assert killed
        s3_store.up(services=("weed",))  # same ports and data folder
        assert _keys("crash/") == [], f"a failed upload of {local.name} left objects under its key"

    # With the store down from the start, the error says so before any work.
    _kill_store(s3_store)
    try:
        with pytest.raises(PtrError, match="unreachable"):
            storage.fetch("s3://ptr/crash/big.bin")
    finally:
        s3_store.up(services=("weed",))
    storage.publish(big, "s3://ptr/crash/big.bin")  # and it works again once the store is back
    assert _keys("crash/") == ["crash/big.bin"]
