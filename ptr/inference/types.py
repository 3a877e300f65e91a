"""What goes into and comes out of a backend: conversations, sampling settings, completions, and how a
conversation continues into the next refinement round."""

from __future__ import annotations

from dataclasses import dataclass, field

from ptr.chat import clean_generated
from ptr.prompts import REFINE_PROMPT

# A conversation is a list of chat messages ({"role", "content"}), or a plain string prompt that
# is sent without a chat template (the paper's "Question: … Answer:" format).
Message = dict[str, str]
Conversation = list[Message] | str


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        object.__setattr__(self, "stop", tuple(self.stop or ()))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"
    extra: dict = field(default_factory=dict)


def is_chat(conversation: Conversation) -> bool:
    return not isinstance(conversation, str)


def validate_conversation(conversation, where: str = "conversation") -> Conversation:
    """Check the shape of one conversation; raises ValueError with the reason."""
    if isinstance(conversation, str):
        return conversation
    if not isinstance(conversation, list) or not conversation:
        raise ValueError(f"{where}: expected a non-empty list of messages or a string")
    for i, msg in enumerate(conversation):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise ValueError(f"{where}[{i}]: a message needs a string 'role'")
        if not isinstance(msg.get("content"), str):
            raise ValueError(f"{where}[{i}]: a message needs a string 'content'")
        if msg["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"{where}[{i}]: role must be system, user or assistant, not {msg['role']!r}")
    return conversation


def continue_conversation(conversation: Conversation, answer: str, refine_prompt: str = REFINE_PROMPT):
    """The conversation after ``answer``, with the refine request as the next user turn.

    The answer is cleaned as thought data is before training (control markers cut, whitespace
    stripped: :func:`ptr.chat.clean_generated`), so the previous turn looks like the turns the model
    was trained on."""
    answer = clean_generated(answer)
    if isinstance(conversation, str):
        gap = "" if not conversation or conversation[-1].isspace() else " "
        return f"{conversation}{gap}{answer}\n\nQuestion: {refine_prompt}\nAnswer:"
    return [
        *conversation,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": refine_prompt},
    ]
