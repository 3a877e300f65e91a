import json

import pytest

from ptr.data.generate import GenerateConfig, run_generate
from ptr.data.model_pool import ModelPool, parse_spec
from tests.conftest import run_ptr
from tests.support.torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)


@pytest.fixture()
def prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i} + {i}?"}) + "\n" for i in range(4)))
    return path


def test_several_models_in_one_file_in_the_papers_layout(tmp_path, prompts, tiny_backend, tiny_path):
    pool = ModelPool(preloaded={parse_spec("tiny-random"): tiny_backend})
    out = tmp_path / "g.jsonl"
    cfg = GenerateConfig(
        model_path=["tiny-random", tiny_path],
        model_name=["weak-a", "weak-b"],
        prompt_paths=[str(prompts)],
        output_path=str(out),
        max_new_tokens=5,
        data_len=3,
    )
    assert run_generate(cfg, pool=pool) == {str(out): 6}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["model"] for r in rows] == ["weak-a"] * 3 + ["weak-b"] * 3
    assert rows[1]["question"] == "What is 1 + 1?"
    assert rows[1]["input"] == "Question: What is 1 + 1?\nAnswer:"
    assert all(set(r) == {"question", "input", "output", "model"} for r in rows)
    assert all(isinstance(r["output"], str) and "<|im_" not in r["output"] for r in rows)


def test_cli_directory_output_one_file_per_model(tmp_path, prompts):
    from ptr.data.generate import main

    out = tmp_path / "runs"
    argv = [
        "--model_path",
        "tiny-random",
        "--model_name",
        "tiny",
        "--prompt_paths",
        str(prompts),
        "--output_path",
        str(out),
        "--max_new_tokens",
        "4",
        "--data_len",
        "2",
        "--top_k",
        "-1",
        "--chat",
        "--dtype",
        "float32",
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "tiny_len_2.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["input"] == "What is 0 + 0?" and rows[0]["model"] == "tiny"


def test_cli_bad_prompts_exit_2_and_nothing_written(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('{"question": "ok"}\n{"question": ""}\n')
    out = tmp_path / "g.jsonl"
    proc = run_ptr("generate", "--model_path", "tiny-random", "--prompt_paths", src, "--output_path", out)
    assert proc.returncode == 2
    assert f"{src}:2: question: must be a non-empty string" in proc.stderr
    assert not out.exists()
    proc = run_ptr(
        "generate", "--model_path", "a", "b", "--model_name", "x", "--prompt_paths", src, "--output_path", out
    )
    assert proc.returncode == 2 and "one --model_name per --model_path" in proc.stderr


def test_model_specs_pick_backends():
    assert parse_spec("smollm2-135m-instruct").key == ("transformers", "smollm2-135m-instruct", None)
    assert parse_spec("vllm:Qwen/Qwen2-7B").key == ("vllm", "Qwen/Qwen2-7B", None)
    assert parse_spec("openai:m@http://h:8000/v1").key == ("openai", "m", "http://h:8000/v1")
    assert parse_spec("openai:@http://h/v1").key == ("openai", None, "http://h/v1")
    assert parse_spec("m", "openai", "http://e/v1").key == ("openai", "m", "http://e/v1")
    assert parse_spec("models:/ptr@champion").key == ("transformers", "models:/ptr@champion", None)
    with pytest.raises(Exception, match="needs an endpoint"):
        parse_spec("openai:m")
