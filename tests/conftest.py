"""Shared fixtures. Models come from ptr.models' offline references; the cache is the user's
($PTR_CACHE or ~/.cache/ptr), so SmolLM2 is converted once per machine, not once per test run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# OpenMP threads that spin while waiting make every torch op hundreds of times slower when the cores
# are shared with other processes (measured: a tiny-model step 250-450 ms spinning, 5-8 ms passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_ptr(*args, check: bool = False, env: dict | None = None, cwd=None, timeout: float = 600):
    """Run ``python -m ptr <args>`` from the repository; returns the CompletedProcess."""
    proc = subprocess.run(
        [sys.executable, "-m", "ptr", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ptr {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def tiny_path() -> str:
    from ptr.models import resolve

    return resolve("tiny-random")


@pytest.fixture(scope="session")
def tiny_backend():
    from ptr.inference.hf import TransformersBackend

    return TransformersBackend("tiny-random", dtype="float32", batch_size=4)


@pytest.fixture(scope="session")
def smollm_path() -> str:
    from ptr.models import resolve

    return resolve("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark data folder (PTR_DATA_DIR); tests that need it skip with a reason when unset."""
    value = os.environ.get("PTR_DATA_DIR")
    if not value or not Path(value).is_dir():
        pytest.skip("PTR_DATA_DIR is not set to a folder laid out like ../shared/data")
    return Path(value)
