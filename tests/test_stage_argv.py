"""Every stage config written as its command's flags (``to_argv``) parses back, through that command's
own parser, to the same config: field by field, with a value other than the default for every field,
booleans off included. Where a new process must be started (torchrun, a PyTorchJob replica) this is
the only way a setting reaches the stage, so a field the command cannot express, or a command default
that differs from the config's, fails here."""

from __future__ import annotations

import pytest

from ptr.data import generate, queries, thoughts
from ptr.data.filters import FilterConfig
from ptr.data.generate import GenerateConfig
from ptr.data.queries import QueriesConfig
from ptr.data.thoughts_config import GENERATION_ONLY, ThoughtsConfig
from ptr.encode import cli as encode_cli
from ptr.encode.encoder import EncodeConfig
from ptr.train import cli as train_cli
from ptr.train.config import TrainConfig


def _queries(argv):
    return queries.config_from_args(queries.parser().parse_args(argv))


def _thoughts(argv):
    return thoughts.config_from_args(thoughts.parser().parse_args(argv))


def _generate(argv):
    return generate.config_from_args(generate.parser().parse_args(argv))


def _encode(argv):
    return encode_cli.config_from_args(encode_cli.parser().parse_args(argv))


def _train(argv):
    return train_cli.config_from_args(argv)[0]


# config class -> (its command's parser, the required fields, a value other than the default for every
# field; fields that cannot be set together come in a second case, IMPORT below)
CASES = {
    QueriesConfig: (
        _queries,
        {"output_path": "q.jsonl"},
        {
            "inputs": ["a.jsonl", "hf:org/set"],
            "output_path": "s3://b/q.jsonl",
            "field": "prompt",
            "split": "test",
            "decontaminate_dir": "/data",
            "ngram": 9,
            "min_ngram": 5,
            "min_words": 2,
            "max_words": 100,
            "limit": 7,
            "seed": 3,
        },
    ),
    ThoughtsConfig: (
        _thoughts,
        {"queries": "q.jsonl", "output_path": "t.jsonl", "weak_models": ["m"], "strong_model": "s"},
        {
            "queries": "s3://b/q.jsonl",
            "output_path": "s3://b/t.jsonl",
            "weak_models": ["m1", "openai:m2"],
            "strong_model": "big",
            "judge_model": "judge",
            "num_thoughts": 3,
            "data_len": 5,
            "backend": "openai",
            "endpoint": "http://127.0.0.1:9/v1",
            "dtype": "float32",
            "batch_size": 4,
            "max_new_tokens": 64,
            "answer_max_new_tokens": 96,
            "temperature": 0.3,
            "top_p": 0.5,
            "top_k": 7,
            "strong_temperature": 0.2,
            "strong_top_p": 0.9,
            "strong_top_k": 3,
            "seed": 5,
            "refine_prompt": "Once more, better.",
            "final_instruction": "Write the best answer.",
            "filters": FilterConfig(
                allow_truncated=True,
                min_chars=4,
                repeat_threshold=0.8,
                min_consistency=0.1,
                min_improvement=0.2,
            ),
            "embedding_model": "BAAI/bge-m3",
            "progress": False,
            "publish_every_s": 10.0,
        },
    ),
    GenerateConfig: (
        _generate,
        {"model_path": ["m"], "prompt_paths": ["p.jsonl"], "output_path": "out.jsonl"},
        {
            "model_path": ["a", "b"],
            "model_name": ["x", "y"],
            "prompt_paths": ["p1.jsonl", "p2.jsonl"],
            "output_path": "outdir",
            "max_new_tokens": 9,
            "temperature": 0.5,
            "top_p": 0.7,
            "top_k": 3,
            "seed": 2,
            "data_len": 5,
            "backend": "vllm",
            "use_vllm": True,
            "use_cpu": True,
            "endpoint": "http://127.0.0.1:9/v1",
            "chat": True,
            "batch_size": 3,
            "dtype": "float32",
        },
    ),
    EncodeConfig: (
        _encode,
        {"tokenizer_path": "tiny-random", "output_path": "out", "input": "t.jsonl"},
        {
            "tokenizer_path": "smollm2-135m-instruct",
            "output_path": "s3://b/shards",
            "input": "s3://b/t.jsonl",
            "data_loader_path": "loader.py",
            "corpus_name": "mine",
            "encode_type": "qa",
            "max_length": 256,
            "merge_data": True,
            "save_dtype": "int32",
            "tokens_per_file": 1000,
            "overflow": "truncate",
            "refine_prompt": "Once more, better.",
            "num_proc": 2,
        },
    ),
    TrainConfig: (
        _train,
        {"model_path": "tiny-random", "data_path": "shards"},
        {
            "model_path": "models:/ptr@champion",
            "data_path": "s3://b/shards",
            "save_name": "run",
            "output_path": "s3://b/out",
            "deepspeed_config_path": "paper",
            "max_epochs": 2,
            "max_steps": 5,
            "save_steps": 2,
            "save_epochs": 1,
            "load_ckpt_path": "ckpt",
            "save_optimizer": False,
            "use_lora": True,
            "lora_config_path": "lora.json",
            "save_lora_adapter": True,
            "loss_weights": (0.5, 0.25, 0.25),
            "beta": "quadratic",
            "seed": 1,
            "resume": "auto",
            "gradient_checkpointing": True,
            "attn_implementation": "sdpa",
            "keep_checkpoints": 2,
        },
    ),
}


def _default(field):
    return field.default_factory() if field.default_factory else field.default


# Importing thought data (``thoughts_input``) excludes the fields that generate it.
IMPORT = {
    "thoughts_input": "hf:org/thoughts",
    "output_path": "t.jsonl",
    "data_len": 3,
    "refine_prompt": "Once more, better.",
    "filters": FilterConfig(min_chars=2),
    "progress": False,
}


@pytest.mark.parametrize("config_class", list(CASES), ids=lambda c: c.__name__)
def test_every_field_round_trips(config_class):
    from_argv, _, values = CASES[config_class]
    fields = config_class.model_fields
    apart = {"thoughts_input"} if config_class is ThoughtsConfig else set()
    missing = sorted(set(fields) - set(values) - apart)
    assert not missing, f"give every field a value here: {missing}"
    same = sorted(k for k, v in values.items() if v == _default(fields[k]))
    assert not same, f"these values are the defaults, so nothing is tested: {same}"
    config = config_class(**values)
    assert from_argv(config.to_argv()) == config


def test_imported_thoughts_round_trip():
    config = ThoughtsConfig(**IMPORT)
    assert not set(GENERATION_ONLY) & set(IMPORT)
    assert _thoughts(config.to_argv()) == config


@pytest.mark.parametrize("config_class", list(CASES), ids=lambda c: c.__name__)
def test_defaults_round_trip_and_each_boolean_both_ways(config_class):
    from_argv, required, _ = CASES[config_class]
    config = config_class(**required)
    assert from_argv(config.to_argv()) == config
    for name, field in config_class.model_fields.items():
        if field.annotation is bool:
            for value in (True, False):
                flipped = config_class(**{**required, name: value})
                assert from_argv(flipped.to_argv()) == flipped, f"{name}={value}"
