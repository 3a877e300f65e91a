"""ptr.inference.round_chains: each conversation's rounds as a chain that never waits for the others."""

from __future__ import annotations

import asyncio

import pytest

from ptr.inference import Completion, continue_conversation
from ptr.inference.round_chains import run_round_chains

REFINE = "Check your answer and improve it."


def test_a_conversation_goes_on_to_its_next_round_while_another_is_still_answering():
    asked: list[tuple[int, int]] = []
    answers: list[tuple[int, int, str]] = []
    prompts: dict[tuple[int, int], object] = {}

    async def main():
        slow_may_finish = asyncio.Event()

        async def generate(i, k, conversation):
            asked.append((i, k))
            prompts[(i, k)] = conversation
            if i == 0 and k == 1:
                await slow_may_finish.wait()
            elif (i, k) == (1, 3):  # the fast conversation is done: now the slow one may answer
                slow_may_finish.set()
            return Completion(f"answer {i}.{k}", prompt_tokens=1, completion_tokens=1, finish_reason="stop")

        await run_round_chains(
            [[{"role": "user", "content": "slow"}], "fast"],
            3,
            REFINE,
            generate,
            lambda i, k, c: answers.append((i, k, c.text)),
        )

    asyncio.run(asyncio.wait_for(main(), 30))  # rounds in lockstep would wait here for ever
    assert asked.index((1, 3)) < asked.index((0, 2))  # conversation 1 finished all rounds first
    assert [a for a in answers if a[0] == 0] == [(0, k, f"answer 0.{k}") for k in (1, 2, 3)]
    assert prompts[(0, 2)] == continue_conversation(
        [{"role": "user", "content": "slow"}], "answer 0.1", REFINE
    )
    assert prompts[(1, 3)] == continue_conversation(prompts[(1, 2)], "answer 1.2", REFINE)


def test_one_failing_chain_stops_the_others_and_its_error_is_raised():
    cancelled: list[int] = []

    async def main() -> list[int]:
        async def generate(i, k, conversation):
            if i == 1:
                raise ValueError("conversation 1 does not fit")
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(i)
                raise
            return Completion("never", 1, 1, "stop")

        with pytest.raises(ValueError, match="conversation 1 does not fit"):
            await run_round_chains(["a", "b", "c"], 2, REFINE, generate, lambda *_: None)
        for _ in range(3):  # let the cancellations arrive (before asyncio.run would cancel leftovers itself)
            await asyncio.sleep(0)
        return sorted(cancelled)

    assert asyncio.run(main()) == [0, 2]
