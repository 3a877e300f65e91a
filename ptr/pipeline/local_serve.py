"""The model server of a local run: ``ptr serve`` on 127.0.0.1, started by deploy, stopped by evaluate.

The server runs in its own session with its output in a log file (never the step's stdout, which the
local runner reads to the end), and a record of ``{pid, url, log}`` lets a later step stop it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ptr.errors import PtrError
from ptr.pipeline.launch import REPO
from ptr.procs import free_port, pid_alive


def start(
    model_path: str, model_name: str, workdir: Path, *, max_batch_size: int = 16, timeout: float = 300.0
) -> dict:
    """Start the server (gathering up to ``max_batch_size`` generations into one call) and wait until
    KServe reports the model ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "serve.log"
    command = [
        sys.executable,
        "-m",
        "ptr",
        "serve",
        "--model_path",
        str(model_path),
        "--model_name",
        model_name,
    ]
    command += ["--host", "127.0.0.1", "--port", str(port), "--max_batch_size", str(max_batch_size)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    record = {"pid": proc.pid, "url": url, "model_name": model_name, "log": str(log)}
    deadline = time.monotonic() + timeout
    ready_url = f"{url}/v1/models/{model_name}"
    while True:
        if proc.poll() is not None:
            raise PtrError(f"ptr serve exited with status {proc.returncode}; see {log}:\n{_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return record
        if time.monotonic() > deadline:
            stop(record)
            raise PtrError(f"ptr serve not ready within {timeout:.0f}s; see {log}:\n{_tail(log)}")
        time.sleep(0.5)


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def stop(record: dict, timeout: float = 15.0) -> bool:
    """Stop the server a record names (its whole process group); False if it was already gone."""
    pid = int(record["pid"])
    if not pid_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    return True


def read_record(path: Path) -> dict:
    return json.loads(Path(path).read_text())
