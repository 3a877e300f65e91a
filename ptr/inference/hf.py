"""The transformers backend: batched decoding with left padding, sampling, stop strings, and
prefix reuse across refinement rounds.

Generation ends at the chat template's end-of-turn token as well as at EOS (:mod:`ptr.chat`).

Prefix reuse: after a round, each conversation's attention cache (keys and values of every token the
model has processed) is kept in a :class:`~ptr.inference.backend.PrefixSession`. In the next round the conversation is
re-tokenized in full and only the tokens after the longest common prefix with the cached tokens are
run through the model. Because the cache is reused only where the token ids agree, the model sees
exactly the ids it would see without reuse, so greedy outputs are the same with and without it.

Shared prefixes: the conversations of one call often begin with the same tokens (a k-shot prompt, a
system prompt). Their longest common prefix is run through the model once, and its cache is copied
into every row that has no cache of its own, so that prefill covers only each question's own tokens.
The cache of the last shared prefix is kept for the next call.

Decoding writes each new token's keys and values into room reserved in advance, instead of letting
transformers' ``DynamicLayer`` concatenate (copy) the whole cache at every step.

Streaming (``generate_stream``): after each decoding step every row hands out the text that can no
longer change (:class:`_TextStream`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ptr.chat import end_of_turn_ids
from ptr.inference.backend import Backend, BackendOptions, OnText, PrefixSession
from ptr.inference.decode_attention import use_decode_attention
from ptr.inference.types import Completion, Conversation, SamplingParams
from ptr.models import load_model
from ptr.models.provenance import read_provenance

# A common prefix shorter than this is not worth a separate forward pass.
MIN_SHARED_PREFIX = 16


@dataclass
class _Entry:
    tokens: list[int]  # the ids whose keys/values are cached, in order
    keys: list  # per layer: tensor [kv_heads, len(tokens), head_dim]
    values: list


@functools.cache
def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A cache layer with room reserved for the tokens still to come. ``DynamicLayer`` appends with
        ``torch.cat``, copying the whole cache at every decoding step (about 40% of a step at 1,000
        cached tokens on a CPU); this writes the new slots in place and hands out a view. The values
        are the same, so outputs are identical."""

        def __init__(self, capacity: int, **kwargs):
            super().__init__(**kwargs)
            self.capacity = capacity
            self._keys = self._values = None
            self._length = 0

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            if self._keys is None or self._length + n > self._keys.shape[-2]:
                size = max(self.capacity, 2 * (self._length + n))
                keys = key_states.new_empty(*key_states.shape[:2], size, key_states.shape[-1])
                values = value_states.new_empty(*value_states.shape[:2], size, value_states.shape[-1])
                if self._length:
                    keys[:, :, : self._length] = self._keys[:, :, : self._length]
                    values[:, :, : self._length] = self._values[:, :, : self._length]
                self._keys, self._values = keys, values
            self._keys[:, :, self._length : self._length + n] = key_states
            self._values[:, :, self._length : self._length + n] = value_states
            self._length += n
            self.keys = self._keys[:, :, : self._length]
            self.values = self._values[:, :, : self._length]
            return self.keys, self.values

        def batch_select_indices(self, indices) -> None:
            """Keep only the rows ``indices`` (rows that stopped leave the batch)."""
            if self._keys is not None:
                self._keys = self._keys.index_select(0, indices)
                self._values = self._values.index_select(0, indices)
                self.keys = self._keys[:, :, : self._length]
                self.values = self._values[:, :, : self._length]

    return GrowingLayer


def _cache_layer(capacity: int):
    """A cache layer for a full-attention layer, with room for ``capacity`` tokens."""
    return _growing_layer_class()(capacity)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class _TextStream:
    """One row's text, handed out as it is decoded: only what can no longer change. A partial UTF-8
    character at the end waits for its next byte, and the last ``len(longest stop) - 1`` characters
    wait while a stop string could still begin there (the completion's text is cut before it)."""

    def __init__(self, tokenizer, stops: tuple[str, ...], emit):
        self.tokenizer, self.emit = tokenizer, emit
        self.hold = max(map(len, stops), default=1) - 1
        self.sent = 0  # characters handed out so far

    def step(self, generated: list[int]) -> None:
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        upto = len(text) - self.hold
        if upto > self.sent:
            self.emit(text[self.sent : upto])
            self.sent = upto

    def finish(self, text: str) -> None:
        """The completion's final text (stop strings cut): the rest of it."""
        if len(text) > self.sent:
            self.emit(text[self.sent :])
            self.sent = len(text)


@dataclass
class _Layout:
    """One batch laid out for its first forward pass. Per row: ``[pad][reused cache][pad][new prompt
    tokens]``; positions are the tokens' real positions in the conversation."""

    reuse: list[int]  # per row: tokens whose keys/values come from its cache entry
    reused_len: int  # width of the reused part (the longest reuse)
    input_ids: object  # [batch, new_len]: the prompt tokens still to run
    position_ids: object
    mask: object  # [batch, reused_len + new_len]


class TransformersBackend(Backend):
    name = "transformers"
    streams = True

    def __init__(
        self,
        model_ref=None,
        *,
        model=None,
        tokenizer=None,
        dtype=None,
        device: str | None = None,
        batch_size: int = 16,
        prefix_reuse: bool = True,
        drop_stopped_rows: bool = True,
    ):
        if model is None:
            model, tokenizer = load_model(model_ref, dtype=dtype, device=device)
        self.model, self.tokenizer = model, tokenizer
        use_decode_attention(model)  # CPU decoding steps without the fused kernel (see its module)
        self.model_name = str(model_ref) if model_ref is not None else getattr(model, "name_or_path", "model")
        self.device = next(model.parameters()).device
        self.batch_size = batch_size
        self.prefix_reuse = prefix_reuse
        self.drop_stopped_rows = drop_stopped_rows  # see _decode
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = self._end_ids()
        self.context_length = int(getattr(model.config, "max_position_embeddings", None) or 2048)
        # from_pretrained records the folder it read; a model trained by ptr has its record there
        self._provenance = read_provenance(getattr(model, "name_or_path", None))
        self._shared: _Entry | None = None  # the cache of the last shared prefix (see module docs)

    @classmethod
    def from_options(cls, model_ref, options: BackendOptions) -> TransformersBackend:
        return cls(model_ref, dtype=options.dtype, device=options.device, batch_size=options.batch_size)

    # -- capabilities ---------------------------------------------------------------------------

    def session(self) -> PrefixSession | None:
        return PrefixSession() if self.prefix_reuse else None

    def prompt_tokens(self, conversation: Conversation) -> int:
        return len(self.encode(conversation))

    def provenance(self) -> dict:
        return self._provenance

    # -- tokenization ---------------------------------------------------------------------------

    def _end_ids(self) -> set[int]:
        """EOS, the generation config's EOS ids and the chat template's end-of-turn token."""
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos_ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        return end_of_turn_ids(self.tokenizer, eos_ids=eos_ids)

    def encode(self, conversation: Conversation) -> list[int]:
        """Prompt ids: chat conversations through the chat template, strings as they are."""
        if isinstance(conversation, str):
            return self.tokenizer(conversation).input_ids
        if not self.tokenizer.chat_template:
            raise ValueError(f"{self.model_name} has no chat template; use plain string prompts")
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    # -- generation -----------------------------------------------------------------------------

    def generate(
        self,
        conversations,
        params: SamplingParams,
        *,
        progress=None,
        session: PrefixSession | None = None,
        keys=None,
        keep: bool = True,
    ) -> list[Completion]:
        return self._generate(conversations, params, None, progress, session, keys, keep)

    def generate_stream(
        self,
        conversations,
        params: SamplingParams,
        on_text: OnText,
        *,
        progress=None,
        session: PrefixSession | None = None,
        keys=None,
        keep: bool = True,
    ) -> list[Completion]:
        return self._generate(conversations, params, on_text, progress, session, keys, keep)

    def _generate(self, conversations, params, on_text, progress, session, keys, keep) -> list[Completion]:
        import torch

        ids = [self.encode(c) for c in conversations]
        for i, x in enumerate(ids):
            if len(x) + 1 > self.context_length:
                raise ValueError(
                    f"conversation {i}: prompt of {len(x)} tokens leaves no room in the "
                    f"{self.context_length}-token context"
                )
        if session is not None and keys is None:
            raise ValueError("a session needs one key per conversation")
        session = session if self.prefix_reuse else None
        shared = self._shared_prefix(ids) if self.prefix_reuse else None
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths pad less
        results: list[Completion | None] = [None] * len(ids)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(params.seed if params.seed is not None else torch.seed())
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            entries = [(session.get(keys[i]) if session else None) or shared for i in batch]
            streams = None
            if on_text is not None:
                streams = [
                    _TextStream(self.tokenizer, params.stop, functools.partial(on_text, i)) for i in batch
                ]
            completions, new_entries = self._generate_batch(
                [ids[i] for i in batch],
                entries,
                params,
                generator,
                keep_cache=session is not None and keep,
                streams=streams,
            )
            for i, completion, entry in zip(batch, completions, new_entries, strict=True):
                results[i] = completion
                if session is not None:
                    session.put(keys[i], entry if keep else None)
            if progress is not None:
                progress(len(batch))
        return results  # type: ignore[return-value]

    def _shared_prefix(self, ids: list[list[int]]) -> _Entry | None:
        """The cache of the longest common prefix of ``ids`` (at least one token of each row left
        over), computed once and kept; None when there is no prefix worth sharing."""
        if len(ids) < 2:
            return None
        n = min(len(x) for x in ids) - 1
        first = ids[0]
        for x in ids[1:]:
            n = _common_prefix(first[:n], x[:n])
            if n < MIN_SHARED_PREFIX:
                return None
        tokens = first[:n]
        if self._shared is not None and self._shared.tokens == tokens:
            return self._shared
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            self.model(
                input_ids=torch.tensor([tokens], device=self.device),
                attention_mask=torch.ones(1, n, dtype=torch.long, device=self.device),
                position_ids=torch.arange(n, device=self.device).unsqueeze(0),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        keys = [layer.keys[0].clone() for layer in cache.layers]
        values = [layer.values[0].clone() for layer in cache.layers]
        self._shared = _Entry(list(tokens), keys, values)
        return self._shared

    def _generate_batch(
        self, ids, entries, params: SamplingParams, generator, keep_cache: bool, streams=None
    ):
        """One batch: lay it out, fill the cache with what is reused, decode, and return the
        completions and (with ``keep_cache``) each row's cache for its next round. ``streams``: one
        :class:`_TextStream` per row, fed as the row decodes."""
        layout = self._layout(ids, entries)
        max_new = min(params.max_new_tokens, self.context_length - max(len(x) for x in ids))
        cache = self._reused_cache(layout, entries, room=layout.mask.shape[1] + max_new)
        generated, finish, entries = self._decode(
            layout, cache, ids, max_new, params, generator, streams, keep_cache=keep_cache
        )
        completions = [
            self._completion(len(x), tokens, reason, params.stop)
            for x, tokens, reason in zip(ids, generated, finish, strict=True)
        ]
        return completions, entries

    def _layout(self, ids: list[list[int]], entries) -> _Layout:
        """How much of each row its cache entry covers (at least one new token must be fed to get
        logits), and the left-padded tensors for the rest."""
        import torch

        reuse = []
        for x, entry in zip(ids, entries, strict=True):
            n = _common_prefix(entry.tokens, x) if entry is not None else 0
            reuse.append(min(n, len(x) - 1))
        new = [x[r:] for x, r in zip(ids, reuse, strict=True)]
        bsz, p_len, n_len = len(ids), max(reuse), max(map(len, new))
        mask = torch.zeros(bsz, p_len + n_len, dtype=torch.long)
        input_ids = torch.full((bsz, n_len), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros(bsz, n_len, dtype=torch.long)
        for b in range(bsz):
            r, k = reuse[b], len(new[b])
            mask[b, p_len - r : p_len] = 1
            mask[b, p_len + n_len - k :] = 1
            input_ids[b, n_len - k :] = torch.tensor(new[b])
            position_ids[b, n_len - k :] = torch.arange(r, r + k)
        return _Layout(reuse, p_len, input_ids, position_ids, mask)

    def _reused_cache(self, layout: _Layout, entries, room: int):
        """A cache whose full-attention layers grow in place (room for ``room`` tokens), holding each
        row's reused keys and values right-aligned in the reused part."""
        import torch
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=self.model.config)
        cache.layers = [
            _cache_layer(room) if type(layer) is DynamicLayer else layer for layer in cache.layers
        ]
        p_len = layout.reused_len
        if not p_len:
            return cache
        ref = next(e for e in entries if e is not None)
        for layer in range(len(ref.keys)):
            shape = (len(entries), ref.keys[layer].shape[0], p_len, ref.keys[layer].shape[-1])
            keys = torch.zeros(shape, dtype=ref.keys[layer].dtype, device=self.device)
            values = torch.zeros(shape, dtype=ref.values[layer].dtype, device=self.device)
            for b, (entry, r) in enumerate(zip(entries, layout.reuse, strict=True)):
                if r:
                    keys[b, :, p_len - r :] = entry.keys[layer][:, :r]
                    values[b, :, p_len - r :] = entry.values[layer][:, :r]
            cache.update(keys, values, layer)
        return cache

    def _decode(
        self,
        layout: _Layout,
        cache,
        ids: list[list[int]],
        max_new: int,
        params,
        generator,
        streams=None,
        *,
        keep_cache: bool = False,
    ):
        """Prefill, then one token per row per step until every row stopped. Returns the generated ids,
        each row's finish reason and (``keep_cache``) each row's cache for its next round. A row's
        stream (if any) gets its text after each step and the rest of it when the row stops.

        Rows that stopped leave the batch once they are a quarter of it (their cache is taken out
        first): a decoding step costs about in proportion to the rows it carries, and in a batch of
        short answers and a few that run to the token limit most rows would otherwise ride along."""
        import torch

        model, dev = self.model, self.device
        bsz = len(ids)
        mask = layout.mask
        generated: list[list[int]] = [[] for _ in range(bsz)]
        finish: list[str | None] = [None] * bsz
        entries: list[_Entry | None] = [None] * bsz
        rows = list(range(bsz))  # the original row of each row still in the batch's tensors
        positions = torch.tensor([len(x) for x in ids])

        def take_out(local: list[int]) -> None:  # cache of rows about to leave (or at the end)
            if keep_cache:
                for i in local:
                    b = rows[i]
                    entries[b] = self._extract(cache, mask, i, ids[b] + generated[b][:-1])

        with torch.inference_mode():
            out = model(
                input_ids=layout.input_ids.to(dev),
                attention_mask=mask.to(dev),
                position_ids=layout.position_ids.to(dev),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            for step in range(max_new):
                tokens = self._sample(out.logits[:, -1, :].float(), params, generator).tolist()
                active = []
                for i, b in enumerate(rows):
                    if finish[b] is not None:
                        continue
                    generated[b].append(tokens[i])
                    finish[b] = self._finished(generated[b], params, last_step=step == max_new - 1)
                    if finish[b] is None:
                        active.append(i)
                        if streams is not None:
                            streams[b].step(generated[b])
                    elif streams is not None:
                        streams[b].finish(self._text(generated[b], params.stop))
                if not active:
                    break
                stopped = len(rows) - len(active)
                if self.drop_stopped_rows and 4 * stopped >= len(rows):  # a quarter stopped: they leave
                    take_out([i for i in range(len(rows)) if finish[rows[i]] is not None])
                    keep = torch.tensor(active)
                    cache.batch_select_indices(keep.to(dev))
                    mask, positions = mask[keep], positions[keep]
                    tokens = [tokens[i] for i in active]
                    rows = [rows[i] for i in active]
                    active = list(range(len(rows)))
                step_mask = torch.zeros(len(rows), 1, dtype=torch.long)
                step_mask[active] = 1
                mask = torch.cat([mask, step_mask], dim=1)
                pos = positions.clone().unsqueeze(1)
                positions[active] += 1
                out = model(
                    input_ids=torch.tensor([[t] for t in tokens]).to(dev),
                    attention_mask=mask.to(dev),
                    position_ids=pos.to(dev),
                    past_key_values=cache,
                    use_cache=True,
                )
            take_out(list(range(len(rows))))
        return generated, finish, entries

    def _finished(self, generated: list[int], params: SamplingParams, last_step: bool) -> str | None:
        """ "stop" at an end-of-turn token or a stop string, "length" at the budget, else None."""
        if generated[-1] in self.eos_ids:
            return "stop"
        if params.stop and self._hit_stop(generated, params.stop):
            return "stop"
        return "length" if last_step else None

    def _text(self, generated: list[int], stops) -> str:
        """The completion's text: the generated ids decoded, cut before the first stop string."""
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        for s in stops:
            cut = text.find(s)
            if cut >= 0:
                text = text[:cut]
        return text

    def _completion(self, prompt_len: int, generated: list[int], finish: str | None, stops) -> Completion:
        return Completion(
            text=self._text(generated, stops),
            prompt_tokens=prompt_len,
            completion_tokens=len(generated),
            finish_reason=finish or "length",
        )

    def _extract(self, cache, mask, b: int, tokens: list[int]) -> _Entry | None:
        """Row ``b``'s cache (the slots that hold real tokens), to continue from in its next round."""
        slots = mask[b].nonzero().squeeze(1).to(self.device)
        if len(slots) != len(tokens):  # should never happen; drop the cache rather than reuse a wrong one
            return None
        keys = [layer.keys[b].index_select(1, slots).clone() for layer in cache.layers]
        values = [layer.values[b].index_select(1, slots).clone() for layer in cache.layers]
        return _Entry(tokens, keys, values)

    def _hit_stop(self, generated: list[int], stops: tuple[str, ...]) -> bool:
        tail = self.tokenizer.decode(generated[-16:], skip_special_tokens=True)
        if any(s in tail for s in stops):
            return True
        longest = max(map(len, stops))
        if len(tail) >= longest:
            return False
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        return any(s in text for s in stops)

    @staticmethod
    def _sample(logits, params: SamplingParams, generator):
        import torch

        if params.greedy:
            return logits.argmax(dim=-1).cpu()
        logits = logits / params.temperature
        if params.top_k:
            kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if params.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) > params.top_p  # keep the token that crosses top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        probs = logits.softmax(-1).cpu()
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
