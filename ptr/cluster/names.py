"""Kubernetes names and label values derived from free-form ids (run ids, model names)."""

from __future__ import annotations

import hashlib
import re

_LABEL_VALUE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def label_value(value: str) -> str:
    """A valid label value (≤ 63 characters, alphanumeric ends); long or odd values keep a hash suffix
    so that distinct ids stay distinct."""
    clean = re.sub(r"[^-A-Za-z0-9_.]", "-", str(value)).strip("-_.")
    if clean == value and len(clean) <= 63 and _LABEL_VALUE.match(clean):
        return clean
    digest = hashlib.sha256(str(value).encode()).hexdigest()[:8]
    return f"{clean[:54].rstrip('-_.')}-{digest}".lstrip("-") or digest


def resource_name(prefix: str, run_id: str, max_len: int = 45) -> str:
    """A DNS-1035 name ``<prefix>-<run id part>``: lowercase, starts with a letter, short enough that
    the operators' derived names (``<name>-worker-12``, ``<name>-predictor-...``) stay within limits."""
    tail = re.sub(r"[^a-z0-9]", "", str(run_id).lower())[:12] or "run"
    name = re.sub(r"[^a-z0-9-]", "-", f"{prefix}-{tail}".lower()).strip("-")
    if not name[0].isalpha():
        name = f"r-{name}"
    return name[:max_len].rstrip("-")
