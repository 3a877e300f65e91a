"""``xsum``: one-sentence summaries of BBC articles (1,000 of the test split). Scored by the cosine
similarity of the summary's and the reference's sentence embeddings (``--embedding_model``: the
offline MiniLM by default, ``BAAI/bge-m3`` as in the paper where it loads), with ROUGE-L beside it.

Exemplars: the paper's eight (``fewshot/xsum_fewshot.txt``).
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ptr.embeddings import cosine_pairs, load
from ptr.evaluate.task import Doc, Scored, Task, parse_qa_file
from ptr.evaluate.task_registry import register_task
from ptr.records import iter_jsonl

_LABEL = re.compile(
    r"^\s*(?:\*\*)?(?:here is |here's )?(?:a |the )?(?:one[- ]sentence )?summary(?: of the article)?\s*(?:is)?\s*[:\-]?(?:\*\*)?\s*",
    re.I,
)


class XsumOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_document_chars: int = Field(default=6000, ge=200, description="longer articles are cut here")


def extract_summary(output: str) -> str:
    """The summary without a "Summary:" label or a preamble line ending in a colon."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    text = lines[0] if lines else ""
    text = _LABEL.sub("", text).strip()
    return text.strip('"').strip()


@register_task("xsum")
class Xsum(Task):
    title = "XSum"
    metric = "cosine_similarity"
    default_max_new_tokens = 96
    instruction = "Summarize the article above in one sentence."
    hub = ("EdinburghNLP/xsum", None, "test")
    Options = XsumOptions

    def _doc(self, doc_id: str, document: str, summary: str) -> Doc:
        document = document.strip()[: self.options.max_document_chars]
        return Doc(doc_id, document, summary.strip())

    def load_local(self, data_dir: Path) -> list[Doc]:
        path = self.data_path(data_dir, "xsum", "test.jsonl")
        return [
            self._doc(str(row.get("id") or f"xsum-{line}"), str(row["document"]), str(row["summary"]))
            for line, row in iter_jsonl(path, required=("document", "summary"))
        ]

    def from_hub(self, index: int, row: dict) -> Doc:
        return self._doc(str(row.get("id") or f"xsum-{index}"), row["document"], row["summary"])

    @cached_property
    def _pool(self) -> list[tuple[str, str]]:
        if self.data_dir is None:
            return []
        return parse_qa_file(self.data_path(self.data_dir, "fewshot", "xsum_fewshot.txt"))

    def fewshot_pool(self) -> list[tuple[str, str]]:
        return self._pool

    def prepare(self) -> None:
        load(self.embedding_model)

    def extract(self, output: str, doc: Doc) -> str:
        return extract_summary(output)

    def score_outputs(self, outputs: list[str], docs: list[Doc]) -> list[Scored]:
        from rouge_score import rouge_scorer

        summaries = [self.extract(o, d) for o, d in zip(outputs, docs, strict=True)]
        refs = [d.gold for d in docs]
        sims = cosine_pairs(summaries, refs, name=self.embedding_model) if docs else []
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        out = []
        for summary, ref, sim in zip(summaries, refs, sims, strict=True):
            similarity = float(sim) if summary else 0.0  # an empty reply is no summary at all
            rouge = scorer.score(ref, summary)["rougeL"].fmeasure if summary else 0.0
            out.append(Scored(summary, similarity, None, {"rougeL": float(rouge)}))
        return out
