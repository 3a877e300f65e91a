import json

import pytest

from ptr.data.decontam import NgramIndex, eval_questions, ngram_words
from ptr.data.queries import QueriesConfig, run_queries
from ptr.data.sources import BUILTIN_PATH, read_queries
from tests.conftest import run_ptr


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_drops_empty_long_duplicates_and_near_duplicates(tmp_path):
    src = _write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"question": "How do tides work?"},
            {"question": "   "},
            {"question": "How do tides work?"},  # exact duplicate
            {"question": "how do TIDES work"},  # same words, other case and punctuation
            {"question": " ".join(["word"] * 40)},  # over --max_words
            {"question": "Why is the sea salty?"},
        ],
    )
    out = tmp_path / "q.jsonl"
    summary = run_queries(QueriesConfig(inputs=[str(src)], output_path=str(out), max_words=30))
    rows = _read(out)
    assert [r["query"] for r in rows] == ["How do tides work?", "Why is the sea salty?"]
    assert [r["source"] for r in rows] == ["in.jsonl:1", "in.jsonl:6"]
    assert len({r["id"] for r in rows}) == 2
    assert summary["dropped"] == {"empty": 1, "too_long": 1, "duplicate": 1, "near_duplicate": 1}
    assert json.loads((tmp_path / "q.summary.json").read_text())["kept"] == 2


def test_fields_messages_instruction_and_json_array(tmp_path):
    src = _write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "Name a prime."},
                ]
            },
            {"instruction": "Translate to French.", "input": "Good morning"},
            {"query": "What is rain?"},
        ],
    )
    texts = [q.text for q in read_queries(str(src))]
    assert texts == ["Name a prime.", "Translate to French.\n\nGood morning", "What is rain?"]
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([{"question": "a b c"}, {"question": "d e f"}]))
    assert [q.source for q in read_queries(str(arr))] == ["arr.json[0]", "arr.json[1]"]


def test_sampling_is_deterministic_per_seed_and_keeps_input_order(tmp_path):
    out = tmp_path / "q.jsonl"

    def sample(seed):
        run_queries(QueriesConfig(inputs=["builtin"], output_path=str(out), limit=10, seed=seed))
        return [r["id"] for r in _read(out)]

    a, b, c = sample(1), sample(1), sample(2)
    assert a == b and len(a) == 10 and a != c
    all_ids = [r["id"] for r in _read(_run_all(tmp_path))]
    assert a == [i for i in all_ids if i in set(a)]  # input order kept


def _run_all(tmp_path):
    out = tmp_path / "all.jsonl"
    run_queries(QueriesConfig(inputs=["builtin"], output_path=str(out)))
    return out


def test_builtin_queries_are_clean_and_unique():
    rows = [json.loads(line) for line in BUILTIN_PATH.read_text().splitlines()]
    assert len(rows) >= 30
    assert len({r["query"].lower() for r in rows}) == len(rows)


def _eval_dir(tmp_path):
    root = tmp_path / "evals"
    (root / "gsm8k").mkdir(parents=True)
    (root / "mmlu" / "data" / "test").mkdir(parents=True)
    (root / "winogrande" / "official").mkdir(parents=True)
    gsm = "Tom has three red apples and buys five more green apples at the market on sunny Monday morning. How many apples?"
    _write_jsonl(root / "gsm8k" / "test.jsonl", [{"question": gsm, "answer": "#### 8"}])
    (root / "mmlu" / "data" / "test" / "x_test.csv").write_text(
        '"Which planet in our solar system has the largest number of confirmed moons today?",a,b,c,d,A\n'
    )
    _write_jsonl(
        root / "winogrande" / "official" / "dev.jsonl",
        [{"sentence": "The trophy did not fit in the suitcase because _ was big.", "answer": "1"}],
    )
    return root, gsm


def test_decontamination_drops_shared_ngrams_and_whole_short_questions(tmp_path):
    root, gsm = _eval_dir(tmp_path)
    words = gsm.split()
    queries = [
        {"query": "Please help: " + gsm},  # the whole question inside a query
        {"query": "Hint: " + " ".join(words[3:16]) + " etc."},  # exactly 13 shared words
        {"query": " ".join(words[3:15]) + " is a phrase I like."},  # only 12 shared words
        # the text before WinoGrande's blank, matched whole
        {"query": "Explain: the trophy did not fit in the suitcase because it was big!"},
        {"query": "Which planet in our solar system has the largest number of confirmed moons, and why?"},
        {"query": "A completely unrelated question about bread."},
    ]
    src = _write_jsonl(tmp_path / "in.jsonl", queries)
    out = tmp_path / "q.jsonl"
    summary = run_queries(QueriesConfig(inputs=[str(src)], output_path=str(out), decontaminate_dir=str(root)))
    kept = [r["query"] for r in _read(out)]
    assert kept == [queries[2]["query"], queries[5]["query"]]
    assert summary["dropped"] == {"contaminated": 4}
    assert summary["contaminated_by"] == {"gsm8k": 2, "winogrande": 1, "mmlu": 1}
    assert summary["decontamination"]["eval_texts"] == {"gsm8k": 1, "mmlu": 1, "winogrande": 2}


def test_decontamination_against_the_real_eval_sets(data_dir):
    index = NgramIndex(eval_questions(data_dir))
    gsm = json.loads((data_dir / "gsm8k" / "test.jsonl").open().readline())["question"]
    with (data_dir / "hellaswag" / "hellaswag_val_full.jsonl").open() as f:
        ctx = next(c for c in (json.loads(line)["ctx"] for line in f) if len(ngram_words(c)) > 20)
    probes = [f"Solve this: {gsm}", f"Continue the story. {ctx.split(': ', 1)[1]}", "What is love?"]
    assert index.match(probes) == ["gsm8k", "hellaswag", None]
    assert {"gsm8k", "math", "mmlu", "arc", "xsum", "drop", "humaneval"} <= set(index.counts)


def test_cli_writes_output_and_summary(tmp_path):
    out = tmp_path / "q.jsonl"
    proc = run_ptr("queries", "--input", "builtin", "--output_path", out, "--data_len", "5", check=True)
    assert len(_read(out)) == 5
    assert "kept 5" in proc.stderr
    assert json.loads((tmp_path / "q.summary.json").read_text())["dropped"]["not_sampled"] > 0


@pytest.mark.parametrize(
    "body, expected",
    [
        ('{"question": "ok"}\n{"question": \n', ":2: invalid JSON"),
        ('{"question": "ok"}\n{"text": "x"}\n', ":2: needs a query: one of the fields query, question"),
        ('{"question": 5}\n', ":1: question: expected a string, got int"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}\n', ":1: messages: no user message"),
    ],
)
def test_cli_bad_input_exit_2_and_nothing_written(tmp_path, body, expected):
    src = tmp_path / "bad.jsonl"
    src.write_text(body)
    out = tmp_path / "q.jsonl"
    proc = run_ptr("queries", "--input", src, "--output_path", out)
    assert proc.returncode == 2, proc.stderr
    assert f"{src}{expected}" in proc.stderr, proc.stderr
    assert not out.exists() and not (tmp_path / "q.summary.json").exists()


def test_cli_bad_decontaminate_dir_exit_2(tmp_path):
    proc = run_ptr("queries", "--output_path", tmp_path / "q.jsonl", "--decontaminate_dir", tmp_path)
    assert proc.returncode == 2
    assert "found no evaluation sets" in proc.stderr


def test_formula_letters_alone_do_not_make_a_shared_ngram():
    formula = "Let F_0 = 0, F_1 = 1 and F_n = F_{n-1} + F_{n-2} for n > 1."
    index = NgramIndex({"math": [f"{formula} What is gcd(F_10, F_11)?"]}, n=13, min_words=8)
    assert index.match(
        [f"Recursion example: {formula} Write it in Python.", f"{formula} What is gcd(F_10, F_11)?"]
    ) == [
        None,
        "math",
    ]


def test_hugging_face_dataset_input(tmp_path):
    # A local dataset folder goes through the same `datasets.load_dataset` call as a hub name.
    pytest.importorskip("datasets", reason="`datasets` comes with the bench extras")
    folder = tmp_path / "ds"
    folder.mkdir()
    _write_jsonl(
        folder / "train.jsonl", [{"instruction": "Explain tides."}, {"instruction": "Explain wind."}]
    )
    got = read_queries(f"hf:{folder}", split="train")
    assert [q.text for q in got] == ["Explain tides.", "Explain wind."]
    assert got[1].source == "ds[1]"
