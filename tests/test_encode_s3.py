"""`ptr encode` with its input and output in a real S3 store (SeaweedFS on 127.0.0.1, started and
stopped by pid through ptr.devstack)."""

from __future__ import annotations

import json

from ptr import storage
from ptr.encode import ShardDataset
from ptr.encode.encoder import config, encode


def test_encode_from_and_to_s3(s3_store, tmp_path):
    records = [
        {"id": f"q{i}", "query": f"Question {i}?", "thoughts": [{"round": 1, "model": "w", "text": f"Try {i}."}],
         "answer": {"model": "s", "text": f"Answer {i}."}, "kept": True}
        for i in range(5)
    ]  # fmt: skip
    local = tmp_path / "thoughts.jsonl"
    local.write_text("".join(json.dumps(r) + "\n" for r in records))
    storage.publish(local, "s3://ptr/runs/e1/thoughts.jsonl")

    summary = encode(
        config(
            tokenizer_path="tiny-random",
            input="s3://ptr/runs/e1/thoughts.jsonl",
            output_path="s3://ptr/runs/e1/shards",
            tokens_per_file=100,
        )
    )
    assert summary["path"] == "s3://ptr/runs/e1/shards/ptr" and summary["examples"] == 5
    fetched = storage.fetch("s3://ptr/runs/e1/shards/ptr", tmp_path / "back")
    ds = ShardDataset(fetched)
    assert len(ds) == 5 and ds.meta["config"]["input"] == "s3://ptr/runs/e1/thoughts.jsonl"
    assert sorted(p.name for p in fetched.iterdir() if p.is_file()) == ["meta.json", "summary.json"]
    assert len(list(fetched.glob("shard-*"))) == summary["shards"] > 1
    assert not list((storage.cache_root() / "encode").rglob("meta.json"))  # no local copy kept
