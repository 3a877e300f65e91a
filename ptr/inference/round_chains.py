"""Refinement rounds as one chain per conversation: conversation i's round k+1 is asked the moment its
round k is answered, so conversations never wait for each other between rounds and whatever runs the
generations (vLLM's asynchronous engine, the server's schedulers) always has work queued.

Callers say how one generation is awaited and what happens to each answer; the chaining, the
conversation's next turn and the cancelling of the other chains when one fails live here."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from ptr.inference.types import Completion, Conversation, continue_conversation

# (conversation index, round, that round's conversation) -> its completion
Generate = Callable[[int, int, Conversation], Awaitable[Completion]]
# (conversation index, round, completion), called as each round is answered
OnAnswer = Callable[[int, int, Completion], None]


async def run_round_chains(
    conversations: Sequence[Conversation],
    rounds: int,
    refine_prompt: str,
    generate: Generate,
    on_answer: OnAnswer,
) -> None:
    """Run ``rounds`` rounds of every conversation; the first error is raised after the other chains
    have been cancelled (their generations are dropped where the runner supports it)."""

    async def chain(i: int, conversation: Conversation) -> None:
        for k in range(1, rounds + 1):
            completion = await generate(i, k, conversation)
            on_answer(i, k, completion)
            if k < rounds:
                conversation = continue_conversation(conversation, completion.text, refine_prompt)

    tasks = [asyncio.ensure_future(chain(i, c)) for i, c in enumerate(conversations)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:  # one chain failed (or the caller was cancelled): stop the others
            task.cancel()
