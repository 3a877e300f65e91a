"""Run untrusted Python (model-written code) so that it can neither harm nor hang the harness.

Each program runs in its own process and temporary directory, under limits on CPU time, address space,
file size, process count and open files, and a wall-clock timeout. Isolation, strongest available first:

* ``root`` (the harness is root, as in CI): fresh mount, network, PID, IPC and UTS namespaces
  (``unshare`` from util-linux); private tmpfs over /tmp, /var/tmp and /dev/shm; the program runs as
  ``nobody`` with no way back to privileges. No network (the namespace has only a downed loopback);
  the process-count limit binds (it does not for root); every process it starts dies with the sandbox.
* ``userns`` (not root, user namespaces allowed): the same namespaces inside a user namespace; the
  program keeps the caller's uid, so it can write where the caller can, outside the temporary dirs.
* ``rlimits`` (neither): limits and a dropped uid only, no network isolation; a warning says so.

``PTR_SANDBOX=rlimits`` forces the weakest mode (to test it). ``userns`` is never used by root: its
mapped root would be the real one.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

INIT = Path(__file__).with_name("_sandbox_init.py")
MODES = ("root", "userns", "rlimits")
_NAMESPACES = ["--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc"]
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "PYTHONHASHSEED": "0"}


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 1024
    file_mb: int = 16
    nproc: int = 64
    tmpfs_mb: int = 64


@dataclass
class Result:
    status: str  # "passed" (exit 0), "failed", or "timeout"
    returncode: int | None
    output: str  # the last few KB of stdout and stderr
    isolation: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.lru_cache(maxsize=1)
def isolation_mode() -> str:
    forced = os.environ.get("PTR_SANDBOX", "").strip().lower()
    if forced and forced != "rlimits":
        raise ValueError(f"PTR_SANDBOX may only be 'rlimits' (the weakest mode), not {forced!r}")
    unshare = shutil.which("unshare")
    mode = "rlimits"
    if unshare and forced != "rlimits":
        if os.geteuid() == 0:
            if _works([unshare, *_NAMESPACES, "true"]):
                mode = "root"
        elif _works([unshare, "--user", "--map-root-user", *_NAMESPACES, "true"]):
            mode = "userns"
    if mode == "rlimits":
        warnings.warn(
            "code sandbox: no namespaces available (util-linux unshare missing or not permitted); "
            "running with resource limits and a dropped uid only, without network isolation",
            RuntimeWarning,
            stacklevel=2,
        )
    return mode


def _reachable_by_others(path: str) -> bool:
    parts = os.path.realpath(path).split("/")
    return all(os.stat("/".join(parts[:i]) or "/").st_mode & 0o001 for i in range(2, len(parts) + 1))


def _interpreter(mode: str) -> tuple[str, str]:
    """``(python, installation prefix)`` for the sandboxed program (standard library only)."""
    python = os.path.realpath(sys.executable)
    if mode == "rlimits" and os.geteuid() == 0 and not _reachable_by_others(python):
        # without a mount namespace the interpreter cannot be exposed to nobody: use the system's
        system = shutil.which("python3", path="/usr/bin:/bin")
        if system and _reachable_by_others(system):
            return os.path.realpath(system), "/usr"
    return python, sys.base_prefix


def _command(mode: str, workdir: str, limits: Limits) -> list[str]:
    python, prefix = _interpreter(mode)
    init = [
        python,
        "-I",
        "-S",
        "-B",
        str(INIT),
        mode,
        workdir,
        python,
        prefix,
        *(
            str(int(x))
            for x in (limits.cpu_s, limits.memory_mb, limits.file_mb, limits.nproc, limits.tmpfs_mb)
        ),
    ]
    if mode == "root":
        return [shutil.which("unshare"), *_NAMESPACES, *init]
    if mode == "userns":
        return [shutil.which("unshare"), "--user", "--map-root-user", *_NAMESPACES, *init]
    return init


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, size: int = 4096) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - size))
        return f.read().decode("utf-8", errors="replace")


def run_python(code: str, limits: Limits = Limits()) -> Result:
    """Run ``code`` as a Python program in a sandbox; return how it ended. Never raises for anything
    the program does, and returns within about ``limits.wall_s`` seconds."""
    mode = isolation_mode()
    with tempfile.TemporaryDirectory(prefix="ptr-sandbox-") as tmp:
        os.chmod(tmp, 0o755)
        prog = Path(tmp, "prog.py")
        prog.write_text(code, encoding="utf-8")
        prog.chmod(0o644)
        out_path = Path(tmp, "output")
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                _command(mode, tmp, limits),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp,
                env=_ENV,
                start_new_session=True,  # its own process group, killed as a whole
            )
            try:
                returncode = proc.wait(timeout=limits.wall_s)
                status = "passed" if returncode == 0 else "failed"
                # killed at the CPU limit (SIGXCPU, then SIGKILL at the hard limit): out of time
                if returncode in (
                    -signal.SIGXCPU,
                    -signal.SIGKILL,
                    128 + signal.SIGXCPU,
                    128 + signal.SIGKILL,
                ):
                    status = "timeout"
            except subprocess.TimeoutExpired:
                returncode, status = None, "timeout"
            finally:
                _kill_group(proc.pid)
                proc.wait()
        return Result(status, returncode, _tail(out_path), mode)
