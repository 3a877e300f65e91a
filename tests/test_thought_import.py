"""Bring your own thought data: ``ptr thoughts --thoughts_input`` reads the paper's released sample or a
thoughts JSONL, applies the text filters, and writes thoughts.jsonl and its summary — no model loaded."""

from __future__ import annotations

import json

import pytest

from ptr.data import thoughts
from ptr.data.thoughts import ThoughtsConfig, run_thoughts
from ptr.prompts import REFINE_PROMPT
from tests.conftest import run_ptr

PAPER_SAMPLE = "queries/PTR_thought_dataset_sampled.json"


def _import(tmp_path, source, **kw) -> tuple[dict, list[dict]]:
    out = tmp_path / "t.jsonl"
    cfg = ThoughtsConfig(thoughts_input=str(source), output_path=str(out), progress=False, **kw)
    summary = run_thoughts(cfg)
    return summary, [json.loads(line) for line in out.read_text().splitlines()]


def test_the_papers_released_sample_imports(tmp_path, data_dir):
    source = data_dir / PAPER_SAMPLE
    raw = json.loads(source.read_text())
    summary, rows = _import(tmp_path, source)
    assert summary["records"] == len(rows) == len(raw) == 320
    assert summary["run"]["read"] == 320 and summary["run"]["source"] == str(source)
    assert summary["kept"] == sum(r["kept"] for r in rows)
    assert summary["kept"] + sum(summary["dropped"].values()) == 320
    assert summary["kept"] >= 300, summary["dropped"]  # the release is already filtered
    for r, x in zip(rows, raw, strict=True):
        assert r["query"] == x["question"].strip() and r["refine_prompt"] == REFINE_PROMPT
        # output1 is the attempt, the LAST output the final answer
        assert [t["round"] for t in r["thoughts"]] == [1] and r["thoughts"][0]["text"] == x["output1"].strip()
        assert r["answer"]["text"] == x["output2"].strip()
        assert r["thoughts"][0]["finish_reason"] is None and r["answer"]["model"] is None
    empty = [r for r in rows if r["reason"] == "empty"]  # an empty question, an empty output
    assert len(empty) == 2
    assert all(not (r["query"] and r["thoughts"][0]["text"] and r["answer"]["text"]) for r in empty)
    assert len({r["id"] for r in rows}) == 320


def test_paper_records_with_more_outputs_and_the_text_filters(tmp_path):
    source = tmp_path / "paper.json"
    records = [
        {"question": "Q1?", "output1": "a", "output2": "b", "output3": "the answer"},
        {"question": "Q2?", "output1": "same", "output2": "same"},  # the answer repeats the thought
        {"question": "Q3?", "output1": "draft", "output2": "As Attempt 1 said, 42."},
        {"question": "Q4?", "output1": "draft", "output2": "42<|im_end|><|im_start|>user"},
    ]
    source.write_text(json.dumps(records))
    records.append({"question": "Q1?", "output1": "another chain", "output2": "of the same query"})
    source.write_text(json.dumps(records))
    summary, rows = _import(tmp_path, source)
    assert rows[4]["id"] == rows[0]["id"] + "-2"
    rows = rows[:4]
    assert [len(r["thoughts"]) for r in rows] == [2, 1, 1, 1]
    assert rows[0]["answer"]["text"] == "the answer" and rows[0]["kept"]
    assert [r["reason"] for r in rows] == [None, "repeated", "meta_answer", None]
    assert rows[3]["answer"]["text"] == "42"  # control tokens cut as from generated text
    assert summary["dropped"] == {"repeated": 1, "meta_answer": 1} and summary["kept"] == 3
    summary, _ = _import(tmp_path / "b", source, data_len=2)
    assert summary["records"] == 2


def test_a_thoughts_jsonl_imports_with_its_metadata(tmp_path):
    source = tmp_path / "made-elsewhere.jsonl"
    lines = [
        {
            "id": "x1",
            "query": "Q?",
            "refine_prompt": "Improve it.",
            "thoughts": [{"round": 1, "model": "w", "text": "t1", "finish_reason": "length", "tokens": 9}],
            "answer": {"model": "s", "text": "full answer", "finish_reason": "stop", "tokens": 3},
            "kept": True,
        },
        {"id": "x2", "query": "Q2?", "thoughts": ["t"], "answer": {"text": "cut", "finish_reason": "length"}},
        {"id": "x3", "query": "Q3?", "thoughts": [], "answer": None, "kept": False, "reason": "too_long"},
    ]
    source.write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary, rows = _import(tmp_path, source, filters={"allow_truncated": False})
    assert [r["reason"] for r in rows] == ["truncated", "answer_truncated", "too_long"]
    assert rows[0]["refine_prompt"] == "Improve it." and rows[1]["refine_prompt"] == REFINE_PROMPT
    assert rows[0]["thoughts"][0] == {
        "round": 1,
        "model": "w",
        "text": "t1",
        "finish_reason": "length",
        "tokens": 9,
    }
    assert summary["tokens"] == {"w": 9, "s": 3}
    summary, rows = _import(tmp_path / "b", source, filters={"allow_truncated": True})
    assert [r["reason"] for r in rows] == [None, "answer_truncated", "too_long"]  # cut thoughts may stay


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            '[{"question": "Q", "output1": "only one"}]',
            "[0]: output2: needs output1 (the thought) and output2",
        ),
        ('[{"question": "Q", "output1": "a", "output2": 7}]', "[0]: output2: expected a string"),
        ('[{"output1": "a", "output2": "b"}]', "[0]: needs a query: one of the fields query, question"),
        (  # ids the input gives must be unique (chains of one query without ids get -2, -3 …)
            '[{"id": 1, "question": "Q", "output1": "a", "output2": "b"}, '
            '{"id": 1, "question": "R", "output1": "c", "output2": "d"}]',
            "[1]: id: duplicate id '1' (first at ",
        ),
    ],
)
def test_bad_paper_records_exit_2_naming_the_item_and_nothing_written(tmp_path, body, expected):
    source = tmp_path / "bad.json"
    source.write_text(body)
    out = tmp_path / "t.jsonl"
    proc = run_ptr("thoughts", "--thoughts_input", source, "--output_path", out)
    assert proc.returncode == 2, proc.stderr
    assert f"{source}{expected}" in proc.stderr
    assert not out.exists() and not (tmp_path / "t.summary.json").exists()


def test_bad_thoughts_lines_name_file_line_and_field(tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text(
        json.dumps({"query": "Q", "thoughts": ["t"], "answer": "a"})
        + "\n"
        + json.dumps({"query": "Q2", "thoughts": [{"txt": "t"}], "answer": "a"})
        + "\n"
    )
    with pytest.raises(
        Exception, match=r"bad.jsonl:2: thoughts\[0\]: expected a string or an object with 'text'"
    ):
        _import(tmp_path, source)
    assert not (tmp_path / "t.jsonl").exists()


def test_import_or_generate_not_both(tmp_path, capsys):
    argv = ["--thoughts_input", "x.json", "--queries", "q.jsonl", "--output_path", str(tmp_path / "t.jsonl")]
    assert thoughts.main(argv) == 2
    assert (
        "--thoughts_input imports thought data, nothing is generated: drop --queries"
        in capsys.readouterr().err
    )
    assert thoughts.main(["--output_path", str(tmp_path / "t.jsonl"), "--queries", "q.jsonl"]) == 2
    assert "--weak_models, --strong_model: required to generate thoughts" in capsys.readouterr().err


def test_cli_import_prints_what_was_read(tmp_path, capsys):
    source = tmp_path / "p.json"
    source.write_text(json.dumps([{"question": "Q?", "output1": "a", "output2": "b"}]))
    out = tmp_path / "t.jsonl"
    assert thoughts.main(["--thoughts_input", str(source), "--output_path", str(out), "--no_progress"]) == 0
    err = capsys.readouterr().err
    assert "1 records, kept 1; dropped: none" in err and f"imported from {source}: 1 records read" in err
    summary = json.loads((tmp_path / "t.summary.json").read_text())
    assert summary["config"]["thoughts_input"] == str(source) and summary["run"]["kept"] == 1
