"""Where queries come from: any input :mod:`ptr.records` reads, or the project's own built-in set.
Each query keeps its source (``file:line``, ``file[index]``) for the queries file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ptr.records import query_text, read_records

BUILTIN = "builtin"
BUILTIN_PATH = Path(__file__).with_name("builtin_queries.jsonl")


@dataclass(frozen=True)
class RawQuery:
    text: str
    source: str  # "name:line" ("name[index]" for JSON arrays and datasets)


def read_queries(spec: str, *, field: str | None = None, split: str = "train") -> list[RawQuery]:
    """All queries of one input, validated before anything is written.

    ``spec`` is ``builtin`` or anything :func:`ptr.records.read_records` reads. A record without a
    usable query field raises :class:`~ptr.errors.InputError` naming the file, line and field; empty
    texts are returned as they are (the queries stage counts and drops them).
    """
    builtin = spec == BUILTIN
    out = []
    for where, record in read_records(BUILTIN_PATH if builtin else spec, split=split):
        if builtin:
            label = BUILTIN
        elif where.path.startswith("hf:"):  # the dataset's last name part, as the user wrote it
            label = os.path.basename(str(spec).removeprefix("hf:").rstrip("/"))
        else:
            label = os.path.basename(where.path)  # the file, also inside a folder
        out.append(RawQuery(query_text(record, where, field)[1], f"{label}{where.position}"))
    return out
