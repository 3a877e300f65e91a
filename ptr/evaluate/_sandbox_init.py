"""The first process inside a sandbox (see ptr.evaluate.sandbox); standalone, standard library only.

Usage: python -I -S -B _sandbox_init.py MODE WORKDIR PYTHON PREFIX CPU_S MEMORY_MB FILE_MB NPROC TMPFS_MB

As root inside fresh mount/net/pid namespaces (MODE "root"), or as the namespaces' mapped root
(MODE "userns"), it puts private size-limited tmpfs mounts over the world-writable directories, so
nothing written there outlives the sandbox or reaches the host's; copies the program into a fresh
directory on that tmpfs; when the interpreter lives under a directory ``nobody`` may not enter
(``/root/.pyenv``), hides that directory behind an empty tmpfs and mounts only the interpreter's
installation back into it, read-only; then forks. The child sets the resource limits, drops to ``nobody`` (when
really root), forbids regaining privileges, and runs the program. This process stays behind as the
namespace's init, holding no limits, reaping zombies and passing on the program's exit status as soon as the program ends: the
harness kills it to end the sandbox, and the kernel then kills everything left in the namespace,
whatever the program did to its own process group. MODE "rlimits" (no namespaces available) does the
same minus the mounts and namespaces.
"""

import ctypes
import os
import resource
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND = 1, 2, 4, 32, 4096
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
NOBODY = 65534
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock")

libc = ctypes.CDLL(None, use_errno=True)


def fail(message: str) -> None:
    os.write(2, f"sandbox: {message}\n".encode())
    os._exit(125)


def mount(source: str, target: str, fstype: str | None, flags: int, options: str | None = None) -> None:
    fs = fstype.encode() if fstype else None
    opts = options.encode() if options else None
    if libc.mount(source.encode(), target.encode(), fs, flags, opts) != 0:
        fail(f"cannot mount {source} on {target}: {os.strerror(ctypes.get_errno())}")


def mount_tmpfs(target: str, size_mb: int, mode: str = "1777") -> None:
    if os.path.islink(target) or not os.path.isdir(target):
        return
    mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_mb}m,mode={mode}")


def others_can_enter(path: str) -> bool:
    """Whether every directory on the way to ``path`` lets other users through."""
    parts = os.path.realpath(path).split("/")
    for i in range(2, len(parts)):
        if not os.stat("/".join(parts[:i])).st_mode & 0o001:
            return False
    return True


def expose_interpreter(prefix: str) -> None:
    """Make ``prefix`` (the Python installation) reachable by ``nobody`` at its own path, and nothing
    else of the closed directory it sits in."""
    prefix = os.path.realpath(prefix)
    parts = prefix.split("/")
    closed = next(
        (
            "/".join(parts[:i])
            for i in range(2, len(parts) + 1)
            if not os.stat("/".join(parts[:i])).st_mode & 0o001
        ),
        None,
    )
    if closed is None or closed == prefix:
        return
    staging = "/tmp/.python"
    os.mkdir(staging, 0o755)
    mount(prefix, staging, None, MS_BIND)
    mount_tmpfs(closed, 1, mode="0755")  # hides the closed directory's contents
    os.makedirs(prefix, 0o755, exist_ok=True)
    mount(staging, prefix, None, MS_BIND)
    mount("none", prefix, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    libc.umount2(staging.encode(), MNT_DETACH)
    os.rmdir(staging)


def main() -> None:
    mode, workdir, python, prefix = sys.argv[1:5]
    cpu_s, memory_mb, file_mb, nproc, tmpfs_mb = (int(x) for x in sys.argv[5:10])
    with open(os.path.join(workdir, "prog.py"), "rb") as f:
        program = f.read()
    really_root = os.geteuid() == 0 and mode != "userns"

    if mode in ("root", "userns"):
        for target in WORLD_WRITABLE:
            mount_tmpfs(target, tmpfs_mb)
        workdir = "/tmp/sandbox"
        os.mkdir(workdir, 0o700)
        with open(os.path.join(workdir, "prog.py"), "wb") as f:
            f.write(program)
        if really_root:
            expose_interpreter(prefix)
    if really_root and not others_can_enter(python):
        fail(f"user nobody cannot run {python}; give the sandbox an interpreter it can reach")
    if really_root:
        os.chown(workdir, NOBODY, NOBODY)
        os.chown(os.path.join(workdir, "prog.py"), NOBODY, NOBODY)

    parent = os.getpid()
    child = os.fork()
    if child == 0:
        try:
            os.chdir(workdir)
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
            if really_root:
                os.setgroups([])
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
            # Changing credentials clears the parent-death signal: set it again, then make sure the
            # parent did not die in between.
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            if os.getppid() != parent:
                os._exit(125)
            os.execv(python, [python, "-I", "-S", "-B", "prog.py"])
        except BaseException as err:  # never fall through into the init's code
            fail(f"cannot start the program: {err}")
    status = 0
    while True:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        if pid == child:  # leaving now ends the namespace, and with it anything the program left running
            status = os.waitstatus_to_exitcode(wait_status)
            break
    os._exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    main()
