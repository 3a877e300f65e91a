"""``drop``: reading comprehension with discrete reasoning (first 2,000 dev questions). Gold: every
acceptable answer (``ref_text`` split on ``|``); scored by DROP F1 (the metric) and exact match,
each the best over the alternatives.

Exemplars: the paper's eight chain-of-thought exemplars (``fewshot/drop_fewshot.txt``).
"""

from __future__ import annotations

import re
import string
from functools import cached_property
from pathlib import Path

from ptr.errors import InputError
from ptr.evaluate.extract import answer_statements, clean_statement
from ptr.evaluate.task import Doc, Scored, Task, parse_qa_file
from ptr.evaluate.task_registry import register_task
from ptr.records import iter_jsonl

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def _number(token: str) -> str | None:
    try:
        return str(float(token.replace(",", "")))
    except ValueError:
        return None


def normalize_tokens(text: str) -> list[str]:
    """DROP's normalization: lower case, articles and punctuation out (but not inside numbers), numbers
    in one canonical form."""
    out = []
    for token in re.split(r"[ \-]", text.lower()):
        num = _number(token.strip("".join(_PUNCT - {".", ","})).rstrip(".,"))
        if num is not None:
            out.append(num)
            continue
        token = "".join(c for c in token if c not in _PUNCT)
        token = _ARTICLES.sub(" ", token).strip()
        out.extend(token.split())
    return out


def em_f1(prediction: str, gold: str) -> tuple[float, float]:
    pred, ref = normalize_tokens(prediction), normalize_tokens(gold)
    em = float(pred == ref and bool(ref))
    pred_set, ref_set = set(pred), set(ref)
    if not pred_set or not ref_set:
        return em, float(pred_set == ref_set)
    # an answer with numbers is right only if it has one of them
    ref_numbers = {t for t in ref_set if _number(t) is not None}
    if ref_numbers and not ref_numbers & pred_set:
        return em, 0.0
    common = len(pred_set & ref_set)
    if common == 0:
        return em, 0.0
    precision, recall = common / len(pred_set), common / len(ref_set)
    return em, 2 * precision * recall / (precision + recall)


def best_em_f1(prediction: str, golds: list[str]) -> tuple[float, float]:
    scores = [em_f1(prediction, g) for g in golds] or [(0.0, 0.0)]
    return max(s[0] for s in scores), max(s[1] for s in scores)


def extract_span(output: str) -> str:
    """The answer a reply states ("The answer is 50.6."), else its first non-empty line."""
    for statement in answer_statements(output):
        s = clean_statement(statement)
        if s:
            return s
    for line in output.splitlines():
        if line.strip():
            return line.strip().rstrip(".")
    return ""


@register_task("drop")
class Drop(Task):
    title = "DROP"
    metric = "f1"
    default_max_new_tokens = 192
    instruction = (
        'Think step by step, then give the final answer (a number, date or short span) as "The answer is X."'
    )
    hub = ("ucinlp/drop", None, "validation")

    def load_local(self, data_dir: Path) -> list[Doc]:
        path = self.data_path(data_dir, "drop", "drop_v0_dev.first2000.jsonl")
        docs = []
        for line, row in iter_jsonl(path, required=("context", "ref_text")):
            golds = [g.strip() for g in str(row["ref_text"]).split("|") if g.strip()]
            if not golds:
                raise InputError(path, line, "no reference answer", field="ref_text")
            question = re.sub(r"\s*Answer:\s*$", "", str(row["context"])).strip()
            docs.append(Doc(f"drop-{len(docs)}", question, golds))
        return docs

    def from_hub(self, index: int, row: dict) -> Doc:
        spans = row["answers_spans"]["spans"]
        question = f"Passage: {row['passage']}\nQuestion: {row['question']}"
        return Doc(
            str(row.get("query_id") or f"drop-{index}"), question, [", ".join(spans)] if spans else [""]
        )

    @cached_property
    def _pool(self) -> list[tuple[str, str]]:
        if self.data_dir is None:
            return []
        return parse_qa_file(self.data_path(self.data_dir, "fewshot", "drop_fewshot.txt"))

    def fewshot_pool(self) -> list[tuple[str, str]]:
        return self._pool

    def extract(self, output: str, doc: Doc) -> str:
        return extract_span(output)

    def score_outputs(self, outputs: list[str], docs: list[Doc]) -> list[Scored]:
        out = []
        for output, doc in zip(outputs, docs, strict=True):
            span = self.extract(output, doc)
            em, f1 = best_em_f1(span, doc.gold)
            out.append(Scored(span, f1, em == 1.0, {"exact_match": em}))
        return out
