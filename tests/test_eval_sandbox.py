"""The HumanEval sandbox against hostile programs: none may write outside its directory, reach the
network, fork without bound, run without end, exhaust memory, or leave processes behind; the harness
always gets a result back, in bounded time. Runs in the strongest mode the machine allows (root
namespaces in CI), and the resource limits are checked in the weakest mode too."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from ptr.evaluate import sandbox
from ptr.evaluate.sandbox import Limits, run_python

FAST = Limits(wall_s=4, cpu_s=2, memory_mb=512, file_mb=4, nproc=32)


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def test_ordinary_program_passes_and_fails():
    ok = run_python("import os\nopen('note.txt', 'w').write('x')\nprint(open('note.txt').read() * 3)", FAST)
    assert ok.status == "passed" and ok.output.strip() == "xxx"
    bad = run_python("assert 1 + 1 == 3", FAST)
    assert bad.status == "failed" and "AssertionError" in bad.output


def test_writing_outside_its_directory_leaves_no_trace(tmp_path):
    tmp_path.chmod(0o777)  # even a world-writable folder of the harness stays out of reach
    targets = [
        tmp_path / "escaped.txt",
        Path(f"/tmp/ptr-escape-{uuid.uuid4().hex}"),
        Path.cwd() / "escaped.txt",
    ]
    code = "import sys\nfor path in sys.argv[1:] or %r:\n" % [str(t) for t in targets]
    code += "    try:\n        open(path, 'w').write('pwned')\n        print('wrote', path)\n"
    code += "    except OSError as err:\n        print('refused', path, type(err).__name__)\n"
    result = run_python(code, FAST)
    assert result.status == "passed", result.output
    for target in targets:
        assert not target.exists(), f"{target} was written from the sandbox ({result.isolation} mode)"


def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "s.sendall(b'secret')\nprint('connected')\n"
    )
    result = run_python(code, FAST)
    server.setblocking(False)  # a connection that got through would be waiting in the backlog now
    try:
        conn, _ = server.accept()
        conn.close()
        reached = True
    except BlockingIOError:
        reached = False
    finally:
        server.close()
    if result.isolation == "rlimits":
        pytest.skip("no network namespace available on this machine (rlimits mode)")
    assert result.status == "failed" and "connected" not in result.output
    assert not reached


def test_infinite_loop_is_stopped():
    start = time.monotonic()
    result = run_python("while True:\n    pass", FAST)
    assert result.status == "timeout"
    assert time.monotonic() - start < FAST.wall_s + 5


def test_sleeping_forever_is_stopped_and_leaves_no_process():
    marker = f"ptr-sandbox-sleeper-{uuid.uuid4().hex}"
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()  # escape the process group\n"
        f"    os.execv('/bin/sleep', ['/bin/sleep', '1000', '{marker}'])\n"
        "time.sleep(1000)\n"
    )
    start = time.monotonic()
    result = run_python(code, Limits(wall_s=2, cpu_s=2))
    assert result.status == "timeout"
    assert time.monotonic() - start < 2 + 5
    time.sleep(0.5)
    left = _processes_with(marker)
    if result.isolation == "rlimits" and left:
        pytest.skip("without a PID namespace a detached child can outlive the sandbox (rlimits mode)")
    assert left == []


def _sandboxed_programs() -> list[int]:
    """Processes running a sandboxed program (its cwd is the sandbox's directory)."""
    found = []
    for pid in _processes_with("prog.py"):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == "/tmp/sandbox":
                found.append(pid)
        except OSError:
            pass
    return found


def test_fork_bomb_is_contained():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    start = time.monotonic()
    result = run_python(code, Limits(wall_s=3, cpu_s=2, nproc=32))
    assert result.status == "timeout"
    assert time.monotonic() - start < 3 + 10
    if result.isolation != "rlimits":
        time.sleep(0.5)
        assert _sandboxed_programs() == []


def test_huge_allocation_fails_inside_the_sandbox():
    result = run_python("x = bytearray(10 * 1024 ** 3)\nprint('allocated')", FAST)
    assert result.status == "failed"
    assert "MemoryError" in result.output and "allocated" not in result.output


def test_huge_file_is_cut_off():
    result = run_python("open('big', 'wb').write(b'x' * (64 << 20))", FAST)
    assert result.status == "failed"


def test_harness_environment_and_processes_are_out_of_reach(monkeypatch):
    monkeypatch.setenv("PTR_TEST_SECRET", "hunter2")
    code = (
        "import os, signal\n"
        "print(sorted(os.environ))\n"
        "for pid in (os.getppid(), 1):\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
        "print('done')\n"
    )
    result = run_python(code, FAST)
    assert "PTR_TEST_SECRET" not in result.output and "hunter2" not in result.output
    assert result.status in ("passed", "failed")  # it may kill its own init; the harness lives on


def test_limits_hold_in_the_weakest_mode(monkeypatch):
    monkeypatch.setenv("PTR_SANDBOX", "rlimits")
    sandbox.isolation_mode.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="without network isolation"):
            assert sandbox.isolation_mode() == "rlimits"
        assert run_python("print(sum(range(10)))", FAST).output.strip() == "45"
        assert run_python("while True:\n    pass", FAST).status == "timeout"
        mem = run_python("x = bytearray(10 * 1024 ** 3)", FAST)
        assert mem.status == "failed" and "MemoryError" in mem.output
    finally:
        monkeypatch.delenv("PTR_SANDBOX")
        sandbox.isolation_mode.cache_clear()
