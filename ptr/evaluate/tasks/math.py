"""``math`` (the full MATH test set, 5,000) and ``math500`` (MATH-500): competition problems whose
answers are compared symbolically with ``math-verify`` (no paid judge).

Gold: the last ``\\boxed{}`` of the solution (MATH) or the ``answer`` field (MATH-500). The prompt is
the paper's: the problem wrapped in an instruction to end with ``Answer: $ANSWER``; its five
exemplars are in ``fewshot/math_fewshot_cot.txt``.
"""

from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path

from ptr.errors import InputError
from ptr.evaluate.extract import answer_statements, boxed, clean_statement
from ptr.evaluate.task import Doc, Task, parse_qa_file
from ptr.evaluate.task_registry import register_task
from ptr.records import iter_jsonl

WRAPPER = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $ANSWER (without quotes) where $ANSWER is the answer to the problem.\n\n{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:", and you do not need to use a \\boxed command.'
)
SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


def _timeout() -> int | None:
    """math-verify times out with SIGALRM, which only the main thread may use."""
    return 5 if threading.current_thread() is threading.main_thread() else None


def _parse(expr: str):
    from math_verify import parse

    return parse(expr, parsing_timeout=_timeout())


def extract_math_answer(output: str) -> str | None:
    """The answer as LaTeX: a ``\\boxed{}``, else the text after the last ``Answer:``, else whatever
    math-verify finds in the whole reply."""
    inner = boxed(output)
    if inner is not None and inner.strip():
        return inner.strip()
    for statement in answer_statements(output):
        s = clean_statement(statement)
        if s:
            return s
    parsed = _parse(output)
    return str(parsed[-1]) if parsed else None


def equivalent(extracted: str | None, gold: str) -> bool:
    if extracted is None:
        return False
    from math_verify import verify

    def as_latex(s: str) -> str:
        return s if "$" in s or "\\(" in s else f"${s}$"

    gold_parsed = _parse(as_latex(gold))
    if not gold_parsed:
        return extracted.strip() == gold.strip()
    # as LaTeX first; then as written, for plain-text answers such as "(3, pi/2)"
    for candidate in (as_latex(extracted), extracted):
        pred_parsed = _parse(candidate)
        if pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=_timeout()):
            return True
    return False


class _MathTask(Task):
    data_folder = "math"
    metric = "accuracy"
    default_max_new_tokens = 512

    def make_doc(self, doc_id: str, problem: str, gold: str, **data) -> Doc:
        return Doc(doc_id, WRAPPER.format(problem=problem.strip()), gold.strip(), data)

    @cached_property
    def _pool(self) -> list[tuple[str, str]]:
        if self.data_dir is None:
            return []
        return parse_qa_file(self.data_path(self.data_dir, "fewshot", "math_fewshot_cot.txt"))

    def fewshot_pool(self) -> list[tuple[str, str]]:
        return self._pool

    def extract(self, output: str, doc: Doc):
        return extract_math_answer(output)

    def score(self, extracted, doc: Doc) -> float:
        return float(equivalent(extracted, doc.gold))


@register_task("math", "hendrycks_math")
class Math(_MathTask):
    title = "MATH"
    hub = ("EleutherAI/hendrycks_math", None, "test")

    def load_local(self, data_dir: Path) -> list[Doc]:
        path = self.data_path(data_dir, "math", "test.jsonl")
        docs = []
        for line, row in iter_jsonl(path, required=("problem", "solution")):
            gold = boxed(str(row["solution"]))
            if gold is None:
                raise InputError(path, line, "no \\boxed{} answer", field="solution")
            docs.append(
                self.make_doc(
                    f"math-{row.get('idx', len(docs))}",
                    str(row["problem"]),
                    gold,
                    level=row.get("level"),
                    type=row.get("type"),
                )
            )
        return docs

    def load_hub(self) -> list[Doc]:
        import datasets

        docs = []
        for subject in SUBJECTS:
            for row in datasets.load_dataset(self.hub[0], subject, split="test"):
                docs.append(
                    self.make_doc(
                        f"math-{len(docs)}", row["problem"], boxed(row["solution"]) or "", type=subject
                    )
                )
        return docs


@register_task("math500", "math_500")
class Math500(_MathTask):
    title = "MATH-500"
    hub = ("HuggingFaceH4/MATH-500", None, "test")

    def load_local(self, data_dir: Path) -> list[Doc]:
        path = self.data_path(data_dir, "math", "math500", "test.jsonl")
        return [
            self.make_doc(
                str(row.get("unique_id") or f"math500-{line}"),
                str(row["problem"]),
                str(row["answer"]),
                level=row.get("level"),
            )
            for line, row in iter_jsonl(path, required=("problem", "answer"))
        ]

    def from_hub(self, index: int, row: dict) -> Doc:
        return self.make_doc(str(row.get("unique_id") or f"math500-{index}"), row["problem"], row["answer"])
