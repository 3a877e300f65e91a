"""``commonsenseqa``: five-option commonsense questions (dev split, 1,221; test labels are hidden).

Exemplars: the 7 chain-of-thought exemplars of Wei et al. (``commonsenseqa/lib_prompt/prompt_original.txt``),
re-lettered to the upper-case options used here.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

from ptr.evaluate.task import Doc, MultipleChoiceTask
from ptr.evaluate.task_registry import register_task
from ptr.evaluate.tasks.arc import hub_stem_choices_doc, stem_choices_doc
from ptr.records import iter_jsonl


def parse_cot_prompt(path: Path) -> list[tuple[str, str]]:
    """``Q: …`` / ``Answer Choices:`` / ``(a) …`` / ``A: … So the answer is (e).`` blocks."""
    out = []
    for block in Path(path).read_text(encoding="utf-8").strip().split("\n\n"):
        m = re.match(r"Q:\s*(.*?)\nAnswer Choices:\s*\n(.*?)\nA:\s*(.*)", block.strip(), re.S)
        if not m:
            continue
        stem, choices, answer = m.groups()
        options = re.findall(r"^\(([a-e])\)\s*(.*)$", choices, re.M)
        lines = "\n".join(f"({label.upper()}) {text.strip()}" for label, text in options)
        answer = re.sub(r"\(([a-e])\)", lambda g: f"({g.group(1).upper()})", answer.strip())
        out.append((f"{stem.strip()}\nOptions:\n{lines}", answer))
    return out


@register_task("commonsenseqa", "csqa")
class CommonsenseQA(MultipleChoiceTask):
    fixed_labels = "ABCDE"
    title = "CommonsenseQA"
    default_max_new_tokens = 192
    hub = ("tau/commonsense_qa", None, "validation")

    def load_local(self, data_dir: Path) -> list[Doc]:
        path = self.data_path(data_dir, "commonsenseqa", "dev_rand_split.jsonl")
        return [
            stem_choices_doc(row, path, line)
            for line, row in iter_jsonl(path, required=("question", "answerKey"))
        ]

    def from_hub(self, index: int, row: dict) -> Doc:
        return hub_stem_choices_doc(row, self.hub[0], index + 1)

    @cached_property
    def _pool(self) -> list[tuple[str, str]]:
        if self.data_dir is None:
            import datasets

            rows = datasets.load_dataset(self.hub[0], split="train").select(range(10))
            return [self.shot(self.from_hub(i, dict(r))) for i, r in enumerate(rows)]
        return parse_cot_prompt(
            self.data_path(self.data_dir, "commonsenseqa", "lib_prompt", "prompt_original.txt")
        )

    def fewshot_pool(self) -> list[tuple[str, str]]:
        return self._pool
