"""``gsm8k``: grade-school math word problems (test split, 1,319). Gold: the number after ``####``.

Exemplars: the 8 chain-of-thought problems of Wei et al. (``gsm8k/prompt_original.txt``), or the
paper's own file (``fewshot_source: "paper"``, ``fewshot/gsm8k_fewshot_cot.txt``).
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ptr.errors import InputError
from ptr.evaluate.extract import normalize_number
from ptr.evaluate.task import Doc, NumericTask, parse_qa_file
from ptr.evaluate.task_registry import register_task
from ptr.records import iter_jsonl


class Gsm8kOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fewshot_source: Literal["standard", "paper"] = "standard"


def gold_of(answer: str) -> str | None:
    if "####" not in answer:
        return None
    return normalize_number(answer.split("####")[-1].strip())


def worked_answer(answer: str) -> str:
    """A train-split solution as an exemplar: calculator notes removed, ``#### N`` → "The answer is N."."""
    body, _, final = answer.rpartition("####")
    body = re.sub(r"<<[^>]*>>", "", body).strip()
    return f"{body}\nThe answer is {final.strip()}."


def parse_standard_prompt(path: Path) -> list[tuple[str, str]]:
    """``Question: q`` on one line, then the worked answer, blocks separated by blank lines."""
    out = []
    for block in Path(path).read_text(encoding="utf-8").strip().split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or not lines[0].startswith("Question:"):
            continue
        out.append((lines[0][len("Question:") :].strip(), "\n".join(lines[1:]).strip()))
    return out


@register_task("gsm8k")
class Gsm8k(NumericTask):
    title = "GSM8K"
    default_max_new_tokens = 256
    hub = ("openai/gsm8k", "main", "test")
    Options = Gsm8kOptions

    def load_local(self, data_dir: Path) -> list[Doc]:
        path = self.data_path(data_dir, "gsm8k", "test.jsonl")
        docs = []
        for line, row in iter_jsonl(path, required=("question", "answer")):
            docs.append(self._doc(f"gsm8k-{len(docs)}", row, path, line))
        return docs

    def from_hub(self, index: int, row: dict) -> Doc:
        return self._doc(f"gsm8k-{index}", row, "openai/gsm8k", index + 1)

    @staticmethod
    def _doc(doc_id: str, row: dict, path, line) -> Doc:
        gold = gold_of(str(row["answer"]))
        if gold is None:
            raise InputError(path, line, "no '#### <number>' final answer", field="answer")
        return Doc(doc_id, str(row["question"]).strip(), gold)

    @cached_property
    def _pool(self) -> list[tuple[str, str]]:
        if self.data_dir is None:  # real use without a data folder: the hub's train split
            import datasets

            rows = datasets.load_dataset("openai/gsm8k", "main", split="train").select(range(8))
            return [(r["question"], worked_answer(r["answer"])) for r in rows]
        if self.options.fewshot_source == "paper":
            return parse_qa_file(self.data_path(self.data_dir, "fewshot", "gsm8k_fewshot_cot.txt"))
        return parse_standard_prompt(self.data_path(self.data_dir, "gsm8k", "prompt_original.txt"))

    def fewshot_pool(self) -> list[tuple[str, str]]:
        return self._pool
