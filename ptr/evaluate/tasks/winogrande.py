"""``winogrande``: fill the blank with one of two options (dev, 1,267). Gold: "1" or "2" → (A) or (B).

Exemplars: the paper's five chain-of-thought exemplars (``fewshot/winogrande_fewshot_cot.txt``).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from ptr.errors import InputError
from ptr.evaluate.task import Doc, MultipleChoiceTask, parse_qa_file
from ptr.evaluate.task_registry import register_task
from ptr.records import iter_jsonl


def winogrande_doc(row: dict, where, line) -> Doc:
    answer = str(row.get("answer", ""))
    if answer not in ("1", "2"):
        raise InputError(where, line, f"must be '1' or '2', got {answer!r}", field="answer")
    doc_id = str(row.get("qID") or f"winogrande-{line}")
    return MultipleChoiceTask.make_doc(
        doc_id, str(row["sentence"]), [str(row["option1"]), str(row["option2"])], int(answer) - 1
    )


@register_task("winogrande")
class WinoGrande(MultipleChoiceTask):
    fixed_labels = "AB"
    title = "WinoGrande"
    default_max_new_tokens = 160
    instruction = "Which option fills the blank (_)? Answer with its letter."
    hub = ("allenai/winogrande", "winogrande_xl", "validation")

    def load_local(self, data_dir: Path) -> list[Doc]:
        path = self.data_path(data_dir, "winogrande", "official", "dev.jsonl")
        required = ("sentence", "option1", "option2", "answer")
        return [winogrande_doc(row, path, line) for line, row in iter_jsonl(path, required=required)]

    def from_hub(self, index: int, row: dict) -> Doc:
        return winogrande_doc({**row, "qID": f"winogrande-{index}"}, self.hub[0], index + 1)

    @cached_property
    def _pool(self) -> list[tuple[str, str]]:
        if self.data_dir is None:
            import datasets

            rows = datasets.load_dataset(self.hub[0], self.hub[1], split="train").select(range(10))
            return [self.shot(self.from_hub(i, dict(r))) for i, r in enumerate(rows)]
        return parse_qa_file(self.data_path(self.data_dir, "fewshot", "winogrande_fewshot_cot.txt"))

    def fewshot_pool(self) -> list[tuple[str, str]]:
        return self._pool
