"""A stand-in training module for launcher tests: joins the gloo group torchrun sets up, all-reduces its
rank, writes what it saw. ``--fail_rank R`` makes rank R exit with status 3."""

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--fail_rank", type=int, default=-1)
args = parser.parse_args()
dist.init_process_group("gloo")
rank = dist.get_rank()
total = torch.tensor([float(rank)])
dist.all_reduce(total)
if rank == args.fail_rank:
    raise SystemExit(3)
seen = {"rank": rank, "world": dist.get_world_size(), "sum": total.item(), "backend": dist.get_backend()}
seen |= {k: os.environ.get(k) for k in ("DS_ACCELERATOR", "OMP_NUM_THREADS", "LOCAL_RANK")}
Path(args.out, f"rank{rank}.json").write_text(json.dumps(seen))
dist.destroy_process_group()
