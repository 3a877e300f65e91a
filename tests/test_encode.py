"""`ptr encode`: chat layout and segment codes, packing, dtype, inputs, bad input, atomic output."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ptr.encode import ANSWER, IGNORE, ShardDataset, ShardWriter
from ptr.encode.cli import main as encode_main
from ptr.encode.encoder import choose_dtype, config, encode
from ptr.errors import InputError, PtrError
from ptr.prompts import REFINE_PROMPT
from ptr.records import Where
from tests.conftest import REPO


def thought_record(i: int, n_thoughts: int = 2, kept: bool = True) -> dict:
    """A record as `ptr thoughts` writes it (rounds deliberately out of order)."""
    thoughts = [
        {"round": r, "model": "weak", "text": f"Attempt {r} at question {i}: maybe {i + r}."}
        for r in range(n_thoughts, 0, -1)
    ]
    return {
        "id": f"q{i}",
        "query": f"What is {i} plus one?",
        "thoughts": thoughts,
        "answer": {"model": "strong", "text": f"{i} plus one is {i + 1}."},
        "scores": {},
        "kept": kept,
        "reason": None,
    }


def ptr_messages(record: dict) -> list[dict]:
    thoughts = sorted(record["thoughts"], key=lambda t: t["round"])
    messages = [{"role": "user", "content": record["query"]}]
    for t in thoughts:
        messages += [{"role": "assistant", "content": t["text"]}, {"role": "user", "content": REFINE_PROMPT}]
    return [*messages, {"role": "assistant", "content": record["answer"]["text"]}]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def segments_as_text(tokenizer, item) -> list[tuple[int, str]]:
    """(code, decoded text) for each run of equal codes."""
    pairs = zip(item["segments"].tolist(), item["input_ids"].tolist(), strict=True)
    return [
        (code, tokenizer.decode([t for _, t in run]))
        for code, run in itertools.groupby(pairs, lambda p: p[0])
    ]


def documents(ds: ShardDataset) -> list[tuple[tuple, tuple]]:
    """Every packed document as (ids, segments), in shard order."""
    docs = []
    for i in range(len(ds)):
        item = ds[i]
        bounds = np.concatenate([[0], np.cumsum(item["doc_lens"])])
        for lo, hi in itertools.pairwise(bounds.tolist()):
            docs.append((tuple(item["input_ids"][lo:hi].tolist()), tuple(item["segments"][lo:hi].tolist())))
    return docs


@pytest.fixture(scope="module")
def tiny_tok():
    from ptr.models import load_tokenizer

    return load_tokenizer("tiny-random")


def to_examples(records):
    from ptr.encode.records import RefinePrompt, to_example

    return [to_example(r, Where("x", i), "ptr", RefinePrompt()) for i, r in enumerate(records, 1)]


def run_encode(tmp_path, records=None, name="ptr", **options) -> tuple[dict, ShardDataset]:
    if records is not None:
        options["input"] = str(write_jsonl(tmp_path / f"{name}.jsonl", records))
    options.setdefault("tokenizer_path", "tiny-random")
    summary = encode(config(output_path=str(tmp_path / "out"), corpus_name=name, **options))
    return summary, ShardDataset(tmp_path / "out" / name)


# -- layout and segment codes ---------------------------------------------------------------------


def test_segment_codes_on_a_hand_checked_example(tmp_path, tiny_tok):
    summary, ds = run_encode(tmp_path, [thought_record(2)], max_length=1024)
    assert summary["examples"] == 1 and len(ds) == 1
    refine = f"\n<|im_start|>user\n{REFINE_PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    assert segments_as_text(tiny_tok, ds[0]) == [
        (IGNORE, "<|im_start|>user\nWhat is 2 plus one?<|im_end|>\n<|im_start|>assistant\n"),
        (1, "Attempt 1 at question 2: maybe 3.<|im_end|>"),
        (IGNORE, refine),
        (2, "Attempt 2 at question 2: maybe 4.<|im_end|>"),
        (IGNORE, refine),
        (ANSWER, "2 plus one is 3.<|im_end|>"),
        (IGNORE, "\n"),
    ]


@pytest.mark.smollm
def test_segment_codes_with_smollm2_template_and_its_default_system_prompt(tmp_path):
    from ptr.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    record = {
        "question": "Why is the sky blue?",
        "output1": "Because of air.",
        "output2": "Rayleigh scattering.",
    }
    _, ds = run_encode(tmp_path, [record], tokenizer_path="smollm2-135m-instruct")
    assert ds.meta["dtype"] == "uint16" and ds.meta["tokenizer"]["vocab_size"] == 49152
    runs = segments_as_text(tok, ds[0])
    assert [code for code, _ in runs] == [IGNORE, 1, IGNORE, ANSWER, IGNORE]
    assert runs[0][1].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert runs[1][1] == "Because of air.<|im_end|>"
    assert runs[3][1] == "Rayleigh scattering.<|im_end|>"
    text = tok.apply_chat_template(
        [
            {"role": "user", "content": "Why is the sky blue?"},
            {"role": "assistant", "content": "Because of air."},
            {"role": "user", "content": REFINE_PROMPT},
            {"role": "assistant", "content": "Rayleigh scattering."},
        ],
        tokenize=False,
    )
    assert tok.decode(ds[0]["input_ids"]) == text


@pytest.mark.parametrize(
    "ref", ["tiny-random", pytest.param("smollm2-135m-instruct", marks=pytest.mark.smollm)]
)
def test_layout_matches_the_template_and_the_inference_prompt(ref):
    """Training text is the template's text, and what precedes each assistant turn is exactly the
    prompt inference renders (add_generation_prompt) for the conversation so far."""
    from ptr.chat import end_of_turn_tokens
    from ptr.encode.layout import ChatLayout
    from ptr.encode.records import Example
    from ptr.models import load_tokenizer, resolve

    tok = load_tokenizer(ref)
    layout = ChatLayout(tok, end_of_turn=end_of_turn_tokens(tok, resolve(ref)))
    assert layout.agnostic
    for i in range(12):  # past the full-render checks, so the skeleton path is exercised too
        messages = ptr_messages(thought_record(i, n_thoughts=1 + i % 3))
        text, spans = layout.render(messages)
        assert text == tok.apply_chat_template(messages, tokenize=False)
        for k, (start, end) in enumerate(spans):
            assert text[start:end] == messages[k]["content"]
            if messages[k]["role"] == "assistant":
                prompt = tok.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
                assert text[:start] == prompt
        codes = [IGNORE] + [c for t in range(1, len(messages) // 2) for c in (t, IGNORE)] + [ANSWER]
        [(ids, segments)] = layout.encode_batch([Example(Where("x"), messages=messages, codes=codes)])
        assert tok.decode(ids) == text
        assert set(np.unique(segments).tolist()) == {IGNORE, ANSWER, *range(1, len(messages) // 2)}


def test_content_sensitive_templates_are_rendered_per_example(tiny_tok):
    """Templates that inspect or escape content are rendered per example and still give the
    template's own text and the right spans; one that rewrites content is refused, naming the record."""
    from ptr.encode.layout import ChatLayout
    from ptr.encode.records import Example

    inspects = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if '</think>' in m.content %}{{ m.content.split('</think>')[-1] }}"
        "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    )
    escapes = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content|tojson }}<|im_end|>\n{% endfor %}"
    )
    messages = [
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "A first"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "A second"},
    ]
    for template, quote in ((inspects, ""), (escapes, '"')):
        tok = tiny_tok.__class__.from_pretrained(tiny_tok.name_or_path)
        tok.chat_template = template
        layout = ChatLayout(tok, end_of_turn=["<|im_end|>"])
        assert not layout.agnostic
        [(ids, segments)] = layout.encode_batch(
            [Example(Where("x"), messages=messages, codes=[0, 1, 0, ANSWER])]
        )
        assert tok.decode(ids) == tok.apply_chat_template(messages, tokenize=False)
        assert tok.decode(ids[segments == 1]) == f"A first{quote}<|im_end|>"  # the span starts at the content
        assert tok.decode(ids[segments == ANSWER]) == f"A second{quote}<|im_end|>"
    rewritten = [*messages[:3], {"role": "assistant", "content": "<think>hmm</think>A second"}]
    layout = ChatLayout(tok.__class__.from_pretrained(tiny_tok.name_or_path), end_of_turn=["<|im_end|>"])
    layout.tokenizer.chat_template = inspects
    [error] = layout.encode_batch([Example(Where("t.jsonl", 7), messages=rewritten, codes=[0, 1, 0, ANSWER])])
    assert isinstance(error, InputError) and (error.path, error.line) == ("t.jsonl", 7)
    assert str(error) == "t.jsonl:7: chat template: the chat template does not reproduce message 3's content"


def test_content_agnostic_analysis():
    from ptr.encode.template import content_agnostic as agnostic

    loop = "{% for m in messages %}X{% endfor %}"
    assert agnostic(loop.replace("X", "{{ '<' + m['role'] + '>' + m['content'] + '</s>' }}"))
    assert agnostic(loop.replace("X", "{{ m.content | trim ~ '<eot>' }}"))
    assert agnostic("{% for m in messages[1:] %}{{ m.content }}{% endfor %}{{ messages|length }}")
    assert not agnostic(loop.replace("X", "{% if m.content %}{{ m.content }}{% endif %}"))
    assert not agnostic(loop.replace("X", "{{ m.content|upper }}"))
    assert not agnostic(loop.replace("X", "{{ m|tojson }}"))
    assert not agnostic("{% set s = messages[0]['content'] %}" + loop.replace("X", "{{ m.content }}"))
    assert not agnostic("{% for m in messages %}{{ m.content.split('x')[0] }}{% endfor %}")
    assert not agnostic("{{ unclosed")


def test_qa_and_pretrain_codes(tmp_path, tiny_tok):
    qa = [
        {"q": "Two plus two?", "a": "Four."},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Goodbye."},
            ]
        },
    ]
    _, ds = run_encode(tmp_path, qa, name="qa", encode_type="qa")
    answers = [[text for code, text in segments_as_text(tiny_tok, ds[i]) if code == ANSWER] for i in range(2)]
    assert answers == [["Four.<|im_end|>"], ["Hello.<|im_end|>", "Goodbye.<|im_end|>"]]
    assert ds.meta["loss_weights"] == [1.0, 0.0, 0.0]

    _, ds = run_encode(tmp_path, [{"text": "Plain words."}], name="pt", encode_type="pretrain")
    item = ds[0]
    assert (item["segments"] == ANSWER).all()
    assert item["input_ids"][-1] == tiny_tok.eos_token_id
    assert tiny_tok.decode(item["input_ids"][:-1]).endswith("Plain words.")


# -- packing --------------------------------------------------------------------------------------


def test_packing_keeps_documents_whole_and_positions_restart(tmp_path):
    records = [thought_record(i, n_thoughts=1 + i % 4) for i in range(60)]
    plain, unpacked = run_encode(tmp_path, records, name="plain", max_length=256)
    packed_summary, packed = run_encode(tmp_path, records, name="packed", max_length=256, merge_data=True)
    assert packed_summary["tokens"] == plain["tokens"] and len(packed) < len(unpacked)
    # The same documents, whole: packing only groups them.
    assert sorted(documents(packed)) == sorted(documents(unpacked))
    for i in range(len(packed)):
        item = packed[i]
        assert len(item["input_ids"]) <= 256 and item["doc_lens"].sum() == len(item["input_ids"])
        starts = np.concatenate([[0], np.cumsum(item["doc_lens"])[:-1]])
        assert (item["position_ids"][starts] == 0).all()
        assert (item["position_ids"] == np.concatenate([np.arange(n) for n in item["doc_lens"]])).all()
        for lo, n in zip(starts.tolist(), item["doc_lens"].tolist(), strict=True):
            assert item["segments"][lo + n - 1] == IGNORE  # the template's trailing newline ends each one
    assert packed.meta["packing"]["merge_data"] and packed_summary["packing_efficiency"] > 0.8


def test_best_fit_packer_fills_tightly():
    from ptr.encode.packing import BestFitPacker

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, 500).tolist()
    for window, max_open, slack in ((2048, 256, 1.06), (64, 8, 1.25)):  # memory bounded: looser
        packer = BestFitPacker(100, window=window, max_open=max_open)
        out = []
        for n in lengths:
            out += list(packer.add(np.full(n, n, dtype=np.int32), np.zeros(n, dtype=np.uint8)))
        out += list(packer.finish())
        assert sorted(n for _, _, lens in out for n in lens) == sorted(lengths)
        assert all(len(tokens) <= 100 and sum(lens) == len(tokens) for tokens, _, lens in out)
        assert all((tokens == np.repeat(lens, lens)).all() for tokens, _, lens in out)  # documents whole
        assert len(out) <= sum(lengths) / 100 * slack  # near the lower bound


def test_too_long_examples_are_dropped_or_truncated_and_counted(tmp_path):
    records = [thought_record(1), {**thought_record(2), "answer": {"text": "long " * 300}}]
    summary, ds = run_encode(tmp_path, records, name="drop", max_length=200)
    assert summary["dropped"] == {"too_long": 1} and len(ds) == 1
    summary, ds = run_encode(tmp_path, records, name="trunc", max_length=200, overflow="truncate")
    assert summary["truncated"] == 1 and summary["examples"] == 2
    assert max(len(ds[i]["input_ids"]) for i in range(len(ds))) == 200


def _long_thoughts_record(i: int, first: int, second: int, answer: str = "The answer is four.") -> dict:
    return {
        **thought_record(i),
        "thoughts": [
            {"round": 1, "model": "weak", "text": " ".join(f"w{k}" for k in range(first))},
            {"round": 2, "model": "weak", "text": " ".join(f"v{k}" for k in range(second))},
        ],
        "answer": {"model": "strong", "text": answer},
    }


def test_shorten_thoughts_cuts_the_longest_thought_keeps_the_answer_whole(tmp_path, tiny_tok):
    record = _long_thoughts_record(1, first=120, second=10)
    full, ds = run_encode(tmp_path, [record], name="full", max_length=4096)
    [(ids, codes)] = documents(ds)
    n = len(ids)
    eot = tiny_tok.convert_tokens_to_ids("<|im_end|>")
    # At exactly max_length nothing changes; one token less and thought 1 (the longest) gives one up.
    summary, ds = run_encode(tmp_path, [record], name="fits", max_length=n, overflow="shorten_thoughts")
    assert summary["thoughts_shortened"] == 0 and documents(ds) == [(ids, codes)]
    for limit in (n - 1, n - 60):
        summary, ds = run_encode(
            tmp_path, [record], name=f"cut{limit}", max_length=limit, overflow="shorten_thoughts"
        )
        [(cut_ids, cut_codes)] = documents(ds)
        assert summary["thoughts_shortened"] == 1 and len(cut_ids) == limit  # exactly the excess goes
        item = ds[0]
        answer = item["input_ids"][item["segments"] == ANSWER]
        assert tiny_tok.decode(answer) == "The answer is four.<|im_end|>"  # whole, and it still ends
        assert codes.count(2) == cut_codes.count(2)  # the short thought is untouched
        assert cut_codes.count(1) == codes.count(1) - (n - limit) - 1  # minus the cut, minus its end
        # The cut thought keeps its end-of-turn token in the text, with no weight.
        after = cut_ids.index(eot, max(i for i, c in enumerate(cut_codes) if c == 1))
        assert cut_codes[after] == IGNORE and tiny_tok.decode(cut_ids[:after]).endswith(
            tiny_tok.decode(item["input_ids"][item["segments"] == 1])
        )
    # Thoughts give up all but one token each; if the rest still does not fit, the record is dropped.
    fixed = n - codes.count(1) - codes.count(2) + 2  # both thoughts' end-of-turn tokens stay
    summary, ds = run_encode(
        tmp_path, [record], name="edge", max_length=fixed + 2, overflow="shorten_thoughts"
    )
    assert summary["thoughts_shortened"] == 1 and len(documents(ds)[0][0]) == fixed + 2
    summary, _ = run_encode(
        tmp_path,
        [record, {"question": "Q?", "output1": "t", "output2": "a"}],
        name="drop",
        max_length=fixed + 1,
        overflow="shorten_thoughts",
    )
    assert summary["dropped"] == {"answer_too_long": 1} and summary["examples"] == 1


def test_thought_shares_when_several_must_give_tokens():
    from ptr.encode.overflow import _cap

    assert _cap([10, 3], 5) == [5, 3]  # the longest first
    assert _cap([10, 3], 8) == [3, 2]  # down to a common length, exactly 8 removed
    assert _cap([10, 3], 11) == [1, 1]
    with pytest.raises(ValueError):
        _cap([10, 3], 12)


def test_a_cut_thought_does_not_end_and_a_cut_answer_drops_the_record(tmp_path, tiny_tok):
    cut_thought = thought_record(1)
    cut_thought["thoughts"][1]["finish_reason"] = "length"  # round 1 (the list is in reverse order)
    cut_answer = {
        **thought_record(2),
        "answer": {"model": "s", "text": "Half an ans", "finish_reason": "length"},
    }
    summary, ds = run_encode(tmp_path, [cut_thought, cut_answer, thought_record(3)], max_length=1024)
    assert summary["dropped"] == {"answer_truncated": 1} and summary["examples"] == 2
    runs = segments_as_text(tiny_tok, ds[0])
    assert runs[1] == (1, "Attempt 1 at question 1: maybe 2.")  # no weight on the end-of-turn after a cut
    assert runs[2][0] == IGNORE and runs[2][1].startswith("<|im_end|>")
    assert runs[3] == (2, "Attempt 2 at question 1: maybe 3.<|im_end|>")
    qa = [{"q": "Q?", "a": {"text": "cut", "finish_reason": "length"}}, {"q": "Q?", "a": "whole"}]
    summary, _ = run_encode(tmp_path, qa, name="qa", encode_type="qa")
    assert summary["dropped"] == {"answer_truncated": 1}


def test_refine_prompt_comes_from_the_records_and_one_corpus_has_one(tmp_path, tiny_tok, capsys):
    own = "Think again and answer better."
    records = [{**thought_record(i), "refine_prompt": own} for i in range(3)]
    _, ds = run_encode(tmp_path, records, name="own")
    assert ds.meta["layout"]["refine_prompt"] == own
    texts = [tiny_tok.decode(ids) for ids, _ in documents(ds)]
    assert all(f"user\n{own}<|im_end|>" in t and REFINE_PROMPT not in t for t in texts)
    # Records without the field: the flag, else the paper's prompt, and meta.json says which.
    _, ds = run_encode(tmp_path, [thought_record(1)], name="flag", refine_prompt=own)
    assert ds.meta["layout"]["refine_prompt"] == own and own in tiny_tok.decode(documents(ds)[0][0])
    _, ds = run_encode(tmp_path, [thought_record(1)], name="default")
    assert ds.meta["layout"]["refine_prompt"] == REFINE_PROMPT

    base = ["--tokenizer_path", "tiny-random", "--output_path", str(tmp_path / "bad")]
    mixed = write_jsonl(
        tmp_path / "mixed.jsonl", [records[0], {**thought_record(5), "refine_prompt": "Other."}]
    )
    unnamed_first = write_jsonl(tmp_path / "unnamed.jsonl", [thought_record(6), records[1]])
    for argv, expected in [
        (["--input", str(write_jsonl(tmp_path / "own.jsonl", records)), "--refine_prompt", "Flag."],
         f"own.jsonl:1: refine_prompt: {own!r} differs from the prompt this corpus is laid out with, 'Flag.' (--refine_prompt)"),
        (["--input", str(mixed)], f"mixed.jsonl:2: refine_prompt: 'Other.' differs from the prompt this corpus is laid out with, {own!r}"),
        (["--input", str(unnamed_first)], f"unnamed.jsonl:2: refine_prompt: {own!r} differs"),
    ]:  # fmt: skip
        assert encode_main([*base, *argv]) == 2
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "bad" / "ptr").exists()


def test_errors_in_worker_processes_come_back_whole(tmp_path, capsys):
    """A record the chat template refuses inside a worker process stops the run at its file and line:
    the worker hands back the InputError itself (pickled), not a message parsed back."""
    from ptr.models import resolve

    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    for f in Path(resolve("tiny-random")).iterdir():
        if f.suffix in (".json", ".jinja"):
            shutil.copy(f, tok_dir / f.name)
    template = (tok_dir / "chat_template.jinja").read_text()
    guard = "{% for m in messages %}{% if 'FORBIDDEN' in m.content %}{{ raise_exception('no FORBIDDEN here') }}{% endif %}{% endfor %}"
    (tok_dir / "chat_template.jinja").write_text(guard + template)
    records = [thought_record(i) for i in range(300)]
    records[250]["query"] = "FORBIDDEN?"
    src = write_jsonl(tmp_path / "t.jsonl", records)
    argv = ["--tokenizer_path", str(tok_dir), "--input", str(src), "--output_path", str(tmp_path / "out")]
    for num_proc in ("1", "2"):
        assert encode_main([*argv, "--num_proc", num_proc]) == 2
        assert f"error: {src}:251: chat template: no FORBIDDEN here" in capsys.readouterr().err
    assert not (tmp_path / "out" / "ptr").exists()


# -- dtype ----------------------------------------------------------------------------------------


def test_dtype_follows_the_vocabulary_not_the_ids_seen():
    assert choose_dtype(None, 778) == "uint16"
    assert choose_dtype(None, 65535) == "uint16"
    assert choose_dtype(None, 65536) == "int32"  # the issue's bound: uint16 only below 65,536 entries
    assert choose_dtype(None, 151_936) == "int32"
    assert choose_dtype("int16", 32767) == "int16"
    assert choose_dtype("int32", 778) == "int32"
    for requested, vocab in [("int16", 32768), ("int16", 49152), ("uint16", 65536), ("uint16", 128_256)]:
        with pytest.raises(PtrError, match=f"--save_dtype {requested} cannot hold"):
            choose_dtype(requested, vocab)


@pytest.mark.smollm
def test_dtype_overflow_exits_2_before_writing(tmp_path, capsys):
    src = write_jsonl(tmp_path / "t.jsonl", [thought_record(1)])
    out = tmp_path / "out"
    argv = ["--tokenizer_path", "smollm2-135m-instruct", "--input", str(src), "--output_path", str(out)]
    assert encode_main([*argv, "--save_dtype", "int16"]) == 2
    err = capsys.readouterr().err
    assert "--save_dtype int16 cannot hold" in err and "49,152" in err
    assert not out.exists()


# -- inputs ---------------------------------------------------------------------------------------


@pytest.mark.integration  # a process of its own (or an MLflow store): not in make test-fast
def test_thoughts_jsonl_end_to_end_with_python_m(tmp_path, tiny_tok):
    """The issue's "done when": thoughts.jsonl → `python -m ptr.encode` → ShardDataset."""
    records = [thought_record(i, kept=i % 5 != 0) for i in range(20)]
    src = write_jsonl(tmp_path / "thoughts.jsonl", records)
    out = tmp_path / "shards"
    proc = subprocess.run(
        [sys.executable, "-m", "ptr.encode", "--tokenizer_path", "tiny-random", "--input", str(src),
         "--output_path", str(out), "--corpus_name", "run1", "--encode_type", "ptr", "--max_length", "512",
         "--merge_data", "--tokens_per_file", "1e3"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["records"] == 20 and summary["examples"] == 16 and summary["dropped"] == {"not_kept": 4}
    corpus = out / "run1"
    assert json.loads((corpus / "summary.json").read_text())["tokens"] == summary["tokens"]
    assert summary["shards"] > 1 and len(list(corpus.glob("shard-*"))) == summary["shards"]
    meta = json.loads((corpus / "meta.json").read_text())
    assert meta["tokenizer"]["name"] == "tiny-random" and len(meta["tokenizer"]["hash"]) == 64
    assert meta["dtype"] == "uint16" and meta["max_length"] == 512 and meta["config"]["merge_data"]
    assert meta["counts"]["examples"] == 16 and meta["loss_weights"] == [0.8, 0.1, 0.1]
    shutil.copytree(corpus, out / ".run1.old-1")  # what a replaced corpus looks like mid-swap: never read
    ds = ShardDataset(out, seed=3, rank=1, world_size=2)  # a folder of corpus folders
    assert len(ds.metas) == 1 and sum(len(ds[i]["doc_lens"]) for i in range(len(ds))) == 16
    texts = sorted(tiny_tok.decode(ids) for ids, _ in documents(ds))
    kept = [r for r in records if r["kept"]]
    assert texts == sorted(tiny_tok.apply_chat_template(ptr_messages(r), tokenize=False) for r in kept)
    assert ds.epoch_indices(0) == ShardDataset(out, seed=3, rank=1, world_size=2).epoch_indices(0)


def test_paper_sample_json_array(tmp_path, data_dir, tiny_tok):
    src = data_dir / "queries" / "PTR_thought_dataset_sampled.json"
    summary, ds = run_encode(tmp_path, None, input=str(src), max_length=1 << 20, num_proc=2)
    sample = json.loads(src.read_text())
    assert summary["records"] == len(sample) == summary["examples"] + sum(summary["dropped"].values())
    assert set(summary["tokens_by_segment"]) == {"ignore", "thought_1", "answer"}
    first = next(r for r in sample if r["question"].strip() and r["output1"].strip() and r["output2"].strip())
    item = ds[0]
    answer = tiny_tok.decode(item["input_ids"][item["segments"] == ANSWER])
    assert answer == first["output2"].strip() + "<|im_end|>"


def test_folder_of_jsonl_and_json_array_with_positions(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [thought_record(1)])
    write_jsonl(folder / "b.jsonl", [thought_record(2), thought_record(3)])
    (folder / "a.summary.json").write_text('{"not": "records"}')  # what `ptr thoughts` leaves beside
    summary, _ = run_encode(tmp_path, None, input=str(folder))
    assert summary["examples"] == 3
    array = tmp_path / "arr.jsonl"  # the paper's sample: one JSON array despite the name
    array.write_text(
        '[\n  {"question": "q", "output1": "t", "output2": "a"},\n  {"question": "q", "output1": "t"}\n]\n'
    )
    with pytest.raises(PtrError, match=rf"{array}\[1\]: output2: needs output1 \(the thought\)"):
        run_encode(tmp_path, None, input=str(array), name="arr")


LOADER = """
def load(path):
    for i in range(int(path or 3)):
        yield {"question": f"q{i}", "output1": f"thought {i}", "output2": f"answer {i}"}
"""


def test_data_loader_plugin(tmp_path, capsys):
    loader = tmp_path / "my_loader.py"
    loader.write_text(LOADER)
    summary, ds = run_encode(tmp_path, None, data_loader_path=str(loader))  # no --input: load(None)
    assert summary["examples"] == 3 and len(ds) == 3
    summary, _ = run_encode(tmp_path, None, data_loader_path=str(loader), input="5", name="five")
    assert summary["examples"] == 5

    bad = {
        "def loader(path):\n    return []\n": "defines no function load(path)",
        "def load(path):\n    return 7\n": "load() must return an iterable of dicts",
        "def load(path):\n    yield {'question': 'q', 'output1': 't', 'output2': 'a'}\n    yield {'question': 'q'}\n": (
            "(load() record 2): needs thoughts and answer"
        ),
        "def load(path):\n    yield ['not', 'a', 'dict']\n": "(load() record 1): expected a dict, got list",
    }
    for source, expected in bad.items():
        loader.write_text(source)
        argv = ["--tokenizer_path", "tiny-random", "--data_loader_path", str(loader)]
        assert encode_main([*argv, "--output_path", str(tmp_path / "bad")]) == 2
        assert expected in capsys.readouterr().err
        assert not (tmp_path / "bad" / "ptr").exists()


# -- bad input and atomic output ------------------------------------------------------------------


def test_bad_input_exits_2_with_file_line_and_publishes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    good = json.dumps(thought_record(1))
    cases = {
        f"{good}\n{good}\n{{broken\n": ":3: invalid JSON",
        f"{good}\n{json.dumps({'query': 'q', 'thoughts': []})}\n": ":2: answer: missing required field",
        f"{json.dumps({**thought_record(1), 'thoughts': 'x'})}\n": ":1: thoughts: must be a list",
        f"{json.dumps({**thought_record(1), 'kept': 'yes'})}\n": ":1: kept: must be true or false",
        f"{json.dumps({**thought_record(1), 'answer': {'model': 's'}})}\n": ":1: answer: expected a string or",
    }
    # An earlier corpus of the same name survives a failed run untouched.
    run_encode(tmp_path, [thought_record(9)], name="ptr")
    before = (out / "ptr" / "meta.json").read_text()
    for i, (body, expected) in enumerate(cases.items()):
        src = tmp_path / f"bad{i}.jsonl"
        src.write_text(body)
        if i == 0:  # once through the command's main()
            code = encode_main(
                ["--tokenizer_path", "tiny-random", "--input", str(src), "--output_path", str(out)]
            )
            err = capsys.readouterr().err
        else:
            with pytest.raises(PtrError) as info:
                encode(config(tokenizer_path="tiny-random", input=str(src), output_path=str(out)))
            code, err = info.value.exit_code, str(info.value)
        assert code == 2 and f"{src}{expected}" in err, err
        assert (out / "ptr" / "meta.json").read_text() == before
        assert sorted(p.name for p in out.iterdir()) == ["ptr"]  # no staging left behind


def test_bad_flags_exit_2(tmp_path, capsys):
    none_kept = write_jsonl(
        tmp_path / "none.jsonl", [thought_record(1, kept=False), thought_record(2, kept=False)]
    )
    base = ["--tokenizer_path", "tiny-random", "--output_path", str(tmp_path / "out")]
    for extra, expected in [
        ([], "give --input"),
        (
            ["--input", "x.jsonl", "--corpus_name", "../up"],
            "--corpus_name: '../up' is not a plain folder name",
        ),
        (["--input", "x.jsonl", "--max_length", "0"], "--max_length: Input should be greater than 0"),
        (["--input", str(tmp_path / "missing.jsonl")], "missing.jsonl: no such file or folder"),
        (["--input", str(none_kept)], "nothing to encode: 2 records read, dropped {'not_kept': 2}"),
        (
            ["--input", "x.jsonl", "--encode_type", "qa", "--overflow", "shorten_thoughts"],
            "--overflow shorten_thoughts needs thoughts: --encode_type ptr, not qa",
        ),
    ]:
        assert encode_main([*base, *extra]) == 2
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "out" / "ptr").exists() and not list((tmp_path / "out").glob(".ptr*"))


def test_shard_write_failure_leaves_no_shard(tmp_path, monkeypatch):
    writer = ShardWriter(tmp_path, "uint16", tokens_per_file=10**9)
    writer.add(np.arange(10), np.zeros(10), [4, 6])
    calls = {"n": 0}
    real_save = np.save

    def failing_save(f, value):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real_save(f, value)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError):
        writer.flush()
    assert not list(tmp_path.glob("shard-*"))


KILLABLE_LOADER = """
import time
from pathlib import Path

def load(path):
    for i in range(3500):  # ~3.5M characters: batches of 1M and 2M are encoded and written, then it blocks
        yield {"question": f"question {i} " * 5, "output1": f"thought {i} " * 60, "output2": f"answer {i} " * 40}
    Path(path).write_text("blocked")
    time.sleep(600)
"""


@pytest.mark.integration  # a process of its own (or an MLflow store): not in make test-fast
def test_killed_encoder_leaves_no_partial_output(tmp_path):
    loader = tmp_path / "slow_loader.py"
    loader.write_text(KILLABLE_LOADER)
    flag, out = tmp_path / "flag", tmp_path / "out"
    cmd = [sys.executable, "-m", "ptr", "encode", "--tokenizer_path", "tiny-random", "--data_loader_path",
           str(loader), "--input", str(flag), "--output_path", str(out), "--tokens_per_file", "2000",
           "--num_proc", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not (flag.exists() and list(out.glob(".ptr.staging-*/shard-00000"))):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "the encoder never reached the blocking loader"
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert list(out.glob(".ptr.staging-*/shard-*")), "shards were being written when it was killed"
    assert not (out / "ptr").exists()
    with pytest.raises(PtrError, match="no encoded corpus"):
        ShardDataset(out)
    # The next run clears what the dead one left and publishes a whole corpus.
    (tmp_path / "ok_loader.py").write_text(LOADER)
    summary, ds = run_encode(tmp_path, None, data_loader_path=str(tmp_path / "ok_loader.py"))
    assert len(ds) == 3 and sorted(p.name for p in out.iterdir()) == ["ptr"]


def test_batches_threads_and_worker_processes_write_the_same_shards(tmp_path, monkeypatch):
    from ptr.encode import stream

    records = [thought_record(i, n_thoughts=1 + i % 3) for i in range(1200)]
    _, whole = run_encode(tmp_path, records, name="whole", merge_data=True, max_length=512, num_proc=1)
    for name, chars in (
        ("FIRST_BATCH_CHARS", 5_000),
        ("BATCH_CHARS", 10_000),
        ("WORKER_BATCH_CHARS", 10_000),
    ):
        monkeypatch.setattr(stream, name, chars)  # ~20 batches, spread over the workers
    sizes = [len(b) for b in stream.batches(to_examples(records), 5_000, 10_000)]
    assert len(sizes) > 10 and sizes[0] < sizes[1] and sum(sizes) == len(records)
    _, one = run_encode(tmp_path, records, name="one", merge_data=True, max_length=512, num_proc=1)
    _, two = run_encode(tmp_path, records, name="two", merge_data=True, max_length=512, num_proc=2)
    assert len(whole) == len(one) == len(two)
    for i in range(len(one)):
        a, b, c = whole[i], one[i], two[i]
        assert all(
            (a[k] == b[k]).all() and (b[k] == c[k]).all() for k in ("input_ids", "segments", "doc_lens")
        )


@pytest.mark.integration  # a process of its own (or an MLflow store): not in make test-fast
def test_tracked_run_records_config_counts_and_data(tmp_path, monkeypatch):
    """With tracking on (the local sqlite store), the stage's run has its config, counts, meta and
    summary, and its input and output as datasets."""
    for key in ("MLFLOW_TRACKING_URI", "PTR_RUN_ID", "RANK"):
        # Set, then removed: monkeypatch restores only what it recorded, and mlflow.set_tracking_uri
        # writes MLFLOW_TRACKING_URI into the environment, which must not outlive this test.
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("PTR_TRACKING", "local")
    monkeypatch.setenv("PTR_LOCAL_DIR", str(tmp_path / ".ptr"))
    monkeypatch.setenv("PTR_EXPERIMENT", "encode-test")
    from mlflow import MlflowClient

    from ptr.tracking import tracking_uri

    summary, _ = run_encode(tmp_path, [thought_record(1), thought_record(2, kept=False)])
    client = MlflowClient(tracking_uri())
    [run] = client.search_runs(
        [client.get_experiment_by_name("encode-test").experiment_id], "tags.`ptr.stage` = 'encode'"
    )
    assert run.data.metrics["encode.examples"] == 1 and run.data.metrics["encode.tokens"] == summary["tokens"]
    assert run.data.params["tokenizer_path"] == "tiny-random" and run.data.params["encode_type"] == "ptr"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"meta.json", "summary.json"}
    contexts = {t.value for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert contexts == {"encode", "encoded"}


@pytest.mark.parametrize("num_thoughts", [1, 2])
def test_the_pipelines_qa_layout_keeps_the_records_the_ptr_layout_keeps(tmp_path, tiny_tok, num_thoughts):
    """IFT and PTR train on the same records: the pipeline encodes ``layout: qa`` to max_length minus
    the least the ptr layout adds (ptr.encode.layout.shortest_thought_turns), so answers that only
    just fit, or only just do not, fall on the same side in both corpora."""
    from ptr.pipeline.steps.training import encode

    rng = np.random.default_rng(0)
    records = []
    for i in range(40):  # answers from far below to far above the budget
        answer = " ".join(f"w{j}" for j in range(int(rng.integers(20, 140))))
        thoughts = [{"text": f"thought {t} " + "x " * int(rng.integers(1, 60))} for t in range(num_thoughts)]
        records.append(
            {"id": str(i), "query": f"Question {i}?", "thoughts": thoughts, "answer": answer, "kept": True}
        )
    thoughts = tmp_path / "thoughts"
    thoughts.mkdir()
    (thoughts / "thoughts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    train = {
        "base_model": "tiny-random",
        "max_length": 160,
        "overflow": "shorten_thoughts",
        "merge_data": False,
    }
    run = {"runtime": "kubernetes", "cluster": {}}  # no stage cache in this test
    kept = {}
    for layout in ("ptr", "qa"):
        summary = encode(run, {**train, "layout": layout}, str(thoughts), str(tmp_path / layout), "r")
        ds = ShardDataset(tmp_path / layout / layout)
        kept[layout] = [
            tiny_tok.decode(ds[i]["input_ids"]).split("Question ")[1].split("?")[0] for i in range(len(ds))
        ]
        assert summary["examples"] == len(ds)
    assert 0 < len(kept["ptr"]) < 40  # the budget drops some records and keeps others
    assert kept["qa"] == kept["ptr"]
