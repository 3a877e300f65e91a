"""The pipeline's stage cache: keyed by everything a stage's output depends on, published whole,
reused by linking, and off on a cluster or when asked."""

from __future__ import annotations

import json

import pytest

from ptr.pipeline import stage_cache
from ptr.pipeline.stage_cache import Stage, digest, stage_key


@pytest.fixture(autouse=True)
def local_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PTR_LOCAL_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PTR_STAGE_CACHE", "on")
    return tmp_path


def _folder(root, files: dict[str, str]):
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_key_follows_config_inputs_and_nothing_else(tmp_path):
    a = _folder(tmp_path / "a", {"x.txt": "1", "sub/y.txt": "2"})
    b = _folder(tmp_path / "b", {"x.txt": "1", "sub/y.txt": "2"})  # same content, other place
    assert digest([a]) == digest([b])
    key = stage_key("evaluate", {"rounds": 3}, {"model": digest([a])})
    assert key == stage_key("evaluate", {"rounds": 3}, {"model": digest([b])})
    assert key != stage_key("evaluate", {"rounds": 2}, {"model": digest([a])})
    assert key != stage_key("train", {"rounds": 3}, {"model": digest([a])})
    (b / "sub" / "y.txt").write_text("3")  # one byte of one input file
    assert key != stage_key("evaluate", {"rounds": 3}, {"model": digest([b])})
    (b / "sub" / "y.txt").rename(b / "sub" / "z.txt")  # a renamed file
    assert digest([b]) != digest([a])


def test_the_key_follows_the_stage_code(monkeypatch, tmp_path):
    code = _folder(tmp_path / "code", {"evaluate/run.py": "x = 1\n"})
    monkeypatch.setattr(stage_cache, "_PTR", code)
    monkeypatch.setitem(stage_cache.STAGE_CODE, "evaluate", ("evaluate",))
    before = stage_key("evaluate", {}, {})
    (code / "evaluate" / "run.py").write_text("x = 2\n")
    assert stage_key("evaluate", {}, {}) != before


def test_a_finished_stage_is_reused_by_link(tmp_path):
    out = _folder(tmp_path / "run1", {"model/weights.bin": "w" * 100, "checkpoints/step-1/opt": "o"})
    stage = Stage("train", "k1")
    assert stage.reuse(tmp_path / "nowhere") is None
    stage.keep(out, {"save_name": "ptr"}, skip=("checkpoints",))
    again = tmp_path / "run2"
    assert Stage("train", "k1").reuse(again) == {"save_name": "ptr"}
    assert (again / "model" / "weights.bin").read_text() == "w" * 100
    assert (again / "model" / "weights.bin").stat().st_ino == (out / "model" / "weights.bin").stat().st_ino
    assert not (again / "checkpoints").exists() and not (again / stage_cache.RECORD).exists()
    assert Stage("train", "k2").reuse(tmp_path / "run3") is None


def test_a_stage_stopped_while_stored_leaves_nothing(tmp_path, monkeypatch):
    out = _folder(tmp_path / "run1", {"a.txt": "a"})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage_cache, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        Stage("encode", "k").keep(out, {"n": 1})
    monkeypatch.undo()
    assert Stage("encode", "k").reuse(tmp_path / "run2") is None
    assert not list((stage_cache.root() / "encode").glob("k*"))  # no half-written entry either


def test_off_on_a_cluster_and_when_asked(monkeypatch, tmp_path):
    assert stage_cache.enabled("local") and not stage_cache.enabled("kubernetes")
    monkeypatch.setenv("PTR_STAGE_CACHE", "off")
    assert not stage_cache.enabled("local")
    inactive = Stage("train", "", active=False)
    inactive.keep(_folder(tmp_path / "x", {"a": "a"}), {})
    assert inactive.reuse(tmp_path / "y") is None and not stage_cache.root().exists()


def test_file_digests_are_remembered_across_processes(tmp_path):
    a = _folder(tmp_path / "a", {"x.txt": "1"})
    first = digest([a])
    memo = json.loads((stage_cache.root() / "digests.json").read_text())
    assert len(memo) == 1 and next(iter(memo.values()))
    assert digest([a]) == first
