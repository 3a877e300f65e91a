import pytest

from ptr.inference import Completion, SamplingParams, continue_conversation, load_backend, refine
from ptr.inference.hf import TransformersBackend
from ptr.inference.vllm_backend import _Rounds
from ptr.prompts import REFINE_PROMPT

QUESTIONS = [
    "What is 12 * 7?",
    "Name the capital city where the government sits, and explain why a capital matters.",
    "def add(a, b):",
    "If a train leaves at nine and arrives at eleven, how long is the trip? Think step by step and check.",
    "Water boils at what temperature?",
]


def convs():
    return [[{"role": "user", "content": q}] for q in QUESTIONS]


def texts(results):
    return [[c.text for c in rounds] for rounds in results]


def test_refine_rounds_structure(tiny_backend):
    params = SamplingParams(max_new_tokens=10)
    seen = []
    out = refine(tiny_backend, convs(), 3, params, on_round=lambda k, idx, outs: seen.append((k, idx)))
    assert len(out) == len(QUESTIONS) and all(len(r) == 3 for r in out)
    assert [k for k, _ in seen] == [1, 2, 3]
    for rounds in out:
        for c in rounds:
            assert c.completion_tokens >= 1 and c.finish_reason in ("stop", "length")
            assert c.prompt_tokens > 0
    # later rounds see a longer prompt: the previous answer and the refine turn
    assert out[0][1].prompt_tokens > out[0][0].prompt_tokens
    # outputs depend on the input (the tiny model is not degenerate)
    assert len({r[0].text for r in out}) > 1


def test_pipelined_rounds_arriving_out_of_order_are_reported_per_round():
    """vLLM's pipelined refinement hands completions over as they finish, rounds of different
    conversations interleaved; each conversation's stay in round order and ``on_round(k)`` comes once
    every conversation has finished round k."""
    seen, generations = [], []
    rounds = _Rounds(
        3, 2, lambda k, idx, outs: seen.append((k, idx, [o.text for o in outs])), generations.append
    )

    def done(i, text):
        return rounds.add(
            i, Completion(text=text, prompt_tokens=1, completion_tokens=1, finish_reason="stop")
        )

    assert [done(1, "b1"), done(1, "b2"), done(0, "a1"), done(0, "a2")] == [1, 2, 1, 2]
    assert seen == []  # conversation 2 is still in round 1
    assert done(2, "c1") == 1
    assert seen == [(1, [0, 1, 2], ["a1", "b1", "c1"])]
    done(2, "c2")
    assert seen[1:] == [(2, [0, 1, 2], ["a2", "b2", "c2"])]
    assert [[c.text for c in r] for r in rounds.results] == [["a1", "a2"], ["b1", "b2"], ["c1", "c2"]]
    assert generations == [1] * 6


def test_prefix_reuse_gives_identical_greedy_outputs(tiny_backend):
    params = SamplingParams(max_new_tokens=12)
    with_reuse = refine(tiny_backend, convs(), 3, params)
    plain = TransformersBackend(
        model=tiny_backend.model, tokenizer=tiny_backend.tokenizer, prefix_reuse=False
    )
    without = refine(plain, convs(), 3, params)
    assert texts(with_reuse) == texts(without)


def test_prefix_session_skips_recomputing_the_prefix(tiny_backend):
    """Round 2 feeds only the tokens after the cached prefix to the model."""
    fed = []
    model = tiny_backend.model
    handle = model.model.embed_tokens.register_forward_hook(lambda m, inp, out: fed.append(inp[0].shape[1]))
    try:
        session = tiny_backend.session()
        conv = [{"role": "user", "content": QUESTIONS[3]}]
        params = SamplingParams(max_new_tokens=6)
        first = tiny_backend.generate([conv], params, session=session, keys=["q"])[0]
        prompt1 = fed[0]
        fed.clear()
        second = tiny_backend.generate(
            [continue_conversation(conv, first.text)], params, session=session, keys=["q"], keep=False
        )[0]
    finally:
        handle.remove()
    assert second.prompt_tokens > prompt1
    # the prefill of round 2 is much shorter than its prompt: the round-1 prompt was not recomputed
    assert fed[0] < second.prompt_tokens - prompt1 + 8
    assert len(session) == 0  # keep=False: the conversation is over, its cache is not kept


def test_batched_equals_one_at_a_time(tiny_backend):
    params = SamplingParams(max_new_tokens=12)
    batched = refine(tiny_backend, convs(), 2, params)
    single = [refine(tiny_backend, [c], 2, params)[0] for c in convs()]
    assert texts(batched) == texts(single)


def test_plain_string_prompts(tiny_backend):
    params = SamplingParams(max_new_tokens=8)
    out = refine(tiny_backend, ["Question: What is 2 + 2?\nAnswer:"], 2, params)
    assert len(out[0]) == 2
    assert continue_conversation("Q:", " 4").endswith(f"Question: {REFINE_PROMPT}\nAnswer:")


def test_sampling_is_seeded(tiny_backend):
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=40, seed=7)
    a = refine(tiny_backend, convs(), 1, params)
    b = refine(tiny_backend, convs(), 1, params)
    assert texts(a) == texts(b)
    c = refine(tiny_backend, convs(), 1, SamplingParams(max_new_tokens=12, temperature=1.0, seed=8))
    assert texts(a) != texts(c)


def test_stop_strings_and_length(tiny_backend):
    params = SamplingParams(max_new_tokens=20)
    base = tiny_backend.generate(convs(), params)
    # pick a stop string from the middle of a generated text: generation must end there
    text = next(c.text for c in base if len(c.text.strip()) > 6)
    i = next(c for c in base if c.text == text)
    stop = text[3:6]
    out = tiny_backend.generate([convs()[base.index(i)]], SamplingParams(max_new_tokens=20, stop=(stop,)))[0]
    assert stop not in out.text and out.finish_reason == "stop"
    assert text.startswith(out.text)
    short = tiny_backend.generate(convs()[:1], SamplingParams(max_new_tokens=3))[0]
    assert short.completion_tokens <= 3


def test_streamed_pieces_join_to_the_text_and_come_while_decoding(tiny_backend):
    params = SamplingParams(max_new_tokens=24)
    plain = tiny_backend.generate(convs(), params)
    events = []

    class Counting:  # how many decoding steps had run when each piece came
        def __init__(self):
            self.steps = 0

    counter = Counting()
    model_forward = tiny_backend.model.forward

    def counted(*args, **kwargs):
        counter.steps += 1
        return model_forward(*args, **kwargs)

    tiny_backend.model.forward = counted
    try:
        streamed = tiny_backend.generate_stream(
            convs(), params, lambda i, piece: events.append((i, piece, counter.steps))
        )
    finally:
        del tiny_backend.model.forward
    assert tiny_backend.streams
    assert [c.text for c in streamed] == [c.text for c in plain]
    for i, c in enumerate(streamed):
        assert "".join(p for j, p, _ in events if j == i) == c.text, i
    long_rows = [i for i, c in enumerate(streamed) if c.completion_tokens > 4]
    assert long_rows
    for i in long_rows:  # several pieces, the first long before the last decoding step
        steps = [s for j, _, s in events if j == i]
        assert len(steps) >= 2 and steps[0] < counter.steps, (i, steps, counter.steps)
    assert all(piece for _, piece, _ in events)


def test_streaming_never_hands_out_a_stop_string(tiny_backend):
    base = tiny_backend.generate(convs(), SamplingParams(max_new_tokens=20))
    i, text = next((i, c.text) for i, c in enumerate(base) if len(c.text.strip()) > 8)
    stop = text[4:8]
    pieces = []
    (out,) = tiny_backend.generate_stream(
        [convs()[i]], SamplingParams(max_new_tokens=20, stop=(stop,)), lambda _, p: pieces.append(p)
    )
    assert "".join(pieces) == out.text and stop not in out.text and out.finish_reason == "stop"
    assert text.startswith(out.text)


def test_eos_ends_turn_and_no_control_tokens(tiny_backend):
    # make the end-of-turn token the most likely next token: generation must stop with reason "stop"
    import torch

    eos = tiny_backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    head = tiny_backend.model.lm_head
    handle = head.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([eos]), 1e4))
    try:
        out = tiny_backend.generate(convs()[:2], SamplingParams(max_new_tokens=10))
    finally:
        handle.remove()
    assert all(c.finish_reason == "stop" and c.completion_tokens == 1 and c.text == "" for c in out)
    for c in tiny_backend.generate(convs(), SamplingParams(max_new_tokens=16)):
        assert "<|im_start|>" not in c.text and "<|im_end|>" not in c.text


def test_prompt_longer_than_context_is_refused(tiny_backend):
    long = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(ValueError, match="context"):
        tiny_backend.generate([long], SamplingParams(max_new_tokens=4))


def test_invalid_sampling_params():
    for kwargs in ({"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_k": -2}):
        with pytest.raises(ValueError):
            SamplingParams(**kwargs)


def test_bad_backend_name():
    from ptr.errors import PtrError

    with pytest.raises(PtrError, match="unknown backend"):
        load_backend("tpu", "tiny-random")


@pytest.mark.smollm
def test_smollm2_greedy_answer_is_stable(smollm_path):
    import torch

    backend = TransformersBackend("smollm2-135m-instruct", dtype=torch.float32)
    params = SamplingParams(max_new_tokens=24)
    q = [[{"role": "user", "content": "What is the capital of France?"}]]
    a = backend.generate(q, params)[0].text
    b = backend.generate(q, params)[0].text
    assert a.strip() and a == b
    assert "Paris" in a


def test_cpu_decode_attention_matches_sdpa_with_padding():
    """Decoding steps with ``ptr_sdpa_decode`` give SDPA's logits on left-padded GQA batches."""
    import torch

    from ptr.inference.decode_attention import DECODE_SDPA, use_decode_attention
    from ptr.models import load_model

    model, _ = load_model("tiny-random", dtype="float32")
    assert model.config._attn_implementation == "sdpa" and model.config.num_key_value_heads < 4
    torch.manual_seed(0)
    ids = torch.randint(10, 200, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :5] = 0  # left padding, as the backend lays batches out
    mask[2, :2] = 0

    def decode():
        from transformers import DynamicCache

        cache, m, logits = DynamicCache(config=model.config), mask.clone(), []
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=m, past_key_values=cache, use_cache=True)
            for step in range(4):
                m = torch.cat([m, torch.ones(3, 1, dtype=torch.long)], dim=1)
                pos = (m.sum(1, keepdim=True) - 1).long()
                out = model(
                    input_ids=ids[:, step : step + 1],
                    attention_mask=m,
                    position_ids=pos,
                    past_key_values=cache,
                    use_cache=True,
                )
                logits.append(out.logits[:, -1])
        return torch.stack(logits)

    reference = decode()
    use_decode_attention(model)
    assert model.config._attn_implementation == DECODE_SDPA
    torch.testing.assert_close(decode(), reference, rtol=1e-4, atol=1e-4)
