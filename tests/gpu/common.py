"""What tests/gpu/check.sh and tests/gpu/bench.sh share: the rules they run by.

* Offline, from the source tree, on the host's own Python (3.11 or 3.12) and PyTorch: nothing is
  installed, nothing downloaded (:data:`OFFLINE`).
* A part whose dependency is missing is ``skipped`` with the reason (:func:`missing`), never failed.
* Models are randomly initialised from Qwen2-shaped configs (:data:`SHAPES`) unless a local model path
  is given; where a part needs a tokenizer, the folder gets tiny-random's (a byte-level BPE trained
  locally with a ChatML template, ``ptr.models.tiny``), whose ids all lie inside Qwen2's vocabulary.
* Each part writes ``<work>/<part>.json``; the report is one JSON object on the last line.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# Qwen2-0.5B and Qwen2-1.5B as published (config.json of Qwen/Qwen2-0.5B, Qwen/Qwen2-1.5B), and a
# CPU-sized one for the dry run that `make test` exercises.
SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "dry": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=2048, tie_word_embeddings=True),
}  # fmt: skip


def missing(*modules: str, load: bool = True) -> str | None:
    """None when every module imports (``load=False``: is installed), else the reason the first does not."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed"
        if not load:
            continue
        try:
            importlib.import_module(name)
        except Exception as err:  # installed but broken (a CUDA build that does not match, …)
            return f"{name} does not import: {type(err).__name__}: {err}"[:300]
    return None


def version(module: str) -> str:
    """The installed version of ``module``, or why there is none (without importing it)."""
    import importlib.metadata

    reason = missing(module, load=False)
    if reason:
        return reason
    for dist in importlib.metadata.packages_distributions().get(module, [module]):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "installed (version unknown)"


def python_ok() -> str | None:
    if sys.version_info[:2] not in ((3, 11), (3, 12)):
        return f"Python {sys.version.split()[0]}: these scripts are checked on 3.11 and 3.12"
    return None


def qwen2_config(shape: str, max_positions: int = 32768):
    """A transformers Qwen2Config of the named shape (random weights come from the model's init)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        **SHAPES[shape],
        max_position_embeddings=max_positions,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        hidden_act="silu",
    )


def model_dir(shape: str, out: Path, given: str | None = None) -> Path:
    """``given`` (a local model folder), else ``out`` holding a randomly initialised Qwen2-shaped model
    in bf16 with tiny-random's tokenizer (built once per work folder)."""
    if given:
        path = Path(given).expanduser()
        if not (path / "config.json").is_file():
            raise SystemExit(
                f"{given}: no config.json (a local model folder is expected; nothing is downloaded)"
            )
        return path
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from ptr.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("tiny-random"))
    config = qwen2_config(shape)
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def write_part(work: Path, part: str, result: dict) -> None:
    (work / f"{part}.json").write_text(json.dumps(result))
    print(json.dumps(result), flush=True)


def read_parts(work: Path, parts) -> dict:
    out = {}
    for name in parts:
        path = work / f"{name}.json"
        out[name] = json.loads(path.read_text()) if path.exists() else {"ok": False, "error": "did not run"}
    return out


def overall_ok(parts: dict) -> bool:
    """Every part that ran passed (a skipped part says why and does not fail the run)."""
    return all(p.get("ok") or "skipped" in p for p in parts.values())


def child_env() -> dict:
    return {**os.environ, **OFFLINE, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
