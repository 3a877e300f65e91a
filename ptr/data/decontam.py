"""Decontamination: drop queries that share a long word n-gram with an evaluation question.

Texts are lower-cased and split into words of two or more letters or digits; each word is hashed once and every n-gram gets a
64-bit polynomial hash of its word hashes, computed for all texts at once with numpy. The evaluation
side is a sorted array of hashes, so a query is checked with one binary search per n-gram. Evaluation
questions shorter than ``n`` words (but at least ``min_words``) are matched whole: a query contains
the contaminating question as a contiguous word sequence.

What is indexed per benchmark (folders laid out like ../shared/data): the question text a model is
shown — GSM8K ``question``, MATH ``problem``, MMLU question column, ARC and CommonsenseQA ``stem``,
HellaSwag ``ctx`` (without its activity label), WinoGrande ``sentence`` (each side of the blank), DROP passage and question,
GPQA ``Question``, HumanEval ``prompt``, and XSum ``document`` in full: a query that pastes a test
article to summarize is contaminated however long the article is, and hashing keeps long documents
cheap (the whole index builds in seconds).
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptr.errors import InputError, PtrError

_WORD = re.compile(r"[^\W_]+")  # letters and digits; "_" separates (code, blanks)
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio); arithmetic wraps mod 2^64


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngram_words(text: str) -> list[str]:
    """The words n-grams are made of: single characters left out, so that a run of formula variables
    and digits (``F_0 = 0, F_1 = 1, F_n = …``) cannot make a 13-gram shared by unrelated texts."""
    return [w for w in _WORD.findall(text.lower()) if len(w) > 1]


def normalize(text: str) -> str:
    """The text as lower-case words joined by single spaces (near-duplicate key)."""
    return " ".join(words(text))


# -- evaluation sets ----------------------------------------------------------------------------------


def _jsonl_rows(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(path, lineno, f"invalid JSON ({err.msg})") from None
                if isinstance(row, dict):
                    yield row


def _csv_rows(path: Path, header: bool) -> Iterator:
    with open(path, encoding="utf-8", newline="") as f:
        yield from (csv.DictReader(f) if header else csv.reader(f))


def _stem(row: dict) -> str | None:
    q = row.get("question")
    return q.get("stem") if isinstance(q, dict) else q if isinstance(q, str) else None


def _hellaswag_ctx(row: dict) -> str | None:
    ctx = row.get("ctx")
    if not isinstance(ctx, str):
        return None
    label = row.get("activity_label")
    if isinstance(label, str) and ctx.startswith(label + ": "):
        return ctx[len(label) + 2 :]
    return ctx.split(": ", 1)[1] if ": " in ctx[:80] else ctx


def _drop_context(row: dict) -> str | None:
    ctx = row.get("context") or row.get("passage")
    if not isinstance(ctx, str):
        return None
    ctx = ctx.removeprefix("Passage: ")
    return ctx.removesuffix("Answer:").rstrip()


def _blank_parts(row: dict) -> list[str] | None:
    """WinoGrande: the text on each side of the blank, since a copied item fills the blank in."""
    sentence = row.get("sentence")
    return sentence.split("_") if isinstance(sentence, str) else None


def _field(name: str) -> Callable[[dict], str | None]:
    return lambda row: row.get(name) if isinstance(row.get(name), str) else None


@dataclass(frozen=True)
class EvalSource:
    name: str
    pattern: str  # glob under the data directory
    kind: str  # jsonl, csv (no header, question first) or csv_header
    text: Callable | None = None  # row -> question text (or texts), None to skip the row


EVAL_SOURCES = (
    EvalSource("gsm8k", "gsm8k/*.jsonl", "jsonl", _field("question")),
    EvalSource("math", "math/**/*.jsonl", "jsonl", _field("problem")),
    EvalSource("mmlu", "mmlu/data/**/*.csv", "csv"),
    EvalSource("arc", "arc/**/*.jsonl", "jsonl", _stem),
    EvalSource("commonsenseqa", "commonsenseqa/*.jsonl", "jsonl", _stem),
    EvalSource("hellaswag", "hellaswag/*.jsonl", "jsonl", _hellaswag_ctx),
    EvalSource("winogrande", "winogrande/**/*.jsonl", "jsonl", _blank_parts),
    EvalSource("drop", "drop/*.jsonl", "jsonl", _drop_context),
    EvalSource("gpqa", "gpqa/*.csv", "csv_header"),
    EvalSource("humaneval", "humaneval/*.jsonl*", "jsonl", _field("prompt")),
    EvalSource("xsum", "xsum/*.jsonl", "jsonl", _field("document")),
)


def eval_questions(data_dir) -> dict[str, list[str]]:
    """Question texts per evaluation set found under ``data_dir`` (sets with no files are absent)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise PtrError(f"--decontaminate_dir {data_dir}: not a directory")
    found: dict[str, list[str]] = {}
    for src in EVAL_SOURCES:
        texts: list[str] = []
        for path in sorted(root.glob(src.pattern)):
            if src.kind == "jsonl":
                for row in _jsonl_rows(path):
                    got = src.text(row)
                    texts += [got] if isinstance(got, str) else got or []
            elif src.kind == "csv":
                texts += [row[0] for row in _csv_rows(path, header=False) if row and row[0]]
            else:
                texts += [row["Question"] for row in _csv_rows(path, header=True) if row.get("Question")]
        if texts:
            texts = [t.strip() for t in texts if t.strip()]
            found[src.name] = list(dict.fromkeys(texts))  # DROP repeats each passage per question
    if not found:
        names = ", ".join(s.name for s in EVAL_SOURCES)
        raise PtrError(f"--decontaminate_dir {data_dir}: found no evaluation sets (looked for {names})")
    return found


# -- hashing ------------------------------------------------------------------------------------------


class _Words:
    """All texts' word hashes in one flat array, with each text's start and length."""

    def __init__(self, texts: list[str]):
        lists = [ngram_words(t) for t in texts]
        self.lengths = np.fromiter((len(w) for w in lists), dtype=np.int64, count=len(lists))
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        total = int(self.lengths.sum())
        # Python's string hash (SipHash) mixes well; it is stable within one process, which is all
        # the index needs: it is built and queried in the same run.
        flat = np.fromiter(map(hash, itertools.chain.from_iterable(lists)), dtype=np.int64, count=total)
        self.flat = flat.view(np.uint64)

    def grams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every n-gram that lies inside one text, and the index of that text."""
        m = len(self.flat) - n + 1
        if m <= 0:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        h = np.zeros(m, np.uint64)
        for j in range(n):
            h = h * _MULT + self.flat[j : j + m]
        owner = np.repeat(np.arange(len(self.lengths)), self.lengths)[:m]
        inside = np.arange(m) + n <= self.starts[owner] + self.lengths[owner]
        return h[inside], owner[inside]

    def whole(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of the texts that are exactly ``length`` words long (same polynomial as grams)."""
        idx = np.flatnonzero(self.lengths == length)
        h = np.zeros(len(idx), np.uint64)
        for j in range(length):
            h = h * _MULT + self.flat[self.starts[idx] + j]
        return h, idx


class NgramIndex:
    """Evaluation n-grams; :meth:`match` names the set a query shares a long n-gram with."""

    def __init__(self, questions: dict[str, list[str]], n: int = 13, min_words: int = 8):
        if n < 1 or min_words < 1:
            raise PtrError("n-gram sizes must be >= 1")
        self.n, self.min_words = n, min(min_words, n)
        self.set_names = list(questions)
        self.counts = {name: len(texts) for name, texts in questions.items()}
        texts = [t for name in self.set_names for t in questions[name]]
        set_of_text = np.repeat(np.arange(len(self.set_names)), [len(questions[s]) for s in self.set_names])
        w = _Words(texts)
        # length -> (sorted unique hashes, eval set id per hash); length n holds all n-grams
        self.tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        h, owner = w.grams(n)
        self.tables[n] = self._table(h, set_of_text[owner])
        for length in range(self.min_words, n):
            h, idx = w.whole(length)
            if len(h):
                self.tables[length] = self._table(h, set_of_text[idx])

    @staticmethod
    def _table(hashes: np.ndarray, sets: np.ndarray):
        uniq, first = np.unique(hashes, return_index=True)
        return uniq, sets[first]

    @property
    def size(self) -> int:
        return sum(len(t[0]) for t in self.tables.values())

    def match(self, texts: list[str]) -> list[str | None]:
        """Per text, the evaluation set it is contaminated by (the first found), or None."""
        result: list[str | None] = [None] * len(texts)
        w = _Words(texts)
        for length, (table, sets) in self.tables.items():
            h, owner = w.grams(length)
            if not len(h) or not len(table):
                continue
            pos = np.minimum(np.searchsorted(table, h), len(table) - 1)
            hit = table[pos] == h
            for i, s in zip(owner[hit].tolist(), sets[pos[hit]].tolist(), strict=True):
                if result[i] is None:
                    result[i] = self.set_names[s]
        return result
