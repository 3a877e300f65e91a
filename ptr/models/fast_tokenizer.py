"""A saved fast tokenizer, built with one read of its ``tokenizer.json``.

transformers 5's ``AutoTokenizer.from_pretrained`` reads ``tokenizer.json`` three times for a folder
that ``save_pretrained`` wrote: a ``json.load`` for its added tokens (the saved
``tokenizer_config.json`` no longer lists them), ``Tokenizer.from_file``, and a deep copy of that
object in the constructor; with ``config.json`` loaded to pick the class, that is 0.35–0.55 CPU-s at
the start of every stage (SmolLM2's 3.5 MB file), about three times the one read. For the plain case
(the class is ``TokenizersBackend`` itself and nothing in the folder needs conversion) the class is
constructed directly from the file, as ``from_pretrained`` would construct it; anything else (another
class, remote code, legacy files, configuration keys that ``from_pretrained`` rewrites) returns None
and takes the ``AutoTokenizer`` path. ``tests/test_models.py`` checks both paths agree on every model
here (saved files, hash, ids, chat template).
"""

from __future__ import annotations

import json
from pathlib import Path

# tokenizer_config.json keys that from_pretrained passes to the constructor unchanged (besides the
# class name): any other key, and special tokens given as objects rather than strings, go through
# AutoTokenizer, which knows how to convert them.
_PLAIN_KEYS = frozenset(
    {
        "backend",
        "bos_token",
        "eos_token",
        "unk_token",
        "pad_token",
        "model_max_length",
        "is_local",
        "local_files_only",
        "clean_up_tokenization_spaces",
        "padding_side",
        "truncation_side",
        "model_input_names",
        "chat_template",
    }
)
_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
_PLAIN_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})
# Files that from_pretrained would merge in (legacy special tokens, other vocabularies, more templates).
_OTHER_FILES = frozenset(
    {
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.json",
        "additional_chat_templates",
        "tokenizer.model",
        "tekken.json",
        "tiktoken.model",
    }
)


def load_saved_fast(where: str):
    """The tokenizer saved in folder ``where``, or None where ``AutoTokenizer`` has to decide."""
    folder = Path(where)
    if not folder.is_dir():
        return None  # a hub id
    files = {p.name for p in folder.iterdir()}
    if not {"tokenizer.json", "tokenizer_config.json"} <= files or files & _OTHER_FILES:
        return None
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    if config.pop("tokenizer_class", None) not in _PLAIN_CLASSES or not set(config) <= _PLAIN_KEYS:
        return None
    if config.get("backend", "tokenizers") != "tokenizers":
        return None
    if any(not isinstance(config.get(k), str | None) for k in _TOKEN_KEYS):
        return None
    # Heavy, imported on use; a transformers without these names takes the AutoTokenizer path.
    try:
        from huggingface_hub import is_offline_mode
        from transformers import TokenizersBackend
        from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES
    except ImportError:
        return None
    if not _class_is_plain(folder, TOKENIZER_MAPPING_NAMES):
        return None
    if "chat_template.jinja" in files:  # a template file takes priority over the config's entry
        config["chat_template"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    config.update(name_or_path=str(where), is_local=True, local_files_only=is_offline_mode(), vocab_file=None)
    tokenizer = TokenizersBackend(tokenizer_file=str(folder / "tokenizer.json"), **config)
    # from_pretrained hands the file's added tokens to the constructor, which keeps them here.
    tokenizer.init_kwargs["added_tokens_decoder"] = dict(tokenizer.added_tokens_decoder)
    return tokenizer


def _class_is_plain(folder: Path, registered: dict) -> bool:
    """AutoTokenizer swaps in the model type's registered class for some models (Qwen2, Phi-3, …,
    whatever ``tokenizer_class`` says): only a model type without one, or with the plain class, is
    certain to get ``TokenizersBackend``."""
    config_file = folder / "config.json"
    if not config_file.exists():
        return True
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    name = registered.get(model_type) if model_type else None
    return name is None or name in _PLAIN_CLASSES
