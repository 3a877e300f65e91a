"""One batch of thought chains: weak models' attempts, the strong model's answer, scores, filters.

Thought 1 is the first weak model's answer to the query; thought t > 1 is the next weak model's
refinement of the conversation so far (the answer, then the refine prompt as a user turn, as
``ptr refine`` does), cycling through the weak models in order. The strong model then reads the query
and all thoughts, with an instruction to write a better, complete answer (in-context refinement).

A batch goes through named phases, each on the chains still alive: write the thoughts, check the chain's
consistency, write the answers, judge them. A chain that fails a filter keeps what was generated so far
and stops there, so no generation is spent on a record that will be dropped.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from ptr import embeddings
from ptr.data import filters
from ptr.data.cleaning import clean_generated, stops_for
from ptr.data.model_pool import ModelPool, ModelSpec, parse_spec
from ptr.data.thoughts_config import ThoughtsConfig
from ptr.inference import SamplingParams, continue_conversation

JUDGE_MAX_NEW_TOKENS = 8
ANSWER_TOKENS_FACTOR = 3  # the final answer's default budget, in multiples of a thought's


def final_answer_conversation(query: str, thoughts: list[str], instruction: str) -> list[dict]:
    """The strong model's prompt: the instruction, the query, and every attempt so far."""
    attempts = "\n\n".join(f"Attempt {i}:\n{t}" for i, t in enumerate(thoughts, 1))
    return [{"role": "user", "content": f"{instruction}\n\nQuestion:\n{query}\n\n{attempts}"}]


class Scorer(Protocol):
    """What the consistency and improvement filters measure texts with."""

    def load(self) -> None: ...

    def similarities(self, pairs: list[tuple[str, str]]) -> list[float]: ...


class EmbeddingScorer:
    """Cosine similarity of two texts' sentence embeddings (one model for the whole run)."""

    def __init__(self, model: str):
        self.model = model

    def load(self) -> None:
        embeddings.load(self.model)

    def similarities(self, pairs: list[tuple[str, str]]) -> list[float]:
        if not pairs:
            return []
        index = {text: i for i, text in enumerate(dict.fromkeys(t for pair in pairs for t in pair))}
        emb = embeddings.embed(list(index), self.model)  # unit vectors: the dot product is the cosine
        return [round(float(emb[index[a]] @ emb[index[b]]), 4) for a, b in pairs]


@dataclass
class Chain:
    """One query on its way to a record: what was generated so far, the weak models' conversation, and
    why the chain stopped (None while it goes on)."""

    slot: int  # position in the batch (its key in a model's prefix session)
    id: str
    query: str
    conversation: list[dict]
    thoughts: list[dict] = field(default_factory=list)
    answer: dict | None = None
    scores: dict = field(default_factory=dict)
    reason: str | None = None

    @property
    def alive(self) -> bool:
        return self.reason is None

    @property
    def last_thought(self) -> str | None:
        return self.thoughts[-1]["text"] if self.thoughts else None

    def record(self, refine_prompt: str) -> dict:
        return {
            "id": self.id,
            "query": self.query,
            "refine_prompt": refine_prompt,  # the user turn the weak models answered after thought 1
            "thoughts": self.thoughts,
            "answer": self.answer,
            "scores": self.scores,
            "kept": self.reason is None,
            "reason": self.reason,
        }


class ChainRun:
    """One run's models, sampling settings, scorer and counters."""

    def __init__(self, config: ThoughtsConfig, pool: ModelPool, scorer: Scorer | None = None):
        c = config
        self.config = c
        self.weak = [parse_spec(s, c.backend, c.endpoint) for s in c.weak_models]
        self.strong = parse_spec(c.strong_model, c.backend, c.endpoint)
        self.judge = parse_spec(c.judge_model, c.backend, c.endpoint) if c.judge_model else None
        self.pool = pool
        self.scorer = scorer or EmbeddingScorer(c.embedding_model)
        self.tokens: Counter = Counter()

    def load(self) -> None:
        """Load every model, the scorer too, so that a missing piece fails before hours of generation
        rather than after the first batch."""
        specs = [*self.weak, self.strong, *([self.judge] if self.judge else [])]
        self.pool.plan(specs)  # vLLM engines held together split the GPU's memory
        for spec in specs:
            self.pool.get(spec)
        self.scorer.load()

    def params(self, spec: ModelSpec, role: str, seed: int) -> SamplingParams:
        c, stop = self.config, stops_for(self.pool.get(spec))
        if role == "weak":
            return SamplingParams(c.max_new_tokens, c.temperature, c.top_p, c.top_k, seed, stop)
        if role == "strong":
            tokens = c.answer_max_new_tokens or ANSWER_TOKENS_FACTOR * c.max_new_tokens
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
    """Thoughts, answers, scores and filter decisions for one batch of ``{id, query}``: its records."""
    chains = [
        Chain(i, q["id"], q["query"], [{"role": "user", "content": q["query"]}]) for i, q in enumerate(batch)
    ]
    write_thoughts(run, chains, seed, progress)
    check_consistency(run, chains)
    write_answers(run, chains, seed, progress)
    judge_answers(run, chains, seed)
    if progress is not None:  # generations that the filters made unnecessary
        planned = len(chains) * (run.config.num_thoughts + 1)
        progress(planned - sum(len(c.thoughts) + (c.answer is not None) for c in chains))
    return [c.record(run.config.refine_prompt) for c in chains]


def _drop_unfit(run: ChainRun, spec: ModelSpec, chains: list[Chain], prompts: list) -> list[Chain]:
    """The chains whose next prompt fits ``spec``'s context; the others stop as ``too_long``."""
    for chain, prompt in zip(chains, prompts, strict=True):
        if not run.fits(spec, prompt):
            chain.reason = "too_long"
    return [c for c in chains if c.alive]


def write_thoughts(run: ChainRun, chains: list[Chain], seed: int, progress=None) -> None:
    """Round t: weak model (t−1) mod W continues each live conversation; the text filters run on each
    thought as it comes."""
    c = run.config
    sessions: dict = {}  # per model: a model that continues its own conversation reuses its cache
    for t in range(1, c.num_thoughts + 1):
        spec = run.weak[(t - 1) % len(run.weak)]
        live = [ch for ch in chains if ch.alive]
        if t > 1:
            for ch in live:
                ch.conversation = continue_conversation(ch.conversation, ch.last_thought, c.refine_prompt)
        live = _drop_unfit(run, spec, live, [ch.conversation for ch in live])
        if not live:
            return
        if spec.key not in sessions:
            sessions[spec.key] = run.pool.get(spec).session()
        outs = run.generate(
            spec,
            [ch.conversation for ch in live],
            run.params(spec, "weak", seed + t),
            session=sessions[spec.key],
            keys=[ch.slot for ch in live],
            progress=progress,
        )
        for ch, out in zip(live, outs, strict=True):
            text, previous = clean_generated(out.text), ch.last_thought
            ch.thoughts.append(
                {
                    "round": t,
                    "model": spec.label,
                    "text": text,
                    "finish_reason": out.finish_reason,
                    "tokens": out.completion_tokens,
                }
            )
            ch.reason = filters.thought_reason(text, out.finish_reason, previous, c.filters)


def check_consistency(run: ChainRun, chains: list[Chain]) -> None:
    """Each thought against the next, before any answer is written: a chain that jumps off its topic
    is dropped without spending the strong model on it. Also the last thought's relevance to the query
    (the baseline the answer's improvement is measured against)."""
    done = [ch for ch in chains if ch.alive]
    pairs = {}
    for ch in done:
        texts = [x["text"] for x in ch.thoughts]
        pairs.update({(ch.slot, k): p for k, p in enumerate(itertools.pairwise(texts))})
        pairs[(ch.slot, "relevance")] = (ch.last_thought, ch.query)
    scores = dict(zip(pairs, run.scorer.similarities(list(pairs.values())), strict=True))
    for ch in done:
        links = [scores[(ch.slot, k)] for k in range(len(ch.thoughts) - 1)]
        ch.scores.update(
            link_consistency=links,
            consistency=min(links, default=None),
            thought_relevance=scores[(ch.slot, "relevance")],
        )
        ch.reason = filters.consistency_reason(ch.scores["consistency"], run.config.filters)


def write_answers(run: ChainRun, chains: list[Chain], seed: int, progress=None) -> None:
    """The strong model's answer to each live chain; its link to the last thought closes the chain's
    consistency check, and the heuristic improvement is scored."""
    c = run.config
    live = [ch for ch in chains if ch.alive]
    prompts = [
        final_answer_conversation(ch.query, [x["text"] for x in ch.thoughts], c.final_instruction)
        for ch in live
    ]
    prompts = {ch.slot: p for ch, p in zip(live, prompts, strict=True)}
    live = _drop_unfit(run, run.strong, live, [prompts[ch.slot] for ch in live])
    if not live:
        return
    outs = run.generate(
        run.strong,
        [prompts[ch.slot] for ch in live],
        run.params(run.strong, "strong", seed),
        progress=progress,
    )
    for ch, out in zip(live, outs, strict=True):
        text = clean_generated(out.text)
        ch.answer = {
            "model": run.strong.label,
            "text": text,
            "finish_reason": out.finish_reason,
            "tokens": out.completion_tokens,
        }
        ch.reason = filters.answer_reason(text, out.finish_reason, ch.last_thought, ch.query, c.filters)
    answered = [ch for ch in live if ch.alive]
    pairs = [
        p for ch in answered for p in ((ch.answer["text"], ch.last_thought), (ch.answer["text"], ch.query))
    ]
    scores = iter(run.scorer.similarities(pairs))
    for ch in answered:
        s, answer = ch.scores, ch.answer["text"]
        s["link_consistency"].append(next(scores))
        s["consistency"] = min(s["link_consistency"])
        s["answer_relevance"] = next(scores)
        s["heuristic_improvement"] = round(
            filters.heuristic_improvement(
                s["answer_relevance"],
                s["thought_relevance"],
                len(answer.split()),
                len(ch.last_thought.split()),
            ),
            4,
        )
        ch.reason = filters.consistency_reason(s["consistency"], c.filters)


def judge_answers(run: ChainRun, chains: list[Chain], seed: int) -> None:
    """The improvement score (the judge model's, asked in both orders, else the heuristic's) and its
    threshold."""
    live = [ch for ch in chains if ch.alive]
    if run.judge is not None and live:
        convs = {}  # (slot, 0 forward | 1 backward) -> judge prompt, for prompts that fit
        for ch in live:
            pair = filters.judge_conversations(ch.query, ch.last_thought, ch.answer["text"])
            convs.update({(ch.slot, k): conv for k, conv in enumerate(pair) if run.fits(run.judge, conv)})
        outs = run.generate(run.judge, list(convs.values()), run.params(run.judge, "judge", seed))
        verdicts = {
            key: filters.parse_verdict(clean_generated(o.text)) for key, o in zip(convs, outs, strict=True)
        }
    for ch in live:
        s = ch.scores
        if run.judge is None:
            s["improvement"] = s["heuristic_improvement"]
        else:
            s["judge_forward"], s["judge_backward"] = verdicts.get((ch.slot, 0)), verdicts.get((ch.slot, 1))
            improvement = filters.judged_improvement(s["judge_forward"], s["judge_backward"])
            s["improvement"] = None if improvement is None else round(improvement, 4)
        ch.reason = filters.improvement_reason(s["improvement"], run.judge is not None, run.config.filters)
