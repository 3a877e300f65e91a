"""Thought construction on tiny-random (fast; its text is noise, so thresholds pick which filter fires),
and one real run with SmolLM2."""

import json

import pytest

from ptr.data.cleaning import clean_generated, family_of, stops_for
from ptr.data.filters import FilterConfig, judged_improvement, parse_verdict, text_reason, thought_reason
from ptr.data.model_pool import ModelPool, parse_spec
from ptr.data.thoughts import ThoughtsConfig, final_answer_conversation, run_thoughts
from ptr.prompts import REFINE_PROMPT
from tests.conftest import run_ptr
from tests.support.torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

QUERIES = [
    "What is 7 times 8?",
    "Name three colors of the rainbow.",
    "Why do leaves change color in autumn?",
    "What is the capital of Italy?",
    "Give one tip for better sleep.",
]
# Thresholds that let any chain through, so a test can switch on exactly one filter.
OPEN = {"allow_truncated": True, "min_consistency": -1.0, "min_improvement": -1.0}


@pytest.fixture()
def queries_file(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "query": q}) + "\n" for i, q in enumerate(QUERIES)))
    return path


@pytest.fixture()
def pool(tiny_backend):
    return ModelPool(preloaded={parse_spec("tiny-random"): tiny_backend})


def _config(queries_file, tmp_path, **kw):
    filters = {**OPEN, **kw.pop("filters", {})}
    values = {
        "queries": str(queries_file),
        "output_path": str(tmp_path / "t.jsonl"),
        "weak_models": ["tiny-random"],
        "strong_model": "tiny-random",
        "max_new_tokens": 6,
        "temperature": 0.0,
        "batch_size": 2,
        "progress": False,
        "filters": filters,
        **kw,
    }
    return ThoughtsConfig(**values)


def _records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]


def test_record_structure_and_summary(queries_file, tmp_path, pool):
    # tiny-random seldom ends a turn: most answers hit their budget (3 x 6 tokens) and are dropped,
    # whatever allow_truncated says; the scores are those of the chains that got that far.
    summary = run_thoughts(_config(queries_file, tmp_path, num_thoughts=3), pool=pool)
    rows = _records(tmp_path)
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(5)]
    for r, q in zip(rows, QUERIES, strict=True):
        assert set(r) == {"id", "query", "refine_prompt", "thoughts", "answer", "scores", "kept", "reason"}
        assert r["query"] == q and r["refine_prompt"] == REFINE_PROMPT
        assert [t["round"] for t in r["thoughts"]] == [1, 2, 3]
        assert all(t["model"] == "tiny-random" and t["text"] for t in r["thoughts"])
        assert r["answer"]["model"] == "tiny-random" and r["answer"]["text"]
        assert r["answer"]["tokens"] <= 18  # the answer's own budget: 3 x max_new_tokens
        if r["answer"]["finish_reason"] == "length":
            assert r["reason"] == "answer_truncated" and not r["kept"]
            continue
        assert r["kept"] and r["reason"] is None
        for key in ("consistency", "improvement", "answer_relevance", "thought_relevance"):
            assert isinstance(r["scores"][key], float), key
        assert len(r["scores"]["link_consistency"]) == 3  # thought 1-2, 2-3, then answer-thought 3
        assert r["scores"]["consistency"] == min(r["scores"]["link_consistency"])
        assert -1 <= r["scores"]["consistency"] <= 1 and 0 <= r["scores"]["improvement"] <= 1
    truncated = sum(r["reason"] == "answer_truncated" for r in rows)
    assert truncated >= 1 and summary["kept"] == 5 - truncated and summary["records"] == 5
    assert summary["dropped"] == {"answer_truncated": truncated}
    assert summary["tokens"]["tiny-random"] == sum(
        t["tokens"] for r in rows for t in [*r["thoughts"], r["answer"]]
    )
    assert summary["run"]["generated"] == 5 and summary["run"]["queries_per_minute"] > 0
    assert json.loads((tmp_path / "t.summary.json").read_text())["kept"] == 5 - truncated


@pytest.mark.parametrize(
    "settings, reason, stops_after",
    [
        ({"filters": {"allow_truncated": False}}, "truncated", "length"),  # 6 tokens rarely end a turn
        ({"filters": {"min_chars": 10_000}}, "empty", 1),
        ({"filters": {"repeat_threshold": 0.0}}, "repeated", 2),  # anything repeats thought 1
        ({"filters": {"min_consistency": 1.01}}, "inconsistent", 2),  # thought 1-2, before any answer
        ({"answer_max_new_tokens": 2}, "answer_truncated", "answer"),  # allow_truncated: thoughts only
    ],
)
def test_every_filter_names_its_reason(queries_file, tmp_path, pool, settings, reason, stops_after):
    summary = run_thoughts(_config(queries_file, tmp_path, **settings), pool=pool)
    rows = _records(tmp_path)
    assert all(not r["kept"] and r["reason"] == reason for r in rows)
    assert summary["dropped"] == {reason: 5} and summary["kept"] == 0
    for r in rows:
        if stops_after == "answer":  # the chain was finished; its answer ran out of tokens
            assert len(r["thoughts"]) == 2 and r["answer"]["finish_reason"] == "length"
            assert r["answer"]["tokens"] == 2 and "answer_relevance" not in r["scores"]
        elif stops_after == "length":  # stopped at the first thought that ran out of tokens
            assert r["thoughts"][-1]["finish_reason"] == "length" and r["answer"] is None
            assert all(t["finish_reason"] == "stop" for t in r["thoughts"][:-1])
        else:  # what was generated stays, and nothing after it
            assert len(r["thoughts"]) == stops_after and r["answer"] is None


def test_a_prompt_over_the_context_is_dropped_not_fatal(tmp_path, pool):
    src = tmp_path / "q.jsonl"
    long_query = "Please read this. " + "apple banana cherry " * 1000  # far over tiny-random's 2048 tokens
    src.write_text(
        json.dumps({"id": "long", "query": long_query})
        + "\n"
        + json.dumps({"id": "ok", "query": "Hi?"})
        + "\n"
    )
    summary = run_thoughts(_config(src, tmp_path), pool=pool)
    rows = {r["id"]: r for r in _records(tmp_path)}
    assert rows["long"]["reason"] == "too_long" and rows["long"]["thoughts"] == []
    assert rows["ok"]["reason"] != "too_long" and len(rows["ok"]["thoughts"]) == 2
    assert summary["dropped"]["too_long"] == 1


def test_judge_model_scores_both_orders(queries_file, tmp_path, pool):
    # A long answer budget: tiny-random ends some answers, and those chains are judged.
    run_thoughts(
        _config(queries_file, tmp_path, judge_model="tiny-random", answer_max_new_tokens=64), pool=pool
    )
    judged = [r for r in _records(tmp_path) if r["reason"] != "answer_truncated"]
    assert judged
    for r in judged:
        assert "judge_forward" in r["scores"] and "judge_backward" in r["scores"]
        # tiny-random rarely writes a digit: either a parsed verdict or the reason says it had none
        assert r["kept"] or r["reason"] in ("judge_unparsable", "no_improvement")
    assert len(pool) == 1  # judge, weak and strong are one reference, loaded once


def test_weak_models_cycle_and_each_reference_loads_once(queries_file, tmp_path, tiny_backend, tiny_path):
    pool = ModelPool(preloaded={parse_spec("tiny-random"): tiny_backend})
    cfg = _config(queries_file, tmp_path, weak_models=["tiny-random", tiny_path], num_thoughts=3, data_len=2)
    run_thoughts(cfg, pool=pool)
    assert len(pool) == 2  # the preloaded tiny-random plus the directory reference, once
    for r in _records(tmp_path):
        assert [t["model"] for t in r["thoughts"]] == ["tiny-random", tiny_path, "tiny-random"]
        assert r["answer"]["model"] == "tiny-random"


def test_resume_generates_only_missing_ids_and_repairs_a_torn_line(queries_file, tmp_path, pool):
    run_thoughts(_config(queries_file, tmp_path, data_len=2), pool=pool)
    out = tmp_path / "t.jsonl"
    first = out.read_text()
    with open(out, "a") as f:  # a crash in the middle of appending a batch
        f.write('{"id": "q2", "query": "Why do lea')
    summary = run_thoughts(_config(queries_file, tmp_path), pool=pool)
    assert out.read_text().startswith(first)  # written records untouched
    assert [r["id"] for r in _records(tmp_path)] == [f"q{i}" for i in range(5)]
    assert summary["run"]["already_written"] == 2 and summary["run"]["generated"] == 3
    assert summary["run"]["repaired_bytes"] == len('{"id": "q2", "query": "Why do lea')
    again = run_thoughts(_config(queries_file, tmp_path), pool=pool)
    assert again["run"]["generated"] == 0 and again["records"] == 5


def test_corrupt_line_in_the_middle_is_reported(queries_file, tmp_path):
    out = tmp_path / "t.jsonl"
    out.write_text('{"id": "q0"}\nnot json\n{"id": "q1"}\n')
    proc = run_ptr(
        "thoughts",
        "--queries",
        queries_file,
        "--output_path",
        out,
        "--weak_models",
        "tiny-random",
        "--strong_model",
        "tiny-random",
    )
    assert proc.returncode == 2
    assert f"{out}:2: corrupt line in the middle of the file" in proc.stderr
    assert out.read_text() == '{"id": "q0"}\nnot json\n{"id": "q1"}\n'


@pytest.mark.parametrize(
    "body, expected",
    [
        ('{"id": "a", "query": "ok"}\n{"id": "b", "query": \n', ":2: invalid JSON"),
        ('{"id": "a", "query": "ok"}\n{"id": "b"}\n', ":2: query: missing required field"),
        ('{"id": "a", "query": "  "}\n', ":1: query: must be a non-empty string"),
        (
            '{"id": "a", "query": "x"}\n{"id": "a", "query": "y"}\n',
            ":2: id: duplicate id 'a' (first on line 1)",
        ),
    ],
)
def test_bad_queries_exit_2_and_nothing_written(tmp_path, body, expected):
    src = tmp_path / "q.jsonl"
    src.write_text(body)
    out = tmp_path / "t.jsonl"
    proc = run_ptr(
        "thoughts",
        "--queries",
        src,
        "--output_path",
        out,
        "--weak_models",
        "tiny-random",
        "--strong_model",
        "tiny-random",
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{src}{expected}" in proc.stderr, proc.stderr
    assert not out.exists() and not (tmp_path / "t.summary.json").exists()


def test_cli_end_to_end_on_tiny_random(tmp_path, capsys):
    # In-process `main` (the same entry `ptr` calls) so the test does not pay for a second import of torch.
    from ptr.data import queries, thoughts

    q = tmp_path / "q.jsonl"
    assert queries.main(["--input", "builtin", "--output_path", str(q), "--data_len", "3"]) == 0
    out = tmp_path / "t.jsonl"
    argv = [
        "--queries",
        str(q),
        "--output_path",
        str(out),
        "--weak_models",
        "tiny-random",
        "--strong_model",
        "tiny-random",
        "--max_new_tokens",
        "4",
        "--dtype",
        "float32",
        "--no_progress",
    ]
    assert thoughts.main(argv) == 0
    summary = json.loads((tmp_path / "t.summary.json").read_text())
    assert summary["records"] == 3 and summary["dropped"] == {"truncated": 3}
    assert summary["config"]["filters"]["min_consistency"] == 0.5
    assert "queries/min" in capsys.readouterr().err


def test_attempt_filters_and_judge_parsing():
    cfg = FilterConfig()
    assert thought_reason("An answer.", "length", None, cfg) == "truncated"
    assert thought_reason("  \n ", "stop", None, cfg) == "empty"
    assert thought_reason("Same  text.\n", "stop", "Same text.", cfg) == "repeated"
    assert thought_reason("Other text.", "stop", "Same text.", cfg) is None
    near = FilterConfig(repeat_threshold=0.9)
    assert text_reason("The answer is 42.", "The answer is 42!", near) == "repeated"
    assert (
        parse_verdict("Score: 7/10") == 0.7 and parse_verdict("10") == 1.0 and parse_verdict("none") is None
    )
    assert parse_verdict("3.5 stars") is None
    assert judged_improvement(0.8, 0.4) == pytest.approx(0.7)
    assert judged_improvement(None, 0.2) == pytest.approx(0.8) and judged_improvement(None, None) is None


def test_control_tokens_never_reach_records(tiny_backend):
    assert clean_generated(" The answer.<|im_end|>\n<|im_start|>user\nmore") == "The answer."
    assert clean_generated("Fine.<|eot_id|><|start_header_id|>user") == "Fine."
    assert clean_generated("plain text") == "plain text"
    assert family_of(tiny_backend.tokenizer.chat_template) == "chatml"
    assert "<|im_start|>" in stops_for(tiny_backend)
    assert stops_for(tiny_backend, plain_prompt=True)[0] == "\nQuestion:"


def test_final_answer_prompt_holds_query_and_every_attempt():
    [msg] = final_answer_conversation("Q?", ["first", "second"], "Improve.")
    assert msg["role"] == "user"
    assert msg["content"] == "Improve.\n\nQuestion:\nQ?\n\nAttempt 1:\nfirst\n\nAttempt 2:\nsecond"


@pytest.mark.smollm
def test_smollm_weak_and_strong_produce_kept_records(tmp_path, smollm_path):
    queries = tmp_path / "q.jsonl"
    short = [q + " Answer in one short sentence." for q in QUERIES]
    queries.write_text("".join(json.dumps({"id": f"s{i}", "query": q}) + "\n" for i, q in enumerate(short)))
    cfg = ThoughtsConfig(
        queries=str(queries),
        output_path=str(tmp_path / "t.jsonl"),
        weak_models=["smollm2-135m-instruct"],
        strong_model="smollm2-135m-instruct",
        max_new_tokens=64,
        temperature=0.8,
        top_p=0.9,
        strong_temperature=0.0,
        batch_size=5,
        dtype="float32",
        progress=False,
        filters={"min_consistency": 0.3, "min_improvement": 0.3},
        answer_max_new_tokens=256,
    )
    summary = run_thoughts(cfg)
    rows = _records(tmp_path)
    assert len(rows) == 5 and summary["kept"] >= 1, summary
    for r in rows:
        for t in [*r["thoughts"], *([r["answer"]] if r["answer"] else [])]:
            assert "<|im_" not in t["text"] and "<|endoftext|>" not in t["text"]
    kept = [r for r in rows if r["kept"]]
    assert all(len(r["thoughts"]) == 2 and r["answer"]["text"] for r in kept)


def test_vllm_engines_held_together_split_the_gpu_memory(monkeypatch):
    """Item 17: the thoughts step holds every weak model and the strong one at once; vLLM reserves its
    gpu_memory_utilization of the whole GPU per engine up front, so two engines at 0.85 cannot share a
    GPU. The pool divides the share among the distinct vLLM models of the run (one model used for
    several roles is one engine)."""
    from ptr.data import model_pool

    loaded = []
    monkeypatch.setattr(
        model_pool, "load_backend", lambda kind, ref, options: loaded.append((kind, ref, options)) or object()
    )
    pool = model_pool.ModelPool()
    weak = model_pool.parse_spec("Qwen/Qwen2-0.5B-Instruct", "vllm", None)
    strong = model_pool.parse_spec("Qwen/Qwen2-1.5B-Instruct", "vllm", None)
    pool.plan([weak, weak, strong])
    pool.get(weak), pool.get(strong), pool.get(weak)
    shares = [options.gpu_memory_share for _, _, options in loaded]
    assert len(loaded) == 2 and shares == [0.425, 0.425] and sum(shares) <= model_pool.VLLM_GPU_MEMORY

    loaded.clear()
    one = model_pool.ModelPool()
    one.plan([weak, weak])
    one.get(weak)
    assert loaded[0][2].gpu_memory_share == model_pool.VLLM_GPU_MEMORY

    # and the vLLM backend hands it to the engine
    from ptr.inference.backend import BackendOptions
    from ptr.inference.vllm_backend import VLLMBackend

    captured = {}
    monkeypatch.setattr(VLLMBackend, "__init__", lambda self, ref, **kw: captured.update(kw))
    VLLMBackend.from_options("m", BackendOptions(gpu_memory_share=0.425))
    assert captured["gpu_memory_utilization"] == 0.425
