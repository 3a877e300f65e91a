"""The backend contract (ptr/inference/backend.py): every registered backend implements it, a backend
that offers nothing optional gets safe defaults, one factory builds them all; generation stops at the
chat template's end-of-turn token; an answer fed back is cleaned like training text; the refine prompt
and the layout a model was trained with (its ptr_train.json) are its defaults at evaluation, refinement
and serving."""

from __future__ import annotations

import json
import os

import pytest

from ptr.chat import KNOWN_END_OF_TURN, clean_generated, end_of_turn_tokens
from ptr.errors import PtrError
from ptr.evaluate import EvalConfig, TaskConfig, evaluate
from ptr.inference import (
    LOCAL_BACKENDS,
    REFINE_PROMPT,
    Backend,
    BackendOptions,
    Completion,
    SamplingParams,
    continue_conversation,
    load_backend,
    refine,
    refine_prompt_for,
)
from ptr.inference.backends import REGISTRY
from ptr.inference.hf import TransformersBackend

TRAINED_PROMPT = "Check every step of your answer, then answer again."


def chat(text):
    return [{"role": "user", "content": text}]


class Echo(Backend):
    """A backend that implements only what the contract requires: it says which round it is in."""

    name = "echo"

    def __init__(self):
        self.calls = []

    @classmethod
    def from_options(cls, model_ref, options):
        return cls()

    def generate(self, conversations, params, *, progress=None, session=None, keys=None, keep=True):
        self.calls.append({"conversations": list(conversations), "session": session})
        return [Completion(f"  answer {len(c) // 2 + 1}\n", 3, 2, "stop") for c in conversations]


class Recording(TransformersBackend):
    """The transformers backend, keeping every conversation it was asked."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked = []

    def generate(self, conversations, params, **kwargs):
        self.asked.append(list(conversations))
        return super().generate(conversations, params, **kwargs)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, tiny_path):
    """tiny-random as a model ptr trained: its files, and a provenance record with its refine prompt."""
    folder = tmp_path_factory.mktemp("trained") / "final"
    folder.mkdir()
    for name in os.listdir(tiny_path):
        os.symlink(os.path.join(tiny_path, name), folder / name)
    record = {"base_model": "tiny-random", "refine_prompt": TRAINED_PROMPT, "layout": "ptr_chat"}
    (folder / "ptr_train.json").write_text(json.dumps(record))
    return str(folder)


# -- the contract ---------------------------------------------------------------------------------


def test_registry_holds_every_backend_and_each_implements_the_contract():
    assert set(REGISTRY) == {"transformers", "vllm", "openai", "kserve"}
    for name, cls in REGISTRY.items():
        assert issubclass(cls, Backend) and cls.name == name
        assert "from_options" in vars(cls) and "generate" in vars(cls), name
    assert LOCAL_BACKENDS == ("transformers", "vllm")
    assert REGISTRY["kserve"].refine is not Backend.refine  # the server runs the rounds itself


def test_a_backend_without_optional_capabilities_gets_safe_defaults():
    echo = Echo()
    assert echo.fits(chat("x" * 100_000)) and echo.prompt_tokens(chat("x")) is None
    assert echo.session() is None and echo.provenance() == {} and echo.tokenizer is None
    assert echo.chat_template is None
    assert not echo.streams
    pieces = []  # streaming's default: each completion's whole text once generation is done
    outs = echo.generate_stream(
        [chat("Q1"), chat("Q2")], SamplingParams(), lambda i, t: pieces.append((i, t))
    )
    assert pieces == [(0, outs[0].text), (1, outs[1].text)] and len(echo.calls) == 1
    echo.calls.clear()
    seen = []
    out = refine(
        echo,
        [chat("Q1"), chat("Q2")] * 40,
        3,
        SamplingParams(),
        refine_prompt="Again.",
        chunk_size=64,
        on_round=lambda k, i, o: seen.append(k),
    )
    assert [[c.text for c in r] for r in out] == [["  answer 1\n", "  answer 2\n", "  answer 3\n"]] * 80
    assert seen == [1, 2, 3] and all(call["session"] is None for call in echo.calls)
    assert len(echo.calls) == 3  # no caches kept between rounds: no chunks, one call per round
    # round 3 is asked the whole conversation: each answer, cleaned, then the refine turn
    assert echo.calls[2]["conversations"][0] == [
        *chat("Q1"),
        {"role": "assistant", "content": "answer 1"},
        {"role": "user", "content": "Again."},
        {"role": "assistant", "content": "answer 2"},
        {"role": "user", "content": "Again."},
    ]


def test_one_factory_maps_the_options_and_refuses_what_it_cannot_build():
    backend = load_backend("transformers", "tiny-random", BackendOptions(dtype="float32", batch_size=3))
    assert isinstance(backend, TransformersBackend) and backend.batch_size == 3
    assert str(next(backend.model.parameters()).dtype) == "torch.float32"
    with pytest.raises(PtrError, match="unknown backend 'tpu'"):
        load_backend("tpu", "tiny-random")
    for kind in ("openai", "kserve"):
        with pytest.raises(PtrError, match=f"the {kind} backend needs --endpoint"):
            load_backend(kind, "served", BackendOptions())


# -- what the model sees ----------------------------------------------------------------------------


def test_generation_stops_at_the_templates_end_of_turn_not_only_at_eos():
    """A tokenizer whose EOS is <|endoftext|> while its chat template ends turns with a token of its
    own (as a base model's after chat-format training): generation stops at that token."""
    import torch

    from ptr.models import load_model

    model, tok = load_model("tiny-random", dtype="float32")
    turn_end = "<|turn_end|>"
    assert turn_end not in KNOWN_END_OF_TURN  # only the template can tell
    tok.add_special_tokens({"additional_special_tokens": [turn_end], "eos_token": "<|endoftext|>"})
    tok.chat_template = tok.chat_template.replace("<|im_end|>", turn_end)
    model.resize_token_embeddings(len(tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    end_id = tok.convert_tokens_to_ids(turn_end)
    assert turn_end in end_of_turn_tokens(tok)  # the encoder gives the same token its loss weight

    backend = TransformersBackend(model=model, tokenizer=tok)
    assert end_id in backend.eos_ids and tok.eos_token_id in backend.eos_ids
    bias = torch.zeros(len(tok))
    bias[end_id] = 1e4  # the model, trained on chat data, ends its turn
    handle = model.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    try:
        out = backend.generate([chat("What is 2 + 2?")], SamplingParams(max_new_tokens=10))[0]
    finally:
        handle.remove()
    assert (out.finish_reason, out.completion_tokens, out.text) == ("stop", 1, "")


def test_answers_fed_back_are_cleaned_like_training_text():
    import ptr.data.cleaning

    assert ptr.data.cleaning.clean_generated is clean_generated  # one function for both sides
    raw = "\n  The answer is 4.<|im_end|>\n<|im_start|>user\nAn invented turn.  "
    conv = continue_conversation(chat("What is 2 + 2?"), raw, "Again.")
    assert conv[1:] == [
        {"role": "assistant", "content": "The answer is 4."},
        {"role": "user", "content": "Again."},
    ]
    assert continue_conversation("Question: 2+2?\nAnswer:", "  4\n", "Again.") == (
        "Question: 2+2?\nAnswer: 4\n\nQuestion: Again.\nAnswer:"
    )


def test_trained_refine_prompt_is_the_default_and_a_different_one_warns(trained_dir, tiny_backend, capsys):
    trained = TransformersBackend(trained_dir, dtype="float32")
    assert trained.provenance()["refine_prompt"] == TRAINED_PROMPT
    assert refine_prompt_for(trained, None) == TRAINED_PROMPT
    assert refine_prompt_for(trained, TRAINED_PROMPT) == TRAINED_PROMPT
    assert "warning" not in capsys.readouterr().err
    assert refine_prompt_for(trained, "Think again.") == "Think again."
    err = capsys.readouterr().err
    assert "warning:" in err and TRAINED_PROMPT in err and "Think again." in err
    assert refine_prompt_for(tiny_backend, None) == REFINE_PROMPT  # no provenance: the paper's


def test_eval_and_serve_ask_with_the_trained_refine_prompt(trained_dir, tmp_path, capsys):
    backend = Recording(trained_dir, dtype="float32")
    config = EvalConfig(
        model_path=trained_dir,
        tasks=["arith"],
        rounds=2,
        format_type="chat",
        task_configs={"arith": TaskConfig(limit=2)},
        max_new_tokens=4,
        output_path=str(tmp_path),
        bootstrap=20,
        plot=False,
    )
    evaluate(config, backend=backend)
    round2 = backend.asked[1]
    assert [c[-1] for c in round2] == [{"role": "user", "content": TRAINED_PROMPT}] * 2

    # the plain layout on a chat-trained model is allowed, with a warning
    capsys.readouterr()
    evaluate(config.model_copy(update={"format_type": "default", "save_name": "plain"}), backend=backend)
    assert "never saw" in capsys.readouterr().err

    from ptr.serve.kserve_model import RefiningModel

    served = RefiningModel("ptr", trained_dir, dtype="float32")
    assert served.load() and served.refine_prompt == TRAINED_PROMPT
