"""ptr.records: the one reader of input records (JSONL, .gz, JSON arrays, folders, s3://, hf:) and the
one list of query fields, with errors that name the file, the line (or array index) and the field."""

from __future__ import annotations

import gzip
import json
import pickle

import pytest

from ptr import storage
from ptr.errors import InputError, PtrError
from ptr.records import QUERY_FIELDS, Where, paper_outputs, query_text, read_records


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _read(spec, **kw) -> list[tuple[str, dict]]:
    return [(str(where), record) for where, record in read_records(spec, **kw)]


def test_jsonl_gz_and_json_array_are_located_by_line_or_index(tmp_path):
    plain = _jsonl(tmp_path / "a.jsonl", [{"q": 1}, {"q": 2}])
    (tmp_path / "a.jsonl").write_text('{"q": 1}\n\n{"q": 2}\n')  # blank lines are skipped, still counted
    assert _read(plain) == [(f"{plain}:1", {"q": 1}), (f"{plain}:3", {"q": 2})]

    packed = tmp_path / "b.jsonl.gz"
    with gzip.open(packed, "wt") as f:
        f.write('{"q": 1}\n{"q": 2}\n')
    assert _read(str(packed)) == [(f"{packed}:1", {"q": 1}), (f"{packed}:2", {"q": 2})]

    # The paper's released sample: one JSON array in a file named .jsonl, pretty-printed.
    array = tmp_path / "sample.jsonl"
    array.write_text(json.dumps([{"q": 1}, {"q": 2}], indent=2))
    assert _read(str(array)) == [(f"{array}[0]", {"q": 1}), (f"{array}[1]", {"q": 2})]
    array_gz = tmp_path / "sample.json.gz"
    with gzip.open(array_gz, "wt") as f:
        f.write('  [{"q": 3}]')
    assert _read(str(array_gz)) == [(f"{array_gz}[0]", {"q": 3})]


def test_a_folder_reads_record_files_in_name_order_and_skips_summaries(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _jsonl(folder / "b.jsonl", [{"q": "b"}])
    _jsonl(folder / "a.jsonl", [{"q": "a"}])
    with gzip.open(folder / "c.jsonl.gz", "wt") as f:
        f.write('{"q": "c"}\n')
    (folder / "a.summary.json").write_text('{"kept": 1}')  # what a stage writes beside its output
    _jsonl(folder / ".a.jsonl.tmp", [{"q": "staging"}])
    assert [(w.rsplit("/", 1)[1], r["q"]) for w, r in _read(str(folder))] == [
        ("a.jsonl:1", "a"),
        ("b.jsonl:1", "b"),
        ("c.jsonl.gz:1", "c"),
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PtrError, match="a folder with no"):
        read_records(str(empty))
    # A missing input fails on the call, before a caller starts any work.
    with pytest.raises(InputError, match="missing.jsonl: no such file or folder"):
        read_records(str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"q": 1}\n{"q": 2\n', ":2: invalid JSON"),
        ('{"q": 1}\n[1, 2]\n', ":2: expected a JSON object, got list"),
        ('{"q": 1}\n\xff\n', ":2: not valid UTF-8"),
        ('[\n  {"q": 1},\n  {"q": 2\n]\n', ":4: invalid JSON"),
        ('[{"q": 1}, "text", {"q": 3}]', "[1]: expected a JSON object, got str"),
        ("[1, 2", ":1: invalid JSON"),
        ("\x1f\x8b not gzip", ": cannot read"),
    ],
)
def test_bad_files_name_the_line_or_the_index(tmp_path, body, expected):
    src = tmp_path / ("bad.jsonl.gz" if "gzip" in body else "bad.jsonl")
    src.write_bytes(body.encode("latin-1"))
    with pytest.raises(InputError) as info:
        list(read_records(str(src)))
    assert str(info.value).startswith(f"{src}{expected}"), str(info.value)


def test_query_fields_one_list_with_chat_and_alpaca_layouts():
    where = Where("in.jsonl", 7)
    assert QUERY_FIELDS[:2] == ("query", "question")
    assert query_text({"question": "Why?", "q": "not this"}, where) == ("question", "Why?")
    assert query_text({"q": "Short form"}, where) == ("q", "Short form")
    assert query_text({"instruction": "Translate.", "input": " Hello "}, where) == (
        "instruction",
        "Translate.\n\nHello",
    )
    chat = {"messages": [{"role": "system", "content": "brief"}, {"role": "user", "content": "Hi?"}]}
    assert query_text(chat, where) == ("messages", "Hi?")
    assert query_text({"query": "a", "title": "b"}, where, field="title") == ("title", "b")

    cases = [
        ({"answer": "x"}, {}, "in.jsonl:7: needs a query: one of the fields query, question"),
        ({"query": 3}, {}, "in.jsonl:7: query: expected a string, got int"),
        ({"query": "a"}, {"field": "title"}, "in.jsonl:7: title: missing required field"),
        ({"messages": [{"role": "user"}]}, {}, "in.jsonl:7: messages[0]: a message needs a string"),
        ({"messages": [{"role": "system", "content": "s"}]}, {}, "in.jsonl:7: messages: no user message"),
    ]
    for record, kw, expected in cases:
        with pytest.raises(InputError) as info:
            query_text(record, where, **kw)
        assert str(info.value).startswith(expected), str(info.value)
    with pytest.raises(InputError, match=r"^s\.json\[3\]: output2: needs output1"):
        paper_outputs({"question": "q", "output1": "t"}, Where("s.json", index=3))
    assert paper_outputs({"output1": "t1", "output2": "t2", "output3": "a"}, where) == ["t1", "t2", "a"]


def test_input_errors_pickle_whole():
    """Worker processes hand errors back through pickle: every part survives, not just the message."""
    err = Where("data.jsonl", index=4).error("too long", "answer")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is InputError and str(back) == str(err) == "data.jsonl[4]: answer: too long"
    assert (back.path, back.line, back.index, back.field, back.reason) == (
        "data.jsonl",
        None,
        4,
        "answer",
        "too long",
    )


def test_hugging_face_dataset(tmp_path):
    # A local dataset folder goes through the same `datasets.load_dataset` call as a hub name.
    pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", [{"question": "Explain tides."}, {"question": "Explain wind."}])
    got = _read(f"hf:{folder}", split="train")
    assert got == [
        (f"hf:{folder}:train[0]", {"question": "Explain tides."}),
        (f"hf:{folder}:train[1]", {"question": "Explain wind."}),
    ]


def test_s3_objects_and_prefixes_are_named_by_their_uri(s3_store, tmp_path, monkeypatch):
    monkeypatch.setenv("PTR_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "x.jsonl"
    _jsonl(src, [{"q": 1}, "not an object"])
    storage.publish(src, "s3://ptr/records/one/x.jsonl")
    storage.publish(src, "s3://ptr/records/many/part-1.jsonl")
    for spec, name in [
        ("s3://ptr/records/one/x.jsonl", "s3://ptr/records/one/x.jsonl"),
        ("s3://ptr/records/many", "s3://ptr/records/many/part-1.jsonl"),
    ]:
        records = read_records(spec)
        where, record = next(records)
        assert (str(where), record) == (f"{name}:1", {"q": 1})
        with pytest.raises(InputError, match=rf"^{name}:2: expected a JSON object, got str"):
            next(records)
