"""What each PyTorchJob replica runs: stage inputs in, ``torchrun -m ptr.train``, stage the model out.

    python -m ptr.cluster.job_entry [--fetch SRC=DEST]... [--publish SRC=DEST]... -- <ptr train flags>

``--fetch`` copies an ``s3://`` prefix to a local folder on every node before training (with a PVC the
step passes none: the files are already there). ``torchrun`` takes the node count, node rank, processes
per node and rendezvous address from the ``PET_*`` variables the Training Operator sets; where only
``MASTER_ADDR``/``RANK``/``WORLD_SIZE`` are set (an operator without ``nprocPerNode`` support), they are
mapped. ``--publish`` uploads the exported model from node 0 only, after every rank has finished.
"""

from __future__ import annotations

import argparse
import os
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
    for src, dest in _pairs(args.fetch, "--fetch"):
        print(f"staging in {src} -> {dest}", flush=True)
        storage.fetch(src, dest)
    command = torchrun_command(train_args, env)
    print("running:", " ".join(command), flush=True)
    code = subprocess.call(command)
    if code != 0:
        return code
    if node_rank(env) == 0:
        for src, dest in _pairs(args.publish, "--publish"):
            print(f"staging out {src} -> {dest}", flush=True)
            storage.publish(src, dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
