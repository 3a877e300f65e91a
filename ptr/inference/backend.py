"""The one contract every generation backend implements, and its optional capabilities.

A backend must ``generate``. Everything else a caller may want to know or use is declared here with a
default that is safe for a backend that cannot do it, so callers never probe (``hasattr``, the
backend's name, another object's internals):

* ``context_length`` and ``prompt_tokens(conversation)``: None where the backend cannot tell (a served
  model); :meth:`Backend.fits` says True then, and the server decides.
* ``session()``: a :class:`PrefixSession` in which the backend keeps each continued conversation's
  attention cache between calls (the transformers backend); None where it keeps none of its own.
* ``refine(...)``: all refinement rounds. The default asks, then asks to refine, turn by turn through
  ``generate`` (with a session where the backend offers one); a served model runs the rounds itself.
* ``tokenizer`` and ``chat_template`` (the model's, where at hand), ``provenance()`` (the model's training record,
  ``ptr_train.json``, where it is at hand), ``max_stop_strings`` (an API's limit), ``close()``.

* ``generate_stream(..., on_text)``: ``generate``, also handing out each conversation's text piece by
  piece as it is decoded (a server streams it to its client). ``streams`` says whether the pieces come
  as tokens are made; the default hands each completion's whole text over once it is done.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ptr.inference.types import Completion, Conversation, SamplingParams, continue_conversation
from ptr.prompts import REFINE_PROMPT

Progress = Callable[[int], None]
OnText = Callable[[int, str], None]  # (conversation index, the next piece of its text)
OnRound = Callable[[int, list[int], list[Completion]], None]


@dataclass(frozen=True)
class BackendOptions:
    """How a caller wants a model run; each backend takes the fields that apply to it
    (:meth:`Backend.from_options`)."""

    dtype: str = "auto"  # auto, float32, bfloat16 (local backends)
    batch_size: int = 16  # rows per forward pass (transformers); concurrent requests (HTTP backends)
    device: str | None = None  # transformers: cpu, cuda, … (None: cuda where there is one)
    endpoint: str | None = None  # base URL of a served model (HTTP backends)
    gpu_memory_share: float | None = None  # vLLM: the fraction of GPU memory this engine reserves


class PrefixSession:
    """What a backend keeps between calls about conversations that will continue (attention caches),
    one entry per caller-chosen key. Entries are the backend's own; callers only choose keys and
    ``forget`` a conversation once it is over."""

    def __init__(self):
        self._entries: dict[Hashable, Any] = {}

    def get(self, key: Hashable):
        return self._entries.get(key)

    def put(self, key: Hashable, entry) -> None:
        if entry is None:
            self._entries.pop(key, None)
        else:
            self._entries[key] = entry

    def forget(self, *keys: Hashable) -> None:
        for key in keys:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


class Backend(ABC):
    """A model that answers conversations. Subclasses set ``name`` and implement ``from_options`` and
    ``generate``; the other capabilities are optional (see the module docs)."""

    name: ClassVar[str]
    local: ClassVar[bool] = True  # the model runs in this process (False: a served model over HTTP)
    model_name: str = "model"
    tokenizer: Any = None
    context_length: int | None = None
    max_stop_strings: int | None = None  # None: no limit
    streams: ClassVar[bool] = False  # generate_stream hands out text as it is decoded

    @classmethod
    @abstractmethod
    def from_options(cls, model_ref: str | None, options: BackendOptions) -> Backend:
        """The backend for ``model_ref`` (for HTTP backends the served model's name, None for the first
        one the endpoint lists)."""

    @abstractmethod
    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        progress: Progress | None = None,
        session: PrefixSession | None = None,
        keys: Sequence[Hashable] | None = None,
        keep: bool = True,
    ) -> list[Completion]:
        """One completion per conversation. ``progress(n)`` as generations finish. With a ``session``
        (from :meth:`session`), conversation i continues from what the session holds under
        ``keys[i]``, and its new state is kept there unless ``keep`` is False (it will not continue)."""

    # -- optional capabilities ---------------------------------------------------------------------

    def generate_stream(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        on_text: OnText,
        *,
        progress: Progress | None = None,
        session: PrefixSession | None = None,
        keys: Sequence[Hashable] | None = None,
        keep: bool = True,
    ) -> list[Completion]:
        """``generate``, also calling ``on_text(i, piece)`` with each new piece of conversation i's text;
        the pieces of i join to its completion's ``text``. Here (a backend that does not stream): the
        whole text of each, once all are done."""
        outs = self.generate(conversations, params, progress=progress, session=session, keys=keys, keep=keep)
        for i, out in enumerate(outs):
            if out.text:
                on_text(i, out.text)
        return outs

    def prompt_tokens(self, conversation: Conversation) -> int | None:
        """How many tokens the prompt is, or None where the backend cannot tell."""
        return None

    def fits(self, conversation: Conversation) -> bool:
        """Whether the prompt leaves room for at least one new token (True where unknown)."""
        n = self.prompt_tokens(conversation)
        return n is None or self.context_length is None or n + 1 <= self.context_length

    @property
    def chat_template(self) -> str | None:
        """The model's chat template, where its tokenizer is at hand and has one."""
        return getattr(self.tokenizer, "chat_template", None) or None

    def session(self) -> PrefixSession | None:
        """A session for conversations that will continue, or None where the backend keeps no state
        between calls (vLLM caches prefixes by itself; a served model is another process)."""
        return None

    def provenance(self) -> dict:
        """The model's training record (``ptr_train.json``), or {} where there is none at hand."""
        return {}

    def refine(
        self,
        conversations: Sequence[Conversation],
        rounds: int,
        params: SamplingParams,
        *,
        refine_prompt: str | None = None,
        chunk_size: int = 64,
        on_round: OnRound | None = None,
        progress: Progress | None = None,
    ) -> list[list[Completion]]:
        """Per conversation, its completions for rounds 1..R: answer, then ask to refine (the previous
        answer as an assistant turn, ``refine_prompt`` as the next user turn; None: the paper's).

        Conversations go through in chunks of ``chunk_size`` (all rounds of a chunk before the next)
        so kept caches stay bounded. ``on_round(k, indices, completions)`` is called as each round of
        each chunk finishes."""
        prompt = refine_prompt or REFINE_PROMPT
        results: list[list[Completion]] = [[] for _ in conversations]
        for start in range(0, len(conversations), chunk_size):
            indices = list(range(start, min(start + chunk_size, len(conversations))))
            current = [conversations[i] for i in indices]
            session = self.session() if rounds > 1 else None  # kept caches pay off only in a next round
            for k in range(1, rounds + 1):
                outs = self.generate(
                    current, params, progress=progress, session=session, keys=indices, keep=k < rounds
                )
                for i, out in zip(indices, outs, strict=True):
                    results[i].append(out)
                if on_round is not None:
                    on_round(k, indices, outs)
                if k < rounds:
                    current = [
                        continue_conversation(c, o.text, prompt) for c, o in zip(current, outs, strict=True)
                    ]
        return results

    def close(self) -> None:  # noqa: B027 (optional: most backends hold nothing to release)
        """Release connections or memory the backend holds."""
