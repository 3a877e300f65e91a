"""What each PyTorchJob replica runs: stage inputs in, ``torchrun -m ptr.train``, stage the model out.

    python -m ptr.cluster.job_entry [--fetch SRC=DEST]... [--publish SRC=DEST]... -- <ptr train flags>

``--fetch`` copies an ``s3://`` prefix to a local folder on every node before training (with a PVC the
step passes none: the files are already there). ``torchrun`` takes the node count, node rank, processes
per node and rendezvous address from the ``PET_*`` variables the Training Operator sets; where only
``MASTER_ADDR``/``RANK``/``WORLD_SIZE`` are set (an operator without ``nprocPerNode`` support), they are
mapped. ``--publish`` uploads the exported model from node 0 only, after every rank has finished.

Exit codes speak the Training Operator's ``ExitCode`` restart policy (training-operator
pkg/util/train/train_util.go): a failed staging (S3 unreachable) exits 138, which the operator restarts;
a replica killed by a signal exits 128 + the signal (137, 143: restarted); a training error keeps
torchrun's own code (1: the job fails at once). A restarted replica resumes from the newest complete
checkpoint (the train flags carry ``--resume auto``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from ptr import storage

# torchrun option -> (PET_ variable, fallback variable the operator always sets)
_RENDEZVOUS = {
    "--nnodes": ("PET_NNODES", "WORLD_SIZE"),
    "--node_rank": ("PET_NODE_RANK", "RANK"),
    "--nproc_per_node": ("PET_NPROC_PER_NODE", None),
    "--master_addr": ("PET_MASTER_ADDR", "MASTER_ADDR"),
    "--master_port": ("PET_MASTER_PORT", "MASTER_PORT"),
}


RETRYABLE_EXIT = 138  # 128 + SIGUSR1: the operator's "user-defined retryable" code


def exit_code(returncode: int) -> int:
    """A child's return code as a shell would report it: killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        src, sep, dest = value.partition("=")
        if not sep or not src or not dest:
            raise SystemExit(f"{flag} expects SRC=DEST, got {value!r}")
        pairs.append((src, dest))
    return pairs


def torchrun_command(train_args: list[str], env: dict[str, str]) -> list[str]:
    """``torchrun`` with the rendezvous read from the operator's environment."""
    command = [sys.executable, "-m", "torch.distributed.run"]
    for option, (pet, fallback) in _RENDEZVOUS.items():
        value = env.get(pet) or (env.get(fallback) if fallback else None)
        if value:
            command += [option, value]
    return [*command, "-m", "ptr.train", *train_args]


def node_rank(env: dict[str, str]) -> int:
    return int(env.get("PET_NODE_RANK") or env.get("RANK") or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m ptr.cluster.job_entry")
    parser.add_argument("--fetch", action="append", default=[], metavar="SRC=DEST")
    parser.add_argument("--publish", action="append", default=[], metavar="SRC=DEST")
    args = parser.parse_args(own)
    env = dict(os.environ)
    fetches, publishes = _pairs(args.fetch, "--fetch"), _pairs(args.publish, "--publish")
    if not _stage("in", fetches, storage.fetch):
        return RETRYABLE_EXIT
    command = torchrun_command(train_args, env)
    print("running:", " ".join(command), flush=True)
    code = exit_code(_run_forwarding_sigterm(command))
    if code != 0:
        return code
    if node_rank(env) == 0 and not _stage("out", publishes, storage.publish):
        return RETRYABLE_EXIT
    return 0


def _stage(direction: str, pairs: list[tuple[str, str]], copy) -> bool:
    """Copy each pair; a failure is reported and makes the replica exit retryably."""
    for src, dest in pairs:
        print(f"staging {direction} {src} -> {dest}", flush=True)
        try:
            copy(src, dest)
        except Exception as err:  # noqa: BLE001 — any storage error: let the operator retry the replica
            print(f"staging {direction} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            return False
    return True


def _run_forwarding_sigterm(command: list[str]) -> int:
    """Run torchrun; a SIGTERM to this process (pod deletion) is passed on, so ranks stop cleanly."""
    child = subprocess.Popen(command)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
