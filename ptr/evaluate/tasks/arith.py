"""``arith``: generated multi-step arithmetic word problems with exact integer answers. Needs no data.

The same seed gives the same problems on every machine (``random.Random`` with a string seed is
stable across Python versions and platforms). Exemplars for k-shot prompts come from a separate
stream, so they never coincide with the questions asked.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field

from ptr.evaluate.task import Doc, NumericTask
from ptr.evaluate.task_registry import register_task

NAMES = ["Maya", "Tom", "Aisha", "Lukas", "Priya", "Diego", "Mei", "Omar", "Sara", "Jonas", "Nia", "Ravi"]
ITEMS = [
    ("marbles", "bags"),
    ("stickers", "sheets"),
    ("apples", "baskets"),
    ("pencils", "boxes"),
    ("cookies", "tins"),
    ("stamps", "albums"),
    ("shells", "buckets"),
    ("cards", "packs"),
]


class ArithOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(default=100, ge=1, le=100_000, description="how many problems")
    min_steps: int = Field(default=2, ge=1, le=8)
    max_steps: int = Field(default=4, ge=1, le=8)
    seed: int | None = Field(default=None, description="defaults to the run's --seed")


def make_problem(rng: random.Random, steps: int) -> tuple[str, list[str], int]:
    """``(question, solution lines, answer)``: ``steps`` operations on a starting amount."""
    name = rng.choice(NAMES)
    item, container = rng.choice(ITEMS)
    total = rng.randint(5, 40)
    sentences = [f"{name} has {total} {item}."]
    lines = [f"{name} starts with {total} {item}."]
    for _ in range(steps):
        kind = rng.choice(["buy", "give", "packs", "share", "double"])
        if kind == "give" and total < 4:
            kind = "buy"
        if kind == "share" and total < 4:
            kind = "packs"
        if kind == "buy":
            k = rng.randint(2, 25)
            sentences.append(f"Then {name} finds {k} more {item}.")
            lines.append(f"Finding {k} more gives {total} + {k} = {total + k}.")
            total += k
        elif kind == "give":
            k = rng.randint(2, total - 2)
            sentences.append(f"Then {name} gives {k} {item} to a friend.")
            lines.append(f"Giving away {k} leaves {total} - {k} = {total - k}.")
            total -= k
        elif kind == "packs":
            n, m = rng.randint(2, 6), rng.randint(2, 9)
            sentences.append(f"Then {name} buys {n} {container} with {m} {item} in each.")
            lines.append(
                f"{n} {container} of {m} is {n} * {m} = {n * m}, so {total} + {n * m} = {total + n * m}."
            )
            total += n * m
        elif kind == "share":
            parts = [p for p in range(2, 7) if total % p == 0]
            if not parts:  # make it divisible by giving one away first
                sentences.append(f"Then {name} gives 1 {item[:-1]} to a neighbour.")
                lines.append(f"Giving away 1 leaves {total} - 1 = {total - 1}.")
                total -= 1
                parts = [p for p in range(2, 7) if total % p == 0] or [1]
            p = rng.choice(parts)
            if p == 1:
                continue
            share = total // p
            sentences.append(
                f"Then {name} splits the {item} equally among {p} people, {name} included, and keeps one share."
            )
            lines.append(
                f"Splitting {total} among {p} gives {total} / {p} = {share} each, and {name} keeps {share}."
            )
            total = share
        else:
            sentences.append(f"Then the number of {item} {name} has doubles.")
            lines.append(f"Doubling gives {total} * 2 = {total * 2}.")
            total *= 2
    sentences.append(f"How many {item} does {name} have now?")
    lines.append(f"The answer is {total}.")
    return " ".join(sentences), lines, total


@register_task("arith")
class Arith(NumericTask):
    title = "Arithmetic (generated)"
    needs_data = False
    data_folder = None
    default_max_new_tokens = 192
    Options = ArithOptions

    def _rng(self, stream: str) -> random.Random:
        seed = self.options.seed if self.options.seed is not None else self.seed
        return random.Random(f"ptr-arith:{seed}:{stream}")

    def _steps(self, rng: random.Random) -> int:
        lo, hi = sorted((self.options.min_steps, self.options.max_steps))
        return rng.randint(lo, hi)

    def load_local(self, data_dir) -> list[Doc]:
        rng = self._rng("questions")
        docs = []
        for i in range(self.options.n):
            question, _, answer = make_problem(rng, self._steps(rng))
            docs.append(Doc(f"arith-{i}", question, str(answer)))
        return docs

    def fewshot_pool(self) -> list[tuple[str, str]]:
        rng = self._rng("exemplars")
        pool = []
        for _ in range(8):
            question, lines, _ = make_problem(rng, self._steps(rng))
            pool.append((question, "Let's think step by step.\n" + "\n".join(lines)))
        return pool
