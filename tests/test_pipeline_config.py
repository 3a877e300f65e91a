"""The pipeline's typed config: shipped configs load, mistakes name the field, and parameters survive
the trip through Kubeflow (no nulls; numbers come back as floats)."""

from __future__ import annotations

import json

import pytest

from pipelines.run import parse_overrides
from ptr.errors import PtrError
from ptr.pipeline.config import PipelineConfig, load_config, section
from tests.support.k8s import REPO

CONFIGS = sorted((REPO / "pipelines" / "configs").rglob("*.yaml"))
REPRODUCE = REPO / "pipelines" / "configs" / "reproduce"


@pytest.mark.parametrize(
    "path", CONFIGS, ids=[p.relative_to(REPO / "pipelines" / "configs").as_posix() for p in CONFIGS]
)
def test_shipped_configs_load_and_round_trip_as_parameters(path):
    config = load_config(path)
    arguments = config.arguments()
    assert set(arguments) == {"run", "data", "train", "evaluate", "promote"}
    assert "null" not in json.dumps(arguments)
    # Kubeflow returns every number as a float; each step validates its section from that form.
    as_floats = json.loads(json.dumps(arguments), parse_int=float)
    for name, value in as_floats.items():
        assert section(name, value) == getattr(config, name)
        # and free-form mappings get their ints back (DeepSpeed refuses warmup_num_steps: 2.0)
        assert section(name, value).model_dump_json() == getattr(config, name).model_dump_json()


def test_local_config_is_the_embedded_smollm2_run():
    """The local default trains on the paper's released thought data and scores tasks where SmolLM2
    is off the floor (not arith or gsm8k at 0%), on the round it was trained to answer."""
    config = load_config(REPO / "pipelines/configs/local.yaml")
    assert config.run.runtime == "local" and config.train.base_model == "smollm2-135m-instruct"
    assert config.data.thoughts_input.endswith("queries/PTR_thought_dataset_sampled.json")
    assert config.train.overflow == "shorten_thoughts" and config.data.num_thoughts == 1
    assert not {"arith", "gsm8k"} & set(config.evaluate.tasks)
    assert config.promote.primary.endswith(f".round{config.trained_round}")


def test_paper_config_holds_the_papers_settings():
    from ptr.pipeline.steps.training import deepspeed_config

    config = load_config(REPO / "pipelines/configs/paper-qwen2-7b.yaml")
    assert (
        config.train.base_model == "Qwen/Qwen2-7B"
        and config.evaluate.rounds == 3
        and config.train.max_length == 4096
    )
    assert len(config.evaluate.tasks) == 10 and config.train.deepspeed_config == "paper.json"
    pytest.importorskip(
        "ptr.train", reason="the trainer (and its shipped paper.json) is not on this branch yet"
    )
    ds = deepspeed_config(config.train)
    assert (
        ds["bf16"]["enabled"] is True
        and ds["optimizer"]["type"] == "AdamW"
        and ds["optimizer"]["params"]["lr"] == 7e-5
    )
    assert (
        ds["zero_optimization"]["stage"] == 1
        and ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    )
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (1, 10)
    assert (
        ds["scheduler"]["params"]["warmup_num_steps"] == 800
        and ds["scheduler"]["params"]["warmup_min_lr"] == 1e-5
    )


def test_deepspeed_overrides_merge_over_the_config():
    from ptr.pipeline.config import Train
    from ptr.pipeline.steps.training import deepspeed_config

    base = {"zero_optimization": {"stage": 2, "overlap_comm": True}, "train_micro_batch_size_per_gpu": 4}
    train = Train(
        deepspeed_config=base,
        deepspeed_overrides={"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": 1},
    )
    assert deepspeed_config(train) == {
        "zero_optimization": {"stage": 1, "overlap_comm": True},
        "train_micro_batch_size_per_gpu": 1,
    }
    assert deepspeed_config(Train()) is None  # the trainer's own default


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train": {"loss_weights": [0.5, 0.1, 0.1]}}, "loss_weights must be non-negative and sum to 1"),
        ({"train": {"max_step": 3}}, "train.max_step: unknown key"),
        ({"run": {"runtime": "kubernetes"}}, "run.cluster is missing"),
        ({"evaluate": {"rounds": 0}}, "evaluate.rounds: Input should be greater than or equal to 1"),
        (
            {"run": {"runtime": "kubernetes", "cluster": {"storage": {"pvc": "a", "s3_uri": "s3://b"}}}},
            "exactly one of pvc or s3_uri",
        ),
    ],
)
def test_mistakes_name_the_field(tmp_path, overrides, message):
    with pytest.raises(PtrError, match=message):
        load_config(None, overrides)


def test_a_step_rejects_a_bad_section_by_name():
    with pytest.raises(PtrError, match="config section 'data': num_thoughts"):
        section("data", {"num_thoughts": 0})


def test_bad_config_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: -1\n")
    with pytest.raises(PtrError, match=f"{path}: train.max_steps"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(PtrError, match="a mapping of sections"):
        load_config(path)


def test_overrides_parse_values_as_yaml():
    assert parse_overrides(["train.max_steps=4", "data.weak_models=[a, b]", "run.seed=3"]) == {
        "train": {"max_steps": 4},
        "data": {"weak_models": ["a", "b"]},
        "run": {"seed": 3},
    }
    with pytest.raises(PtrError, match="SECTION.KEY=VALUE"):
        parse_overrides(["max_steps=4"])
    assert PipelineConfig().run.runtime == "local"


def test_train_options_reach_the_trainer_booleans_off_included():
    """``train_options: {save_optimizer: false}`` used to render no flag, and the trainer saved the
    optimizer anyway. The section builds the TrainConfig; the argv that torchrun and every PyTorchJob
    replica get parses back (through ``ptr train``'s own parser) to the same config."""
    from ptr.cluster import training
    from ptr.train.cli import config_from_args

    config = load_config(None, {"train": {"train_options": {"save_optimizer": False, "beta": "quadratic"}}})
    train_config = config.train.train_config("shards", "out", seed=3)
    assert train_config.save_optimizer is False and train_config.beta == "quadratic"
    argv = train_config.to_argv()
    assert "--no-save_optimizer" in argv
    parsed, _ = config_from_args(argv)
    assert parsed == train_config
    plan = training.plan(config.run.kube, train_config, "run-1", with_ds_config=False)
    replica_argv = plan.command[plan.command.index("--") + 1 :]
    assert config_from_args(replica_argv)[0].save_optimizer is False


def test_eval_options_reach_the_evaluation():
    config = load_config(None, {"evaluate": {"eval_options": {"save_infer_texts": False, "top_k": 5}}})
    eval_config = config.evaluate.eval_config(
        "tiny-random", "transformers", tasks=["arith"], output_path="out", save_name="base", seed=0
    )
    assert eval_config.save_infer_texts is False and eval_config.top_k == 5
    assert eval_config.save_infer_results is True  # the report and the promotion read the metrics


def test_thoughts_options_take_filter_settings_flat():
    options = {"allow_truncated": True, "min_consistency": -1.0, "batch_size": 4}
    config = load_config(None, {"data": {"thoughts_options": options}})
    thoughts = config.data.thoughts_config("q.jsonl", "t.jsonl", seed=1)
    assert thoughts.filters.allow_truncated is True and thoughts.filters.min_consistency == -1.0
    assert thoughts.batch_size == 4 and thoughts.seed == 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"train": {"train_options": {"save_optimiser": False}}},
            "train_options: save_optimiser: unknown key",
        ),
        ({"train": {"train_options": {"seed": 3}}}, "train_options.seed: set by this section itself"),
        (
            {"train": {"train_options": {"keep_checkpoints": 0}}},
            "train_options: keep_checkpoints: Input should",
        ),
        (
            {"evaluate": {"eval_options": {"save_infer_text": False}}},
            "eval_options: save_infer_text: unknown key",
        ),
        ({"evaluate": {"eval_options": {"rounds": 4}}}, "eval_options.rounds: set by this section itself"),
        ({"data": {"thoughts_options": {"min_chars": -1}}}, "thoughts_options: filters.min_chars"),
    ],
)
def test_stage_options_are_checked_when_the_config_loads(overrides, message):
    with pytest.raises(PtrError, match=message):
        load_config(None, overrides)


def test_the_evaluate_step_honours_save_infer_texts(tmp_path, monkeypatch):
    """The step itself, on tiny-random: with ``save_infer_texts: false`` no predictions file is written,
    the metrics the report reads are."""
    from ptr.pipeline import steps

    monkeypatch.setenv("PTR_TRACKING", "off")
    evaluate = {
        "tasks": ["arith"],
        "rounds": 1,
        "limit": 2,
        "max_new_tokens": 4,
        "eval_options": {"save_infer_texts": False, "dtype": "float32", "plot": False},
    }
    metrics = steps.evaluate_base({}, evaluate, {"base_model": "tiny-random"}, str(tmp_path), "run-1")
    assert metrics["arith"]["n"] == 2
    written = sorted(p.name for p in (tmp_path / "base").iterdir())
    assert "arith.metrics.json" in written and not any("predictions" in name for name in written)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"evaluate": {"rounds": 2}},
            "evaluate.rounds is 2, but with data.num_thoughts = 2 the model is trained to answer in round 3",
        ),
        (
            {"promote": {"primary": "arith.round2"}},
            r"promote.primary 'arith.round2' scores round 2, .* name round 3 \(arith.round3\)",
        ),
        (
            {"data": {"num_thoughts": 1}, "promote": {"primary": "arith.delta3"}},
            r"name round 2 \(arith.delta2\)",
        ),
        ({"promote": {"primary": "xsum.round3"}}, r"promote: xsum.round3 needs task xsum in evaluate.tasks"),
        ({"promote": {"primary": "mmlu"}}, "expected TASK.roundK or TASK.deltaK"),
    ],
)
def test_the_gate_scores_the_round_the_model_was_trained_to_answer(overrides, message):
    """With num_thoughts = t, a trained record is query → t thoughts → final answer: the answer is
    turn t+1, so evaluation runs at least t+1 rounds and the gate's primary metric names that round."""
    with pytest.raises(PtrError, match=message):
        load_config(None, overrides)
    config = load_config(
        None, {"data": {"num_thoughts": 1}, "evaluate": {"rounds": 3}, "promote": {"primary": "arith.round2"}}
    )
    assert config.trained_round == 2


def test_imported_thoughts_must_hold_num_thoughts(tmp_path):
    """The thoughts step checks what the imported records hold against data.num_thoughts."""
    from ptr.pipeline.steps.data import check_thought_count

    path = tmp_path / "thoughts.jsonl"
    lines = [{"kept": True, "thoughts": [{"text": "a"}]}, {"kept": False, "thoughts": []}]
    lines.append({"kept": True, "thoughts": [{"text": "a"}, {"text": "b"}]})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(
        PtrError,
        match=rf"{path}:1: thoughts: 1 kept record\(s\) hold 1 thought\(s\).*set data.num_thoughts: 1",
    ):
        check_thought_count(path, 2)
    path.write_text(json.dumps(lines[0]) + "\n" + json.dumps(lines[1]) + "\n")
    check_thought_count(path, 1)


def test_thoughts_input_names_the_data_folder_where_the_step_runs(monkeypatch):
    config = load_config(
        None,
        {
            "data": {"thoughts_input": "$PTR_DATA_DIR/queries/x.json", "num_thoughts": 1},
            "evaluate": {"rounds": 2},
            "promote": {"primary": "arith.round2"},
        },
    )
    monkeypatch.setenv("PTR_DATA_DIR", "/data")
    assert config.data.thoughts_config("q", "t", seed=0).thoughts_input == "/data/queries/x.json"
    monkeypatch.delenv("PTR_DATA_DIR")
    with pytest.raises(PtrError, match="still names a variable that is not set here"):
        config.data.thoughts_config("q", "t", seed=0)


def _flat(value, prefix=""):
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def test_reproduction_models_differ_only_in_what_they_compare():
    """Same data, records, order, steps, learning rate, seed and evaluation for every trained model:
    IFT changes the layout (qa) and the weights (answer-only), PTR-CE only the weights."""
    configs = {p.stem: load_config(p) for p in sorted(REPRODUCE.glob("*.yaml"))}
    assert set(configs) == {"ptr", "ift", "ptr-ce"}
    flat = {name: _flat(c.model_dump(mode="json")) for name, c in configs.items()}
    differ = {name: {k for k in flat["ptr"] if flat[name][k] != flat["ptr"][k]} for name in flat}
    assert differ["ift"] == {"run.name", "train.layout", "train.loss_weights", "train.save_name"}
    assert differ["ptr-ce"] == {"run.name", "train.loss_weights", "train.save_name"}
    ptr, ift, ce = configs["ptr"], configs["ift"], configs["ptr-ce"]
    assert ptr.train.loss_weights == (0.8, 0.1, 0.1) and ift.train.loss_weights == ce.train.loss_weights == (
        1.0,
        0,
        0,
    )
    assert ptr.train.merge_data is False  # one record per sequence: one order for every layout
    assert ptr.evaluate.limit >= 200 and ptr.evaluate.rounds == 3 and ptr.evaluate.sample == "random"
    assert set(ptr.evaluate.tasks) == {"mmlu", "arc_challenge", "arc_easy", "commonsenseqa"}
    assert ptr.data.thoughts_input.endswith("PTR_thought_dataset_sampled.json") and ptr.trained_round == 2


def test_promotion_metrics_must_be_evaluated():
    """Item 20: a promote metric whose task or round evaluation never produces fails at load time."""
    with pytest.raises(PtrError, match=r"promote: gsm8k.round3 needs task gsm8k in evaluate.tasks"):
        load_config(overrides={"evaluate": {"tasks": ["arith"]}, "promote": {"primary": "gsm8k.round3"}})
    with pytest.raises(PtrError, match=r"needs round 4, evaluate.rounds is 3"):
        load_config(overrides={"promote": {"primary": "arith.round3", "guards": {"arith.round4": 0.0}}})
    with pytest.raises(PtrError, match=r"mmlu.round1 needs task mmlu"):
        load_config(
            overrides={
                "evaluate": {"tasks": ["arith"]},
                "promote": {"primary": "arith.round3", "guards": {"mmlu.round1": 0.01}},
            }
        )


def test_evaluate_base_fails_first_when_the_promotion_task_has_no_data(tmp_path, monkeypatch):
    """Item 20: evaluate-base runs at the start, beside the data steps; when the primary metric's task
    has no data under the data folder, it fails there — not at promote, hours later."""
    from ptr.pipeline import steps

    monkeypatch.setenv("PTR_TRACKING", "off")
    for name in ("PTR_RUN_ID", "PTR_EXPERIMENT"):  # the step sets them: put them back afterwards
        monkeypatch.setenv(name, "")
    evaluate = {"tasks": ["arith", "gsm8k"], "rounds": 1, "limit": 1, "data_dir": str(tmp_path / "empty")}
    calls = []
    monkeypatch.setattr("ptr.pipeline.steps.serving.run_evaluate", lambda config: calls.append(config))
    with pytest.raises(
        PtrError, match=r"promote uses gsm8k.round1, but task gsm8k has no data here .*Stage the data"
    ):
        steps.evaluate_base(
            {},
            evaluate,
            {"base_model": "tiny-random"},
            str(tmp_path / "out"),
            "run-1",
            promote={"primary": "gsm8k.round1"},
        )
    assert calls == []  # nothing evaluated first
