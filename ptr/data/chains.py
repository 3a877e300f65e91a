"""One batch of thought chains: weak models' attempts, the strong model's answer, scores, filters.

Thought 1 is the first weak model's answer to the query; thought t > 1 is the next weak model's
refinement of the conversation so far (the answer, then the refine prompt as a user turn, as
``ptr refine`` does), cycling through the weak models in order. The strong model then reads the query
and all thoughts, with an instruction to write a better, complete answer (in-context refinement).
A record that fails an early filter keeps what was generated so far and stops there.
"""

from __future__ import annotations

import itertools
from collections import Counter

from ptr import embeddings
from ptr.data import filters
from ptr.data.cleaning import clean_generated, stops_for
from ptr.data.model_pool import ModelPool, ModelSpec, parse_spec
from ptr.data.thoughts_config import ThoughtsConfig
from ptr.inference import SamplingParams, continue_conversation

JUDGE_MAX_NEW_TOKENS = 8


def final_answer_conversation(query: str, thoughts: list[str], instruction: str) -> list[dict]:
    """The strong model's prompt: the instruction, the query, and every attempt so far."""
    attempts = "\n\n".join(f"Attempt {i}:\n{t}" for i, t in enumerate(thoughts, 1))
    return [{"role": "user", "content": f"{instruction}\n\nQuestion:\n{query}\n\n{attempts}"}]


class ChainRun:
    """One run's models, sampling settings and counters."""

    def __init__(self, config: ThoughtsConfig, pool: ModelPool):
        c = config
        self.config = c
        self.weak = [parse_spec(s, c.backend, c.endpoint) for s in c.weak_models]
        self.strong = parse_spec(c.strong_model, c.backend, c.endpoint)
        self.judge = parse_spec(c.judge_model, c.backend, c.endpoint) if c.judge_model else None
        self.pool = pool
        self.tokens: Counter = Counter()

    def load(self) -> None:
        """Load every model, the embedding model too, so that a missing piece fails before hours of
        generation rather than after the first batch."""
        specs = [*self.weak, self.strong, *([self.judge] if self.judge else [])]
        self.pool.plan(specs)  # vLLM engines held together split the GPU's memory
        for spec in specs:
            self.pool.get(spec)
        embeddings.load(self.config.embedding_model)

    def params(self, spec: ModelSpec, role: str, seed: int) -> SamplingParams:
        c, stop = self.config, stops_for(self.pool.get(spec))
        if role == "weak":
            return SamplingParams(c.max_new_tokens, c.temperature, c.top_p, c.top_k, seed, stop)
        if role == "strong":
            tokens = c.strong_max_new_tokens or c.max_new_tokens
            return SamplingParams(tokens, c.strong_temperature, c.strong_top_p, c.strong_top_k, seed, stop)
        return SamplingParams(JUDGE_MAX_NEW_TOKENS, 0.0, 1.0, 0, seed, stop)

    def fits(self, spec: ModelSpec, conversation) -> bool:
        """Whether the prompt leaves room to generate, where the backend can tell."""
        return self.pool.get(spec).fits(conversation)

    def generate(self, spec: ModelSpec, conversations, params, *, session=None, keys=None, progress=None):
        """``session``/``keys``: continue each conversation from its own earlier turns' cache."""
        outs = self.pool.get(spec).generate(
            conversations, params, progress=progress, session=session, keys=keys
        )
        self.tokens[spec.label] += sum(o.completion_tokens for o in outs)
        return outs


def process_batch(run: ChainRun, batch: list[dict], seed: int, progress=None) -> list[dict]:
    """Thoughts, answers, scores and filter decisions for one batch of queries."""
    c, fcfg = run.config, run.config.filters
    records = [
        {"id": q["id"], "query": q["query"], "thoughts": [], "answer": None, "scores": {}, "kept": False}
        for q in batch
    ]
    reasons: list[str | None] = [None] * len(batch)
    conversations = [[{"role": "user", "content": q["query"]}] for q in batch]
    sessions: dict = {}  # per model: a model that continues its own conversation reuses its cache
    active = list(range(len(batch)))
    for t in range(1, c.num_thoughts + 1):
        spec = run.weak[(t - 1) % len(run.weak)]
        if t > 1:
            for i in active:
                conversations[i] = continue_conversation(
                    conversations[i], records[i]["thoughts"][-1]["text"], c.refine_prompt
                )
        for i in active:
            if not run.fits(spec, conversations[i]):
                reasons[i] = "too_long"
        active = [i for i in active if reasons[i] is None]
        if not active:
            break
        if spec.key not in sessions:
            sessions[spec.key] = run.pool.get(spec).session()
        outs = run.generate(
            spec,
            [conversations[i] for i in active],
            run.params(spec, "weak", seed + t),
            session=sessions[spec.key],
            keys=active,
            progress=progress,
        )
        for i, out in zip(active, outs, strict=True):
            text = clean_generated(out.text)
            previous = records[i]["thoughts"][-1]["text"] if records[i]["thoughts"] else None
            records[i]["thoughts"].append(
                {
                    "round": t,
                    "model": spec.label,
                    "text": text,
                    "finish_reason": out.finish_reason,
                    "tokens": out.completion_tokens,
                }
            )
            reasons[i] = filters.attempt_reason(text, out.finish_reason, previous, fcfg)
        active = [i for i in active if reasons[i] is None]
    sessions.clear()

    prompts = {
        i: final_answer_conversation(
            records[i]["query"], [x["text"] for x in records[i]["thoughts"]], c.final_instruction
        )
        for i in active
    }
    for i in active:
        if not run.fits(run.strong, prompts[i]):
            reasons[i] = "too_long"
    active = [i for i in active if reasons[i] is None]
    if active:
        prompts = [prompts[i] for i in active]
        outs = run.generate(run.strong, prompts, run.params(run.strong, "strong", seed), progress=progress)
        for i, out in zip(active, outs, strict=True):
            text = clean_generated(out.text)
            records[i]["answer"] = {
                "model": run.strong.label,
                "text": text,
                "finish_reason": out.finish_reason,
                "tokens": out.completion_tokens,
            }
            reasons[i] = filters.attempt_reason(
                text, out.finish_reason, records[i]["thoughts"][-1]["text"], fcfg
            )
    _score(run, records, reasons, seed)
    for record, reason in zip(records, reasons, strict=True):
        record["kept"] = reason is None
        record["reason"] = reason
    if progress is not None:  # generations that early filters made unnecessary
        planned = len(batch) * (c.num_thoughts + 1)
        done = sum(len(r["thoughts"]) + (r["answer"] is not None) for r in records)
        progress(planned - done)
    return records


def _score(run: ChainRun, records: list[dict], reasons: list[str | None], seed: int) -> None:
    """Embedding scores for every record, then the consistency and improvement filters."""
    import numpy as np

    texts: dict[str, int] = {}

    def slot(text: str) -> int:
        return texts.setdefault(text, len(texts))

    for r in records:
        slot(r["query"])
        for x in r["thoughts"]:
            slot(x["text"])
        if r["answer"]:
            slot(r["answer"]["text"])
    emb = embeddings.embed(list(texts), run.config.embedding_model)

    def cos(a: str, b: str) -> float:
        return round(float(np.dot(emb[texts[a]], emb[texts[b]])), 4)

    alive = []
    for i, r in enumerate(records):
        chain = [x["text"] for x in r["thoughts"]]
        s = r["scores"]
        s["chain_consistency"] = min((cos(a, b) for a, b in itertools.pairwise(chain)), default=None)
        s["thought_relevance"] = cos(chain[-1], r["query"]) if chain else None
        s["consistency"] = s["answer_relevance"] = s["improvement"] = None
        if r["answer"] is None:
            continue
        answer = r["answer"]["text"]
        s["consistency"] = cos(answer, chain[-1])
        s["answer_relevance"] = cos(answer, r["query"])
        s["heuristic_improvement"] = round(
            filters.heuristic_improvement(
                s["answer_relevance"], s["thought_relevance"], len(answer.split()), len(chain[-1].split())
            ),
            4,
        )
        if run.judge is None:
            s["improvement"] = s["heuristic_improvement"]
        if reasons[i] is None and s["consistency"] >= run.config.filters.min_consistency:
            alive.append(i)
        elif reasons[i] is None:
            reasons[i] = "inconsistent"

    if run.judge is not None and alive:
        convs = {}  # (record, 0 forward | 1 backward) -> judge prompt, for prompts that fit
        for i in alive:
            r = records[i]
            pair = filters.judge_conversations(r["query"], r["thoughts"][-1]["text"], r["answer"]["text"])
            convs.update({(i, k): conv for k, conv in enumerate(pair) if run.fits(run.judge, conv)})
        outs = run.generate(run.judge, list(convs.values()), run.params(run.judge, "judge", seed))
        verdicts = {
            key: filters.parse_verdict(clean_generated(o.text)) for key, o in zip(convs, outs, strict=True)
        }
        for i in alive:
            s = records[i]["scores"]
            s["judge_forward"], s["judge_backward"] = verdicts.get((i, 0)), verdicts.get((i, 1))
            improvement = filters.judged_improvement(s["judge_forward"], s["judge_backward"])
            s["improvement"] = None if improvement is None else round(improvement, 4)
    for i in alive:
        s = records[i]["scores"]
        reasons[i] = filters.final_reason(
            s["consistency"], s["improvement"], run.judge is not None, run.config.filters
        )
