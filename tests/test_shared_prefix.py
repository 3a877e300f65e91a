"""The transformers backend runs a prefix shared by all conversations (a k-shot prompt) once, and
greedy outputs stay exactly what they are without any cache reuse."""

from __future__ import annotations

import pytest

from ptr.inference import SamplingParams, refine
from ptr.inference.hf import MIN_SHARED_PREFIX, TransformersBackend

SHOTS = "".join(
    f"Question: Tom has {a} apples and buys {b} more. How many apples does he have?\n"
    f"Answer: {a} + {b} = {a + b}. The answer is {a + b}.\n\n"
    for a, b in [(3, 4), (10, 5), (7, 8), (12, 9)]
)
QUESTIONS = [
    "What is 12 * 7?",
    "How many legs do 3 spiders have?",
    "Water boils at what temperature?",
    "2 + 2?",
    "Name a prime.",
]
PROMPTS = [f"{SHOTS}Question: {q}\nAnswer:" for q in QUESTIONS]


@pytest.fixture()
def fed(tiny_backend):
    """Sequence lengths of every forward pass through the model."""
    lengths = []
    handle = tiny_backend.model.model.embed_tokens.register_forward_hook(
        lambda m, inp, out: lengths.append(tuple(inp[0].shape))
    )
    yield lengths
    handle.remove()


@pytest.mark.parametrize("rounds", [1, 2])
def test_shared_prefix_keeps_greedy_outputs(tiny_backend, rounds):
    params = SamplingParams(max_new_tokens=10, stop=("\nQuestion:",))
    plain = TransformersBackend(
        model=tiny_backend.model, tokenizer=tiny_backend.tokenizer, prefix_reuse=False, batch_size=2
    )
    shared = TransformersBackend(model=tiny_backend.model, tokenizer=tiny_backend.tokenizer, batch_size=2)
    a = [[c.text for c in r] for r in refine(shared, PROMPTS, rounds, params)]
    b = [[c.text for c in r] for r in refine(plain, PROMPTS, rounds, params)]
    assert a == b
    assert shared._shared is not None and len(shared._shared.tokens) >= MIN_SHARED_PREFIX


def test_prefix_is_computed_once_and_kept(tiny_backend, fed):
    backend = TransformersBackend(model=tiny_backend.model, tokenizer=tiny_backend.tokenizer, batch_size=2)
    params = SamplingParams(max_new_tokens=3)
    ids = [backend.encode(p) for p in PROMPTS]
    backend.generate(PROMPTS, params)
    prefix = len(backend._shared.tokens)
    prefills = [shape for shape in fed if shape[1] > 1]
    # one pass of the shared prefix alone, then each batch feeds only its questions' own tokens
    assert prefills[0] == (1, prefix)
    longest_rest = max(len(x) - prefix for x in ids)
    assert all(shape[1] <= longest_rest for shape in prefills[1:])
    fed.clear()
    backend.generate(PROMPTS[:3], params)  # same prefix: its cache is reused, not recomputed
    assert all(shape[1] <= longest_rest for shape in fed)


def test_no_sharing_without_a_common_prefix(tiny_backend):
    backend = TransformersBackend(model=tiny_backend.model, tokenizer=tiny_backend.tokenizer)
    backend.generate(["Question: one?\nAnswer:", "Tell me a story"], SamplingParams(max_new_tokens=2))
    assert backend._shared is None


def test_cache_grown_in_place_gives_identical_outputs(tiny_backend, monkeypatch):
    """The in-place cache layer holds exactly what transformers' own DynamicLayer would."""
    from transformers.cache_utils import DynamicLayer

    from ptr.inference import hf

    params = SamplingParams(max_new_tokens=12, stop=("\nQuestion:",))
    grown = [[c.text for c in r] for r in refine(tiny_backend, PROMPTS, 2, params)]
    monkeypatch.setattr(hf, "_cache_layer", lambda capacity: DynamicLayer())
    plain = [[c.text for c in r] for r in refine(tiny_backend, PROMPTS, 2, params)]
    assert grown == plain


def test_growing_layer_regrows_past_its_capacity():
    import torch

    from ptr.inference.hf import _cache_layer

    layer = _cache_layer(4)
    parts = [torch.randn(2, 3, n, 8) for n in (3, 1, 1, 5)]
    for part in parts:
        keys, values = layer.update(part, part * 2)
    whole = torch.cat(parts, dim=-2)
    assert torch.equal(keys, whole) and torch.equal(values, whole * 2)
    assert layer.get_seq_length() == 10


def test_rows_that_stopped_leave_the_batch_and_outputs_stay_the_same(tiny_backend, fed):
    """A decoding step carries only rows still generating once a quarter of the batch has stopped;
    each row's text, finish reason and cache for the next round are what they are without that."""
    params = SamplingParams(max_new_tokens=24)
    prompts = [f"Question: {q}\nAnswer:" for q in QUESTIONS * 2]
    keep_all = TransformersBackend(
        model=tiny_backend.model, tokenizer=tiny_backend.tokenizer, batch_size=10, drop_stopped_rows=False
    )
    first = keep_all.generate(prompts, params)
    # tiny-random never ends a turn by itself: make a token it writes early in some rows an end
    early = {c.text for c in first}
    ends = {keep_all.tokenizer(t, add_special_tokens=False).input_ids[2] for t in sorted(early)[:3]}
    dropping = TransformersBackend(model=tiny_backend.model, tokenizer=tiny_backend.tokenizer, batch_size=10)
    for backend in (keep_all, dropping):
        backend.eos_ids = backend.eos_ids | ends
    fed.clear()
    a = [[(c.text, c.finish_reason) for c in r] for r in refine(dropping, prompts, 2, params)]
    decode_batches = {shape[0] for shape in fed if shape[1] == 1}  # one new token per row: a decoding step
    b = [[(c.text, c.finish_reason) for c in r] for r in refine(keep_all, prompts, 2, params)]
    assert a == b
    reasons = [c[1] for r in a for c in r]
    assert "stop" in reasons and "length" in reasons  # rows of both kinds in the batch
    assert 10 in decode_batches and min(decode_batches) < 10  # later steps ran without stopped rows
