"""`ptr generate`: the paper's generic sampler — prompts in, one completion per prompt out.

Flags follow the paper's preparation script (``--model_path --model_name --max_new_tokens
--prompt_paths --temperature --top_p --top_k --use_vllm --data_len``); prompts are its plain
``Question: …\\nAnswer:`` layout (``--chat`` sends the question through the chat template instead).
Several ``--model_path`` values give the multi-model data the paper's script produces with one run
per model: records ``{question, input, output, model}``, all in one JSONL file when ``--output_path``
ends in ``.jsonl``, else one ``<model_name>_len_<data_len>.jsonl`` per model in that directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from ptr.argv import config_argv
from ptr.data import outputs
from ptr.data.cleaning import clean_generated, stops_for
from ptr.data.config import build, default
from ptr.data.model_pool import BackendName, ModelPool, parse_spec
from ptr.errors import PtrError, cli_errors
from ptr.inference import SamplingParams
from ptr.jsonl import write_jsonl
from ptr.records import query_text, read_records


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: list[str] = Field(min_length=1)
    model_name: list[str] | None = None  # one per model_path; default: the reference's last part
    prompt_paths: list[str] = Field(min_length=1)
    output_path: str
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(-1, ge=-1)  # -1 or 0: no top-k cut (the paper's -1)
    seed: int = 0
    data_len: int = Field(10000, ge=1)
    backend: BackendName = "transformers"
    use_vllm: bool = False  # the paper's flag: same as backend="vllm"
    use_cpu: bool = False  # the paper's flag: run the transformers backend on the CPU
    endpoint: str | None = None
    chat: bool = False
    batch_size: int = Field(16, ge=1)
    dtype: str = "auto"

    @model_validator(mode="after")
    def _names_match(self):
        if self.model_name is not None and len(self.model_name) != len(self.model_path):
            raise ValueError("give one --model_name per --model_path")
        return self

    def to_argv(self) -> list[str]:
        """``ptr generate`` flags that give back this config."""
        return config_argv(self)

    def names(self) -> list[str]:
        if self.model_name:
            return list(self.model_name)
        return [Path(p.rstrip("/")).name or p for p in self.model_path]


def paper_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:".strip()


def load_prompts(paths: list[str], data_len: int) -> list[str]:
    """The first ``data_len`` questions over all prompt files, validated before any model loads."""
    questions = []
    for path in paths:
        for where, record in read_records(path):
            field, text = query_text(record, where)
            if not text.strip():
                raise where.error("must be a non-empty string", field)
            questions.append(text.strip())
    return questions[:data_len]


def run_generate(config: GenerateConfig, *, pool: ModelPool | None = None) -> dict:
    """Sample every model on the prompts; returns ``{output files: record count}``."""
    questions = load_prompts(config.prompt_paths, config.data_len)
    if not questions:
        raise PtrError("the prompt files hold no questions")
    backend = "vllm" if config.use_vllm else config.backend
    specs = [parse_spec(p, backend, config.endpoint) for p in config.model_path]
    single_file = config.output_path.endswith(".jsonl")
    if single_file:
        outputs.staging_path(config.output_path)  # fail on a bad output path before loading models
    pool = pool or ModelPool(
        dtype=config.dtype, batch_size=config.batch_size, device="cpu" if config.use_cpu else None
    )
    inputs = [q if config.chat else paper_prompt(q) for q in questions]
    conversations = [[{"role": "user", "content": q}] if config.chat else paper_prompt(q) for q in questions]

    written: dict[str, int] = {}
    all_records: list[dict] = []
    for spec, name in zip(specs, config.names(), strict=True):
        model = pool.get(spec)
        params = SamplingParams(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=max(config.top_k, 0),
            seed=config.seed,
            stop=stops_for(model, plain_prompt=not config.chat),
        )
        with tqdm(total=len(conversations), desc=f"generate {name}", unit="q", file=sys.stderr) as bar:
            outs = model.generate(conversations, params, progress=bar.update)
        records = [
            {"question": q, "input": i, "output": clean_generated(o.text), "model": name}
            for q, i, o in zip(questions, inputs, outs, strict=True)
        ]
        if single_file:
            all_records += records
        else:
            uri = f"{config.output_path.rstrip('/')}/{name}_len_{config.data_len}.jsonl"
            written[uri] = _write(uri, records)
        pool.release(spec)  # one model in memory at a time
    if single_file:
        written[config.output_path] = _write(config.output_path, all_records)
    return written


def _write(uri: str, records: list[dict]) -> int:
    local = outputs.staging_path(uri)
    n = write_jsonl(local, records)
    outputs.publish(local, uri)
    return n


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptr generate", description=__doc__)
    p.add_argument("--model_path", nargs="+", required=True, help="model references (see ptr.models)")
    p.add_argument("--model_name", nargs="+", help="names for the records and files, one per model")
    p.add_argument("--prompt_paths", nargs="+", required=True, help="JSONL files with `question` per line")
    p.add_argument(
        "--output_path", default="output", help="a .jsonl file, or a directory (one file per model)"
    )
    p.add_argument("--max_new_tokens", type=int, default=default(GenerateConfig, "max_new_tokens"))
    p.add_argument("--temperature", type=float, default=default(GenerateConfig, "temperature"))
    p.add_argument("--top_p", type=float, default=default(GenerateConfig, "top_p"))
    p.add_argument("--top_k", type=int, default=default(GenerateConfig, "top_k"), help="-1: no cut")
    p.add_argument("--seed", type=int, default=default(GenerateConfig, "seed"))
    p.add_argument("--data_len", type=int, default=default(GenerateConfig, "data_len"))
    p.add_argument("--backend", choices=("transformers", "vllm", "openai"), default="transformers")
    p.add_argument("--use_vllm", action="store_true", help="same as --backend vllm")
    p.add_argument("--use_cpu", action="store_true", help="run on the CPU even where a GPU is present")
    p.add_argument("--endpoint", help="base URL for --backend openai")
    p.add_argument("--chat", action="store_true", help="send questions through the chat template")
    p.add_argument("--batch_size", type=int, default=default(GenerateConfig, "batch_size"))
    p.add_argument("--dtype", default="auto")
    return p


def config_from_args(args) -> GenerateConfig:
    return build(GenerateConfig, **vars(args))


@cli_errors
def main(argv: list[str] | None = None) -> int:
    written = run_generate(config_from_args(parser().parse_args(argv)))
    for uri, n in written.items():
        print(f"wrote {n} records to {uri}", file=sys.stderr)
    return 0
