"""Decontamination speed: ptr's hashed n-gram index versus the plain approach, a Python set of word
13-gram tuples, on the real evaluation sets (PTR_DATA_DIR) and the 1,000 WizardLM queries.

Both build their index from the same word lists and check the same queries, and must flag the same
queries (asserted). Each figure is the best of a few runs (the machine is shared). The last line of
stdout is one JSON object: ``ratio`` = plain seconds ÷ ptr seconds (build + check).

    PTR_DATA_DIR=../shared/data .venv/bin/python tests/bench/decontam.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from ptr.data.decontam import NgramIndex, eval_questions, ngram_words  # noqa: E402


def plain(questions: dict[str, list[str]], queries: list[str], n: int) -> list[bool]:
    grams = set()
    for texts in questions.values():
        for text in texts:
            w = ngram_words(text)
            grams.update(tuple(w[i : i + n]) for i in range(len(w) - n + 1))
    out = []
    for q in queries:
        w = ngram_words(q)
        out.append(any(tuple(w[i : i + n]) in grams for i in range(len(w) - n + 1)))
    return out


def best(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ngram", type=int, default=13)
    args = p.parse_args()
    data = Path(os.environ.get("PTR_DATA_DIR", REPO.parent / "shared" / "data"))
    questions = eval_questions(data)
    queries = [json.loads(x)["question"] for x in (data / "queries" / "WizardLM_sampled_1000.jsonl").open()]
    # Plant known contamination so both sides have something to find.
    planted = [
        f"Please solve: {t}" for texts in questions.values() for t in texts[:3] if len(ngram_words(t)) >= 20
    ]
    queries += planted

    # min_words=n: n-grams only, the same rule as the plain set (whole short questions are extra work).
    ours_s, ours = best(
        lambda: NgramIndex(questions, n=args.ngram, min_words=args.ngram).match(queries), args.repeats
    )
    plain_s, ref = best(lambda: plain(questions, queries, args.ngram), args.repeats)
    assert [h is not None for h in ours] == ref, "the two methods disagree"
    full_s, _ = best(lambda: NgramIndex(questions, n=args.ngram).match(queries), args.repeats)
    texts = sum(len(t) for t in questions.values())
    print(f"eval texts {texts}, queries {len(queries)} ({len(planted)} planted), flagged {sum(ref)}")
    print(f"ptr index {ours_s:.2f}s (with whole short questions {full_s:.2f}s), plain set {plain_s:.2f}s")
    print(
        json.dumps(
            {
                "ratio": round(plain_s / ours_s, 2),
                "ptr_seconds": round(ours_s, 3),
                "ptr_with_short_questions_seconds": round(full_s, 3),
                "plain_set_seconds": round(plain_s, 3),
                "eval_texts": texts,
                "queries": len(queries),
                "flagged": sum(ref),
            }
        )
    )


if __name__ == "__main__":
    main()
