"""Small encoded corpora for trainer tests, written with ``ShardWriter`` directly.

Each document is a PTR conversation in the tokenizer's chat template: a question, thoughts 1..k with
the refine prompt between them, and the final answer. Assistant content (with its end-of-turn token)
carries the attempt's segment code; everything else is IGNORE. Documents are packed greedily into
sequences of at most ``pack_to`` tokens.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ptr.encode.shards import ANSWER, IGNORE, ShardWriter
from ptr.prompts import REFINE_PROMPT


def conversation_tokens(tokenizer, question: str, thoughts: list[str], answer: str) -> tuple[list, list]:
    turns = [("user", question, IGNORE)]
    for t, text in enumerate(thoughts, 1):
        turns += [("assistant", text, t), ("user", REFINE_PROMPT, IGNORE)]
    turns.append(("assistant", answer, ANSWER))
    ids, codes = [], []

    def piece(text, code):
        new = tokenizer(text, add_special_tokens=False).input_ids
        ids.extend(new)
        codes.extend([code] * len(new))

    for role, content, code in turns:
        piece(f"<|im_start|>{role}\n", IGNORE)
        piece(f"{content}<|im_end|>", code)
        piece("\n", IGNORE)
    return ids, codes


def arithmetic_example(rng: random.Random) -> tuple[str, list[str], str]:
    a, b = rng.randint(2, 60), rng.randint(2, 12)
    wrong = a * b + rng.choice([-3, -1, 2, 5])
    thoughts = [f"{a} * {b} = {wrong}."]
    if rng.random() < 0.7:
        thoughts.append(f"Check: {a} * {b} = {a * b}.")
    return f"What is {a} * {b}?", thoughts, f"{a} * {b} = {a * b}. The answer is {a * b}."


def write_corpus(
    out_dir, tokenizer, n_docs: int = 48, pack_to: int = 160, seed: int = 0, qa_docs: int = 0
) -> Path:
    """Write ``n_docs`` thought documents (and ``qa_docs`` answer-only ones) as a packed corpus."""
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs + qa_docs):
        question, thoughts, answer = arithmetic_example(rng)
        docs.append(conversation_tokens(tokenizer, question, thoughts if i < n_docs else [], answer))
    out = Path(out_dir)
    writer = ShardWriter(out, "uint16", tokens_per_file=4000)
    seq_ids, seq_codes, lens = [], [], []
    for ids, codes in docs:
        if seq_ids and len(seq_ids) + len(ids) > pack_to:
            writer.add(seq_ids, seq_codes, lens)
            seq_ids, seq_codes, lens = [], [], []
        seq_ids, seq_codes, lens = seq_ids + ids, seq_codes + codes, lens + [len(ids)]
    writer.add(seq_ids, seq_codes, lens)
    writer.close()
    meta = {"tokenizer": {"name": tokenizer.name_or_path, "hash": "test"}, "dtype": "uint16", "packing": True}
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "summary.json").write_text(json.dumps({"examples": len(docs)}))
    return out
