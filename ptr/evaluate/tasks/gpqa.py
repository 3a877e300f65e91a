"""``gpqa``: GPQA Diamond, 198 graduate-level four-option science questions. Its authors ask that the
questions not be published: nothing here prints them.

The correct answer and the three incorrect ones are shuffled into A-D with a fixed seed per question
(``shuffle_seed``; the same on every run, so runs compare), and the correct letter is recorded.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ptr.errors import InputError, PtrError
from ptr.evaluate.task import Doc, MultipleChoiceTask
from ptr.evaluate.task_registry import register_task

FIELDS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


class GpqaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shuffle_seed: int = 0


@register_task("gpqa", "gpqa_diamond")
class Gpqa(MultipleChoiceTask):
    fixed_labels = "ABCD"
    title = "GPQA Diamond"
    default_max_new_tokens = 384
    hub = ("Idavidrein/gpqa", "gpqa_diamond", "train")
    Options = GpqaOptions

    def _doc(self, index: int, row: dict, where, line) -> Doc:
        for name in FIELDS:
            if not str(row.get(name) or "").strip():
                raise InputError(where, line, "missing or empty", field=name)
        record = str(row.get("Record ID") or f"gpqa-{index}")
        answers = [str(row[name]).strip() for name in FIELDS[1:]]
        order = list(range(4))
        random.Random(f"gpqa:{self.options.shuffle_seed}:{record}").shuffle(order)
        choices = [answers[i] for i in order]
        return self.make_doc(record, str(row["Question"]), choices, order.index(0))

    def load_local(self, data_dir: Path) -> list[Doc]:
        path = self.data_path(data_dir, "gpqa", "gpqa_diamond.csv")
        docs = []
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [n for n in FIELDS if n not in (reader.fieldnames or [])]
            if missing:
                raise InputError(path, 1, f"missing columns {', '.join(missing)}")
            for row in reader:
                docs.append(self._doc(len(docs), row, path, reader.line_num))
        return docs

    def from_hub(self, index: int, row: dict) -> Doc:
        return self._doc(index, row, self.hub[0], index + 1)

    def fewshot(self, doc: Doc, k: int) -> list[tuple[str, str]]:
        if k:
            raise PtrError("task gpqa is 0-shot only (GPQA Diamond has no exemplar split)")
        return []
