"""A trained model's record of how it was trained (``ptr_train.json`` beside its weights).

The trainer writes it when it exports a model; evaluation, ``ptr refine`` and ``ptr serve`` read it so
that the model is asked what it was trained to answer (its refine prompt, its chat layout).
"""

from __future__ import annotations

import json
from pathlib import Path

from ptr.errors import InputError

PROVENANCE_FILE = "ptr_train.json"


def read_provenance(model_dir) -> dict:
    """The record in ``model_dir``, or {} where there is none (a model ptr did not train, a hub id)."""
    if not model_dir:
        return {}
    path = Path(model_dir) / PROVENANCE_FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(path, err.lineno, f"invalid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise InputError(path, None, "expected a JSON object")
    return record


def trained_on_chat(record: dict) -> bool:
    """Whether a model with this record was trained on chat-template conversations (PTR or QA data)
    rather than plain text."""
    layout = record.get("layout")
    if layout is None:
        layout = ((record.get("data_meta") or {}).get("layout") or {}).get("kind")
    if isinstance(layout, dict):
        layout = layout.get("kind")
    return bool(record) and layout != "raw_text"
