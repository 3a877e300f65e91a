"""``arc_challenge`` and ``arc_easy``: grade-school science questions (AI2 ARC test splits).

Gold: ``answerKey``, mapped through the choice labels (a few items use "1"-"4", or 3 or 5 options);
options are re-lettered A, B, … in their given order. Exemplars: the first questions of the dev split.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from ptr.errors import InputError
from ptr.evaluate.task import Doc, MultipleChoiceTask
from ptr.evaluate.task_registry import register_task
from ptr.records import iter_jsonl


def stem_choices_doc(row: dict, where, line) -> Doc:
    """A row in the AI2 layout that ARC and CommonsenseQA share: ``{id, question: {stem, choices:
    [{label, text}]}, answerKey}``."""
    q = row.get("question")
    if not isinstance(q, dict) or not isinstance(q.get("choices"), list) or "stem" not in q:
        raise InputError(where, line, "expected {stem, choices: [{label, text}]}", field="question")
    labels = [str(c.get("label")) for c in q["choices"]]
    key = str(row.get("answerKey", ""))
    if key not in labels:
        raise InputError(where, line, f"{key!r} is not one of the choice labels {labels}", field="answerKey")
    texts = [str(c.get("text", "")) for c in q["choices"]]
    return MultipleChoiceTask.make_doc(str(row.get("id")), q["stem"], texts, labels.index(key))


def hub_stem_choices_doc(row: dict, where, line) -> Doc:
    """The same from a hub row, whose choices are ``{label: [...], text: [...]}`` beside the question."""
    choices = row["choices"]
    as_local = {
        "id": row["id"],
        "answerKey": row["answerKey"],
        "question": {
            "stem": row["question"],
            "choices": [
                {"label": lab, "text": t} for lab, t in zip(choices["label"], choices["text"], strict=True)
            ],
        },
    }
    return stem_choices_doc(as_local, where, line)


class _Arc(MultipleChoiceTask):
    data_folder = "arc"
    folder: str = ""
    default_max_new_tokens = 256

    def _read(self, split: str) -> list[Doc]:
        path = self.data_path(self.data_dir, "arc", self.folder, f"{self.folder}-{split}.jsonl")
        return [
            stem_choices_doc(row, path, line)
            for line, row in iter_jsonl(path, required=("question", "answerKey"))
        ]

    def load_local(self, data_dir: Path) -> list[Doc]:
        return self._read("Test")

    def from_hub(self, index: int, row: dict) -> Doc:
        return hub_stem_choices_doc(row, self.hub[0], index + 1)

    @cached_property
    def _pool(self) -> list[tuple[str, str]]:
        if self.data_dir is None:
            import datasets

            rows = datasets.load_dataset(self.hub[0], self.hub[1], split="validation")
            return [self.shot(self.from_hub(i, dict(r))) for i, r in enumerate(rows)][:25]
        return [self.shot(d) for d in self._read("Dev")]

    def fewshot_pool(self) -> list[tuple[str, str]]:
        return self._pool


@register_task("arc_challenge", "arc_c")
class ArcChallenge(_Arc):
    title = "ARC-Challenge"
    folder = "ARC-Challenge"
    hub = ("allenai/ai2_arc", "ARC-Challenge", "test")


@register_task("arc_easy", "arc_e")
class ArcEasy(_Arc):
    title = "ARC-Easy"
    folder = "ARC-Easy"
    hub = ("allenai/ai2_arc", "ARC-Easy", "test")
