"""``mmlu``: 57 subjects of four-option questions (test split, 14,042). Gold: a letter A-D.

Exemplars: the subject's five dev questions ("The answer is (C).") or, with ``fewshot_source: "cot"``,
the subject's chain-of-thought exemplars from ``mmlu/lib_prompt/mmlu-cot.json``.
"""

from __future__ import annotations

import csv
import json
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ptr.errors import InputError, PtrError
from ptr.evaluate.task import Doc, MultipleChoiceTask
from ptr.evaluate.task_registry import register_task


class MmluOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subjects: list[str] | None = None  # None: all
    split: Literal["test", "val"] = "test"
    fewshot_source: Literal["dev", "cot"] = "dev"


def read_subject_csv(path: Path, subject: str, prefix: str) -> list[Doc]:
    docs = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            if not row:
                continue
            if len(row) != 6:
                raise InputError(
                    path, reader.line_num, f"expected 6 columns (question,A,B,C,D,answer), got {len(row)}"
                )
            answer = row[5].strip().upper()
            if answer not in ("A", "B", "C", "D"):
                raise InputError(
                    path, reader.line_num, f"must be a letter A-D, got {row[5]!r}", field="answer"
                )
            docs.append(
                MultipleChoiceTask.make_doc(
                    f"{prefix}-{subject}-{len(docs)}", row[0], row[1:5], "ABCD".index(answer), subject=subject
                )
            )
    return docs


@register_task("mmlu")
class Mmlu(MultipleChoiceTask):
    fixed_labels = "ABCD"
    title = "MMLU"
    default_max_new_tokens = 256
    hub = ("cais/mmlu", "all", "test")
    Options = MmluOptions

    def _subjects(self, folder: Path) -> list[str]:
        split = self.options.split
        found = sorted(p.name[: -len(f"_{split}.csv")] for p in folder.glob(f"*_{split}.csv"))
        if not found:
            raise InputError(folder, None, f"no *_{split}.csv files: task mmlu reads them")
        wanted = self.options.subjects
        if wanted:
            missing = sorted(set(wanted) - set(found))
            if missing:
                raise PtrError(f"task mmlu: unknown subjects {', '.join(missing)}")
            return [s for s in found if s in wanted]
        return found

    def load_local(self, data_dir: Path) -> list[Doc]:
        split = self.options.split
        folder = self.data_path(data_dir, "mmlu", "data", split)
        docs = []
        for subject in self._subjects(folder):
            docs += read_subject_csv(folder / f"{subject}_{split}.csv", subject, "mmlu")
        return docs

    def from_hub(self, index: int, row: dict) -> Doc:
        return self.make_doc(
            f"mmlu-{row['subject']}-{index}",
            row["question"],
            row["choices"],
            int(row["answer"]),
            subject=row["subject"],
        )

    def load_hub(self) -> list[Doc]:
        docs = super().load_hub()
        if self.options.subjects:
            docs = [d for d in docs if d.data["subject"] in self.options.subjects]
        return docs

    @cached_property
    def _dev(self) -> dict[str, list[tuple[str, str]]]:
        if self.data_dir is None:
            import datasets

            rows = datasets.load_dataset("cais/mmlu", "all", split="dev")
            out: dict[str, list] = {}
            for i, r in enumerate(rows):
                doc = self.make_doc(f"dev-{i}", r["question"], r["choices"], int(r["answer"]))
                out.setdefault(r["subject"], []).append(self.shot(doc))
            return out
        if self.options.fewshot_source == "cot":
            path = self.data_path(self.data_dir, "mmlu", "lib_prompt", "mmlu-cot.json")
            return {subject: parse_cot(text) for subject, text in json.loads(path.read_text()).items()}
        folder = self.data_path(self.data_dir, "mmlu", "data", "dev")
        pools = {}
        for path in sorted(folder.glob("*_dev.csv")):
            subject = path.name[: -len("_dev.csv")]
            pools[subject] = [self.shot(d) for d in read_subject_csv(path, subject, "dev")]
        return pools

    def fewshot(self, doc: Doc, k: int) -> list[tuple[str, str]]:
        if k == 0:
            return []
        pool = self._dev.get(doc.data.get("subject", ""), [])
        if len(pool) < k:
            raise PtrError(
                f"task mmlu: num_fewshots {k} asked, but subject {doc.data.get('subject')} has {len(pool)} exemplars"
            )
        return pool[:k]


def parse_cot(text: str) -> list[tuple[str, str]]:
    """``Q: … A: Let's think step by step. … The answer is (C).`` blocks after a one-line header."""
    out = []
    for block in text.split("\n\nQ: ")[1:]:
        question, sep, answer = block.partition("\nA: ")
        if sep:
            out.append((question.strip(), answer.strip()))
    return out
