"""What a task is: a loader, a prompt (0-shot or k-shot, plain or chat), answer extraction and a metric.

A task module subclasses :class:`Task` (or :class:`MultipleChoiceTask`, :class:`NumericTask`) and
registers it with :func:`ptr.evaluate.task_registry.register_task`; the runner knows nothing else about it.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ptr.errors import InputError, PtrError, describe
from ptr.evaluate.config import TaskConfig
from ptr.evaluate.extract import extract_choice, final_number, letters, numbers, same_number
from ptr.inference.types import Conversation


@dataclass
class Doc:
    """One question. ``data`` holds what scoring needs besides ``gold`` (the options, the tests); it is
    saved with the predictions so that ``--score_only`` can re-score without the data set."""

    id: str
    question: str  # as shown to the model (options included), without the instruction
    gold: Any
    data: dict = field(default_factory=dict)


@dataclass
class Scored:
    extracted: Any
    score: float
    correct: bool | None  # None where the metric is graded, not right/wrong (XSum similarity)
    metrics: dict[str, float] = field(default_factory=dict)  # secondary metrics, per question


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Task:
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    metric: ClassVar[str] = "accuracy"
    default_fewshots: ClassVar[int] = 0
    default_max_new_tokens: ClassVar[int] = 256
    # Appended to the question in 0-shot prompts; k-shot prompts show the format by example instead.
    instruction: ClassVar[str] = ""
    # (path, config name, split) on the Hugging Face hub, for runs without a data folder.
    hub: ClassVar[tuple[str, str | None, str] | None] = None
    needs_data: ClassVar[bool] = True
    # The folder it reads under a data folder laid out like ../shared/data ("": the task's name, set
    # when it registers; None: it needs no data files, which the pipeline then does not look for).
    data_folder: ClassVar[str | None] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions
    # The fields of ``Doc.data`` that scoring reads (saved with each prediction as ``doc``).
    doc_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        config: TaskConfig | None = None,
        *,
        data_dir=None,
        seed: int = 0,
        embedding_model: str = "minilm",
    ):
        self.config = config or TaskConfig()
        try:
            self.options = self.Options.model_validate(self.config.options())
        except ValidationError as err:
            raise PtrError(f"task {self.name}: option {describe(err)}") from None
        self.data_dir = Path(data_dir) if data_dir else None
        self.seed = seed
        self.embedding_model = embedding_model

    # -- data -----------------------------------------------------------------------------------

    @property
    def num_fewshots(self) -> int:
        n = self.config.num_fewshots
        return self.default_fewshots if n is None else n

    def docs(self) -> list[Doc]:
        """The questions to ask, cut to ``limit``."""
        docs = self.load_all()
        limit = self.config.limit
        if limit and limit < len(docs):
            if self.config.sample == "random":
                keep = sorted(random.Random(f"{self.seed}:{self.name}").sample(range(len(docs)), limit))
                docs = [docs[i] for i in keep]
            else:
                docs = docs[:limit]
        return docs

    def load_all(self) -> list[Doc]:
        """Every question: from the data folder, else the hub."""
        if not self.needs_data:
            return self.load_local(None)
        if self.data_dir is not None:
            return self.load_local(self.data_dir)
        return self.load_hub()

    def load_local(self, data_dir: Path | None) -> list[Doc]:
        raise NotImplementedError

    def load_hub(self) -> list[Doc]:
        if self.hub is None:
            raise PtrError(f"task {self.name} has no hub source: give --data_dir (or set PTR_DATA_DIR)")
        path, name, split = self.hub
        try:
            import datasets
        except ImportError:
            raise PtrError(
                f"task {self.name}: reading {path} from the Hugging Face hub needs the `datasets` package; "
                "or give --data_dir"
            ) from None
        try:
            rows = datasets.load_dataset(path, name, split=split)
        except Exception as err:  # offline, gated, renamed: say which and how to avoid it
            raise PtrError(
                f"task {self.name}: cannot load {path} ({name or 'default'}, {split}) from the hub: {err}. "
                "Give --data_dir (or PTR_DATA_DIR) to read local files instead."
            ) from None
        return [self.from_hub(i, dict(row)) for i, row in enumerate(rows)]

    def from_hub(self, index: int, row: dict) -> Doc:
        raise NotImplementedError

    def data_at_hand(self) -> bool:
        """Whether the questions can be read here without the hub (a data folder, generated data)."""
        return not self.needs_data or self.data_dir is not None

    def lookup(self, doc_ids: set[str]) -> dict[str, Doc]:
        """The questions with these ids, read from the data at hand."""
        return {d.id: d for d in self.load_all() if d.id in doc_ids}

    def doc_without_data(self, doc_id: str, gold: Any) -> Doc | None:
        """A doc that scores a saved answer whose ``doc`` is missing, or None where scoring needs
        what ``doc`` held (:attr:`doc_fields`)."""
        return Doc(doc_id, "", gold, {}) if not self.doc_fields else None

    def data_path(self, data_dir: Path, *parts: str) -> Path:
        path = Path(data_dir, *parts)
        if not path.exists():
            raise InputError(path, None, f"missing: task {self.name} reads it (see the data folder's README)")
        return path

    # -- prompts --------------------------------------------------------------------------------

    def fewshot_pool(self) -> list[tuple[str, str]]:
        """Exemplar ``(question, answer)`` pairs, in the order they are used."""
        return []

    def fewshot(self, doc: Doc, k: int) -> list[tuple[str, str]]:
        if k == 0:
            return []
        pool = [(q, a) for q, a in self.fewshot_pool() if q != doc.question]
        if len(pool) < k:
            raise PtrError(f"task {self.name}: num_fewshots {k} asked, but only {len(pool)} exemplars exist")
        return pool[:k]

    def instruction_text(self) -> str:
        return self.instruction if self.config.instruction is None else self.config.instruction

    def prompt(self, doc: Doc, fmt: str) -> Conversation:
        """``fmt`` "default": the paper's ``Question: … Answer:`` text; "chat": messages."""
        k = self.num_fewshots
        shots = self.fewshot(doc, k)
        question = doc.question
        instruction = self.instruction_text()
        if instruction and k == 0:
            question = f"{question}\n{instruction}"
        if fmt == "chat":
            messages = []
            for q, a in shots:
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            return [*messages, {"role": "user", "content": question}]
        head = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots)
        return f"{head}Question: {question}\nAnswer:"

    def prepare(self) -> None:
        """Load what scoring needs (an embedding model) before any generation, so that a missing
        one fails the run at its start."""

    def max_new_tokens(self, requested: int | None) -> int:
        return self.config.max_new_tokens or requested or self.default_max_new_tokens

    # -- scoring --------------------------------------------------------------------------------

    def extract(self, output: str, doc: Doc) -> Any:
        raise NotImplementedError

    def score(self, extracted: Any, doc: Doc) -> float:
        raise NotImplementedError

    def extras(self, output: str, extracted: Any, doc: Doc) -> dict[str, float]:
        return {}

    def score_outputs(self, outputs: list[str], docs: list[Doc]) -> list[Scored]:
        """Score one round's outputs. Tasks that score in batches (an embedding model, a sandbox)
        override this."""
        out = []
        for output, doc in zip(outputs, docs, strict=True):
            extracted = self.extract(output, doc)
            score = float(self.score(extracted, doc))
            out.append(Scored(extracted, score, score >= 1.0, self.extras(output, extracted, doc)))
        return out


# -- common kinds of task -------------------------------------------------------------------------


class MultipleChoiceTask(Task):
    """Options lettered A, B, …; the answer is extracted from free text and must be the gold letter."""

    # No example answer: small models copy it verbatim ("The answer is (B)" → always B, "(X)" → "(X)").
    instruction = "Answer with the letter of the correct option."
    doc_fields = ("choices",)
    # The letters every question of the task has, where that is fixed (MMLU: A-D); then a saved answer
    # without its options can still be scored by its letter.
    fixed_labels: ClassVar[str | None] = None

    @staticmethod
    def make_doc(doc_id: str, stem: str, choices: list[str], gold_index: int, **data) -> Doc:
        labels = letters(len(choices))
        options = "\n".join(f"({label}) {text}" for label, text in zip(labels, choices, strict=True))
        question = f"{stem.strip()}\nOptions:\n{options}"
        return Doc(doc_id, question, labels[gold_index], {"choices": list(choices), **data})

    @staticmethod
    def shot(doc: Doc) -> tuple[str, str]:
        return doc.question, f"The answer is ({doc.gold})."

    def doc_without_data(self, doc_id: str, gold: Any) -> Doc | None:
        return Doc(doc_id, "", gold, {}) if self.fixed_labels else None

    def extract(self, output: str, doc: Doc):
        choices = doc.data.get("choices") or []
        labels = letters(len(choices)) if choices else self.fixed_labels or ""
        return extract_choice(output, labels, choices or None)

    def score(self, extracted, doc: Doc) -> float:
        return float(extracted is not None and extracted == doc.gold)


class NumericTask(Task):
    """A number is the answer: exact numeric match of the final answer, and the paper's flexible
    match (any number in the output equals the gold) beside it."""

    metric = "exact_match"
    instruction = 'Solve it step by step, then give the final answer as "The answer is N."'

    def extract(self, output: str, doc: Doc):
        return final_number(output)

    def score(self, extracted, doc: Doc) -> float:
        return float(same_number(extracted, doc.gold))

    def extras(self, output: str, extracted, doc: Doc) -> dict[str, float]:
        return {"flexible_match": float(any(same_number(n, doc.gold) for n in numbers(output)))}


# -- few-shot files -------------------------------------------------------------------------------


def _unescape(text: str) -> str:
    """The paper's few-shot files store some questions JSON-escaped (``\\n``, ``\\\\frac``)."""
    if "\\n" not in text and '\\"' not in text:
        return text
    try:
        return json.loads(f'"{text}"')
    except json.JSONDecodeError:
        return text.replace("\\n", "\n")


def parse_qa_file(path: Path) -> list[tuple[str, str]]:
    """Exemplars from a file of ``Question: …`` / ``Answer: …`` blocks (the paper's few-shot files)."""
    text = Path(path).read_text(encoding="utf-8")
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("Question:"):
            if current:
                blocks.append(current)
            current = [line[len("Question:") :].strip(), None]
        elif current is not None and current[1] is None and line.startswith("Answer:"):
            current[1] = line[len("Answer:") :].strip()
        elif current is not None:
            if current[1] is None:
                current[0] += "\n" + line
            else:
                current[1] += "\n" + line
    if current:
        blocks.append(current)
    out = []
    for q, a in blocks:
        if a is None:  # one of the paper's exemplars lacks its "Answer:" line: it starts after the options
            lines = q.split("\n")
            last_option = max(
                (i for i, line in enumerate(lines) if re.match(r"\([A-Z]\) ", line)), default=None
            )
            if last_option is None or last_option == len(lines) - 1:
                raise InputError(
                    path, None, f"an exemplar has no 'Answer:' line (question starts {q[:30]!r})"
                )
            q, a = "\n".join(lines[: last_option + 1]), "\n".join(lines[last_option + 1 :])
        out.append((_unescape(q.strip()), a.strip()))
    return out
