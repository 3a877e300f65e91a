"""``hellaswag``: pick the most plausible continuation of a scene (validation, 10,042), asked
generatively with the four endings lettered A-D. Gold: ``label`` 0-3 as a letter.

The local file is already cleaned (activity label prefixed, WikiHow markers removed); rows from the hub
get the same cleaning. Exemplars come from the hub's train split (the data folder holds none).
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

from ptr.errors import InputError, PtrError
from ptr.evaluate.task import Doc, MultipleChoiceTask
from ptr.evaluate.task_registry import register_task
from ptr.records import iter_jsonl

STEM = "Which ending continues the text most plausibly?\n{ctx} ..."


def clean(text: str) -> str:
    text = re.sub(r"\[[a-z]+\]", " ", text.replace(" [title]", ". "))
    return " ".join(text.split())


def hellaswag_doc(doc_id: str, ctx: str, endings: list, label, where, line) -> Doc:
    if not isinstance(endings, list) or len(endings) != 4:
        raise InputError(where, line, "expected 4 endings", field="endings")
    try:
        gold = int(label)
    except (TypeError, ValueError):
        raise InputError(where, line, f"must be 0-3, got {label!r}", field="label") from None
    if not 0 <= gold <= 3:
        raise InputError(where, line, f"must be 0-3, got {label!r}", field="label")
    return MultipleChoiceTask.make_doc(doc_id, STEM.format(ctx=ctx), [str(e) for e in endings], gold)


@register_task("hellaswag")
class HellaSwag(MultipleChoiceTask):
    fixed_labels = "ABCD"
    title = "HellaSwag"
    default_max_new_tokens = 128
    hub = ("Rowan/hellaswag", None, "validation")

    def load_local(self, data_dir: Path) -> list[Doc]:
        path = self.data_path(data_dir, "hellaswag", "hellaswag_val_full.jsonl")
        return [
            hellaswag_doc(
                f"hellaswag-{row.get('idx', line - 1)}",
                str(row["ctx"]),
                row["endings"],
                row["label"],
                path,
                line,
            )
            for line, row in iter_jsonl(path, required=("ctx", "endings", "label"))
        ]

    def from_hub(self, index: int, row: dict) -> Doc:
        ctx = clean(f"{row['activity_label']}: {row['ctx']}")
        return hellaswag_doc(
            f"hellaswag-{index}",
            ctx,
            [clean(e) for e in row["endings"]],
            row["label"],
            self.hub[0],
            index + 1,
        )

    @cached_property
    def _pool(self) -> list[tuple[str, str]]:
        try:
            import datasets

            rows = datasets.load_dataset(self.hub[0], split="train").select(range(10))
        except Exception as err:
            raise PtrError(
                f"task hellaswag: k-shot exemplars come from the hub's train split, which failed to load: {err}"
            ) from None
        return [self.shot(self.from_hub(i, dict(r))) for i, r in enumerate(rows)]

    def fewshot_pool(self) -> list[tuple[str, str]]:
        return self._pool
