import json

from tests.conftest import run_ptr


def test_refine_one_question_prints_each_round():
    proc = run_ptr(
        "refine",
        "--model_path",
        "tiny-random",
        "--rounds",
        "3",
        "--question",
        "What is 12*7?",
        "--max_new_tokens",
        "6",
        "--dtype",
        "float32",
        check=True,
    )
    lines = proc.stdout.splitlines()
    assert [line for line in lines if line.startswith("Round ")] == ["Round 1:", "Round 2:", "Round 3:"]


def test_refine_batch_writes_rounds_per_line(tmp_path):
    src = tmp_path / "q.jsonl"
    src.write_text(
        json.dumps({"question": "What is 2+3?", "id": "a"})
        + "\n\n"
        + json.dumps({"messages": [{"role": "user", "content": "Say hi."}], "id": "b"})
        + "\n"
    )
    out = tmp_path / "a.jsonl"
    run_ptr(
        "refine",
        "--model_path",
        "tiny-random",
        "--rounds",
        "2",
        "--input",
        src,
        "--output",
        out,
        "--max_new_tokens",
        "5",
        check=True,
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    for r in rows:
        assert [x["round"] for x in r["rounds"]] == [1, 2]
        assert set(r["rounds"][0]) == {"round", "text", "completion_tokens", "finish_reason"}


def test_refine_bad_jsonl_exit_2_names_line_and_writes_nothing(tmp_path):
    out = tmp_path / "a.jsonl"
    cases = {
        '{"question": "ok"}\n{"question": \n': ":2: invalid JSON",
        '{"question": "ok"}\n["list"]\n': ":2: expected a JSON object",
        '{"question": "ok"}\n{"text": "x"}\n': ":2: needs one of the fields question, messages",
        '{"question": ""}\n': ":1: question: must be a non-empty string",
        '{"messages": [{"role": "robot", "content": "x"}]}\n': ":1: messages: messages[0]: role must be",
    }
    for body, expected in cases.items():
        src = tmp_path / "bad.jsonl"
        src.write_text(body)
        proc = run_ptr("refine", "--model_path", "tiny-random", "--input", src, "--output", out)
        assert proc.returncode == 2, proc.stderr
        assert f"{src}{expected}" in proc.stderr, proc.stderr
        assert not out.exists()
        assert not list(tmp_path.glob(".a.jsonl*"))
