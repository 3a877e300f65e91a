"""The data stages with s3:// inputs and outputs, against a real S3 store (SeaweedFS, started and
stopped by pid through ptr.devstack)."""

from __future__ import annotations

import json

from ptr import storage
from ptr.data.model_pool import ModelPool, parse_spec
from ptr.data.queries import QueriesConfig, run_queries
from ptr.data.thoughts import ThoughtsConfig, run_thoughts
from tests.support.torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)


def _remote_lines(uri: str, tmp_path) -> list[dict]:
    local = storage.fetch(uri, tmp_path / "fetched.jsonl")
    return [json.loads(line) for line in local.read_text().splitlines()]


def test_queries_and_thoughts_through_s3_with_resume_on_a_fresh_machine(
    s3_store, tmp_path, tiny_backend, monkeypatch
):
    monkeypatch.setenv("PTR_CACHE", str(tmp_path / "cache-1"))
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"question": f"Why is {c} a color?"}) + "\n" for c in "abcde"))
    storage.publish(src, "s3://ptr/data/in.jsonl")
    summary = run_queries(
        QueriesConfig(inputs=["s3://ptr/data/in.jsonl"], output_path="s3://ptr/data/q.jsonl")
    )
    assert summary["kept"] == 5
    assert len(_remote_lines("s3://ptr/data/q.jsonl", tmp_path)) == 5
    assert json.loads(storage.fetch("s3://ptr/data/q.summary.json").read_text())["kept"] == 5

    def thoughts(data_len):
        cfg = ThoughtsConfig(
            queries="s3://ptr/data/q.jsonl",
            output_path="s3://ptr/data/t.jsonl",
            weak_models=["tiny-random"],
            strong_model="tiny-random",
            max_new_tokens=4,
            data_len=data_len,
            progress=False,
            filters={"allow_truncated": True, "min_consistency": -1, "min_improvement": -1},
        )
        return run_thoughts(cfg, pool=ModelPool(preloaded={parse_spec("tiny-random"): tiny_backend}))

    assert thoughts(2)["run"]["generated"] == 2
    # Another machine: an empty cache, so the run resumes from what the first one published.
    monkeypatch.setenv("PTR_CACHE", str(tmp_path / "cache-2"))
    second = thoughts(None)
    assert second["run"]["already_written"] == 2 and second["run"]["generated"] == 3
    assert [r["id"] for r in _remote_lines("s3://ptr/data/t.jsonl", tmp_path)] == [
        r["id"] for r in _remote_lines("s3://ptr/data/q.jsonl", tmp_path)
    ]
    assert json.loads(storage.fetch("s3://ptr/data/t.summary.json").read_text())["records"] == 5


def test_thought_data_imports_from_s3_to_s3(s3_store, tmp_path, monkeypatch):
    monkeypatch.setenv("PTR_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "paper.json"
    src.write_text(
        json.dumps([{"question": f"Q{i}?", "output1": "draft", "output2": f"answer {i}"} for i in range(3)])
    )
    storage.publish(src, "s3://ptr/data/paper.json")
    cfg = ThoughtsConfig(
        thoughts_input="s3://ptr/data/paper.json", output_path="s3://ptr/data/imported.jsonl"
    )
    summary = run_thoughts(cfg)
    assert summary["kept"] == 3 and summary["run"]["source"] == "s3://ptr/data/paper.json"
    rows = _remote_lines("s3://ptr/data/imported.jsonl", tmp_path)
    assert [r["answer"]["text"] for r in rows] == ["answer 0", "answer 1", "answer 2"]
    assert json.loads(storage.fetch("s3://ptr/data/imported.summary.json").read_text())["records"] == 3
