"""Examples → token ids and segment codes, through the tokenizer's own chat template.

The whole conversation is rendered and tokenized as one text, so the ids are exactly those the
template gives (no seams from tokenizing pieces separately). Segment spans are found in characters
and mapped to tokens with the fast tokenizer's offsets (``char_to_token``):

* contents are wrapped in private-use marker characters before rendering; removing them gives the
  text and the exact span of every content, wherever the template puts it (a default system prompt,
  role headers, a BOS). The result is compared with a plain render; if they differ (a template that
  inspects or escapes content), the plain render is used and contents are searched in order.
* a template that only prints contents (``ptr.encode.template``) is rendered once per role sequence
  with empty contents, and each example's contents are dropped in; the first few examples of each
  role sequence are still compared with a full render.
* an assistant turn's span runs from its content through its end-of-turn token (the first
  EOS/end-of-turn token the template writes after the content, :func:`ptr.chat.end_of_turn_tokens`:
  the tokens every backend stops at), so the model learns to stop.
* a token that overlaps a span's characters belongs to it.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np

from ptr.encode.overflow import MIN_THOUGHT_TOKENS
from ptr.encode.records import Example
from ptr.encode.shards import ANSWER, IGNORE
from ptr.encode.template import content_agnostic
from ptr.errors import InputError, PtrError

OPEN, CLOSE = "\ue000", "\ue001"
_MARKERS = re.compile(f"[{OPEN}{CLOSE}]")
VERIFY_FIRST = 8  # examples of each role sequence checked against a full render


def tokenizer_hash(tokenizer) -> str:
    """Content hash: vocabulary and merges, normalization, special tokens and chat template."""
    h = hashlib.sha256()
    h.update(tokenizer.backend_tokenizer.to_str().encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update((tokenizer.chat_template or "").encode() if isinstance(tokenizer.chat_template, str) else b"")
    return h.hexdigest()


def vocab_size(tokenizer) -> int:
    """One past the largest id the tokenizer can produce (added tokens included)."""
    added = max(tokenizer.added_tokens_decoder, default=-1) + 1
    return max(len(tokenizer), tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True), added)


class ChatLayout:
    """Encodes batches of :class:`Example` (worker processes inherit one by fork)."""

    def __init__(self, tokenizer, *, end_of_turn: list[str]):
        if not getattr(tokenizer, "is_fast", False):
            raise PtrError("the encoder needs a fast (Rust) tokenizer for character offsets")
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer
        self.end_of_turn = list(end_of_turn)
        self.eot = re.compile("|".join(map(re.escape, end_of_turn))) if end_of_turn else None
        self.eos_id = tokenizer.eos_token_id
        # Content-agnostic templates are rendered once per role sequence; see ptr.encode.template.
        self.agnostic = content_agnostic(tokenizer.chat_template)
        self._skeletons: dict[tuple, list[str] | None] = {}
        self._checked: dict[tuple, int] = {}

    # -- rendering ----------------------------------------------------------------------------------

    def _apply(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def render(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The templated text and each message's content span (character offsets)."""
        if any(OPEN in m["content"] or CLOSE in m["content"] for m in messages):
            return self._render_by_search(messages)
        if self.agnostic:
            key = tuple(m["role"] for m in messages)
            if key not in self._skeletons:
                try:
                    self._skeletons[key] = self._marked_pieces([""] * len(messages), messages)
                except Exception:  # e.g. a template that refuses empty contents
                    self._skeletons[key] = None
            if (skeleton := self._skeletons[key]) is not None:
                text, spans = _splice(skeleton, [m["content"] for m in messages])
                checked = self._checked.get(key, 0)
                if checked >= VERIFY_FIRST:
                    return text, spans
                if text == self._apply(messages):  # the first few of each shape are checked in full
                    self._checked[key] = checked + 1
                    return text, spans
                self.agnostic = False  # the analysis missed something: render every example from now on
        pieces = self._marked_pieces([m["content"] for m in messages], messages)
        if pieces is not None:
            text, spans = _splice(pieces, [m["content"] for m in messages])
            # A template that branches on content could render the marked copy differently.
            if text == self._apply(messages):
                return text, spans
        return self._render_by_search(messages)

    def _marked_pieces(self, contents: list[str], messages: list[dict]) -> list[str] | None:
        """The template's text around each content, or None if the template did not keep the markers
        and the contents exactly as given."""
        marked = self._apply(
            [{**m, "content": f"{OPEN}{c}{CLOSE}"} for m, c in zip(messages, contents, strict=True)]
        )
        pieces = _MARKERS.split(marked)
        if _MARKERS.findall(marked) != [OPEN, CLOSE] * len(messages):
            return None
        if any(pieces[2 * k + 1] != c for k, c in enumerate(contents)):
            return None
        return pieces[0::2]

    def _render_by_search(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        text = self._apply(messages)
        spans, cursor = [], 0
        for k, m in enumerate(messages):
            start = text.find(m["content"], cursor)
            if start < 0:
                raise ValueError(f"the chat template does not reproduce message {k}'s content")
            spans.append((start, start + len(m["content"])))
            cursor = start + len(m["content"])
        return text, spans

    def _loss_spans(self, text: str, spans, codes, open_ends=()) -> list[tuple[int, int, int]]:
        """``(start, end, code)`` character spans: assistant contents through their end-of-turn (a cut
        message's span stops at its content: its end-of-turn gets no weight)."""
        out = []
        for k, ((start, end), code) in enumerate(zip(spans, codes, strict=True)):
            if code == IGNORE:
                continue
            limit = spans[k + 1][0] if k + 1 < len(spans) else len(text)
            if self.eot is not None and k not in open_ends and (m := self.eot.search(text, end, limit)):
                end = m.end()
            out.append((start, end, code))
        return out

    # -- encoding: three phases, so a caller can run the tokenizer (which releases the GIL) beside
    # -- the Python work of the batches before and after -------------------------------------------

    def prepare(self, examples: list[Example]) -> Batch:
        """Render every chat example and find its loss spans (Python work)."""
        batch = Batch(examples)
        for i, ex in enumerate(examples):
            if ex.text is not None:
                batch.raw.append(i)
                continue
            try:
                text, spans = self.render(ex.messages)
            except Exception as err:  # jinja raise_exception, a role order the template refuses
                batch.results[i] = ex.where.error(f"chat template: {err}")
                continue
            batch.chat.append(i)
            batch.texts.append(text)
            batch.spans.append(self._loss_spans(text, spans, ex.codes, ex.open_ends))
        return batch

    def tokenize(self, batch: Batch) -> Batch:
        """The fast tokenizer over the whole batch (Rust, in parallel, without the GIL)."""
        if batch.texts:
            batch.encodings = self.backend.encode_batch(batch.texts, add_special_tokens=False)
        if batch.raw:
            texts = [batch.examples[i].text for i in batch.raw]
            batch.raw_encodings = self.backend.encode_batch(texts, add_special_tokens=True)
        return batch

    def finish(self, batch: Batch) -> list[tuple[np.ndarray, np.ndarray] | InputError]:
        """Per example ``(ids int32, segments uint8)``, or the :class:`InputError` that example raised
        (it pickles, so worker processes hand it back whole)."""
        results = batch.results
        for i, enc, spans in zip(batch.chat, batch.encodings, batch.spans, strict=True):
            ids = np.asarray(enc.ids, dtype=np.int32)
            segments = np.zeros(len(ids), dtype=np.uint8)
            for start, end, code in spans:
                first, last = enc.char_to_token(start), enc.char_to_token(end - 1)
                if first is None:  # a character no token covers (trimmed whitespace): look further
                    first = _token_at(enc, start, end, 1)
                if last is None:
                    last = _token_at(enc, end - 1, start - 1, -1)
                if first is not None and last is not None and first <= last:
                    segments[first : last + 1] = code
            results[i] = (ids, segments)
        for i, enc in zip(batch.raw, batch.raw_encodings, strict=True):
            ids = enc.ids
            if self.eos_id is not None and (not ids or ids[-1] != self.eos_id):
                ids = [*ids, self.eos_id]  # documents end with EOS, so packed ones stay apart
            ids = np.asarray(ids, dtype=np.int32)
            results[i] = (ids, np.full(len(ids), ANSWER, dtype=np.uint8))
        return results

    def encode_batch(self, examples: list[Example]) -> list[tuple[np.ndarray, np.ndarray] | InputError]:
        """:meth:`prepare`, :meth:`tokenize` and :meth:`finish` in one call (what a worker process runs)."""
        return self.finish(self.tokenize(self.prepare(examples)))


class Batch:
    """One batch on its way through :class:`ChatLayout`'s phases."""

    __slots__ = ("chat", "encodings", "examples", "raw", "raw_encodings", "results", "spans", "texts")

    def __init__(self, examples: list[Example]):
        self.examples = examples
        self.results: list = [None] * len(examples)
        self.chat: list[int] = []  # indices of chat examples, in order, with their texts and spans
        self.texts: list[str] = []
        self.spans: list[list[tuple[int, int, int]]] = []
        self.raw: list[int] = []  # indices of raw-text (pretrain) examples
        self.encodings: list = []
        self.raw_encodings: list = []


def _splice(skeleton: list[str], contents: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Contents dropped between the template's pieces; returns the text and each content's span."""
    parts, spans, pos = [skeleton[0]], [], len(skeleton[0])
    for content, after in zip(contents, skeleton[1:], strict=True):
        spans.append((pos, pos + len(content)))
        parts += [content, after]
        pos += len(content) + len(after)
    return "".join(parts), spans


def _token_at(encoding, char: int, stop: int, step: int) -> int | None:
    """The token covering ``char``, or the nearest one towards ``stop`` (whitespace a tokenizer
    trims from offsets belongs to no token)."""
    for c in range(char, stop, step):
        t = encoding.char_to_token(c)
        if t is not None:
            return t
    return None


def shortest_thought_turns(tokenizer, refine_prompt: str, num_thoughts: int) -> int:
    """How many tokens a record's ``ptr`` layout adds to its ``qa`` layout (query → answer) when
    ``--overflow shorten_thoughts`` has cut each of its ``num_thoughts`` thoughts to the least: the
    thought turns of one token each and the refine turns. A ``qa`` corpus encoded to ``max_length``
    minus this drops exactly the records whose ``ptr`` layout at ``max_length`` is ``answer_too_long``
    (the template's wrapping does not depend on the contents; the tests check it on real records)."""

    def length(messages: list[dict]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    query, answer = {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}
    thought = [{"role": "assistant", "content": "x"}, {"role": "user", "content": refine_prompt}]
    one_token = len(tokenizer("x", add_special_tokens=False).input_ids)
    longer = length([query, *thought * num_thoughts, answer]) - length([query, answer])
    return longer - num_thoughts * (one_token - MIN_THOUGHT_TOKENS)
