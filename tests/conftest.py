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
# Steps never answer from a stage cache left by another test or run (tests that test it turn it on).
os.environ.setdefault("PTR_STAGE_CACHE", "off")


# The quick tier (`make test-fast`: -m "not integration and not smollm") leaves out these files, every
# test that uses the S3 store, and tests marked integration: they start servers or long-running
# processes (torchrun, kubectl, the HumanEval sandbox, killed encoders), train, or keep MLflow stores.
# What remains loads no model beyond tiny-random and runs in about a minute.
INTEGRATION = frozenset(
    {
        "test_data_s3.py",
        "test_encode_s3.py",
        "test_eval_e2e.py",
        "test_eval_sandbox.py",
        "test_manifests.py",
        "test_models.py",
        "test_openai_backend.py",
        "test_pipeline_launch.py",
        "test_pipeline_local.py",
        "test_refine_cli.py",
        "test_seaweedfs_manifest.py",
        "test_serve.py",
        "test_serve_vllm.py",
        "test_storage_s3.py",
        "test_tracking_local.py",
        "test_tracking_stack.py",
        "test_train.py",
    }
)


# The longest files, longest first (measured with --durations). `make test` hands whole files to its
# workers (--dist loadfile --no-loadscope-reorder) in collection order: starting the long ones first
# keeps one from being left to run alone at the end.
LONGEST_FIRST = (
    "test_pipeline_local.py",
    "test_train.py",
    "test_tracking_stack.py",
    "test_serve.py",
    "test_gpu_scripts.py",
    "test_eval_e2e.py",
    "test_thoughts.py",
    "test_encode.py",
    "test_storage_s3.py",
    "test_seaweedfs_manifest.py",
    "test_openai_backend.py",
    "test_refine_cli.py",
    "test_pipeline_compile.py",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in INTEGRATION or {"s3_stack", "s3_store"} & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
    if getattr(config.option, "dist", "no") != "no":  # pytest-xdist's scheduler reads this order
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


# Pipeline steps set the run's context in os.environ (in a step's own process that is the point);
# steps a test calls in-process must not hand their run id or store to the tests after it.
RUN_CONTEXT = ("PTR_RUN_ID", "PTR_EXPERIMENT", "PTR_RUN_LABEL", "PTR_MODEL_VERSION", "MLFLOW_TRACKING_URI")


@pytest.fixture(autouse=True)
def _restore_run_context():
    saved = {key: os.environ.get(key) for key in RUN_CONTEXT}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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


@pytest.fixture(scope="session")
def s3_stack(tmp_path_factory):
    """One real S3 store (SeaweedFS on 127.0.0.1) for the whole session, started on first use and
    stopped by pid at the end; ``s3_store`` puts its endpoint and credentials into a test's environment."""
    from ptr.devstack import Stack
    from ptr.procs import free_port

    stack = Stack(tmp_path_factory.mktemp("s3-stack"))
    env = stack.up(services=("weed",), s3_port=free_port())  # not the default port: one store per worker
    try:
        yield stack, env
    finally:
        stack.down()
    assert not stack.running()


@pytest.fixture()
def s3_store(s3_stack, monkeypatch):
    stack, env = s3_stack
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")  # only the store's own credentials
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("PTR_TRACKING", "off")  # storage only: these tests track nothing
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return stack
