"""`ptr train` / `python -m ptr.train`: the paper's trainer flags, plus ptr's objective and resume.

Works as it is under ``torchrun``, the ``deepspeed`` launcher (which adds ``--local_rank``) and a
Kubeflow PyTorchJob's environment; see ``ptr.train.dist``.
"""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from ptr.errors import cli_errors, invalid
from ptr.train import dist
from ptr.train.config import TrainConfig
from ptr.train.recipe import train


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptr train", description=__doc__)
    fields = TrainConfig.model_fields

    def add(flag, **kw):
        name = flag.lstrip("-")
        kw.setdefault("help", fields[name].description)
        p.add_argument(flag, default=argparse.SUPPRESS, **kw)

    add("--model_path", required=True)
    add("--data_path", required=True)
    add("--save_name", help="run name: checkpoints and the export go to <output_path>/<save_name>/")
    add("--output_path", help="folder (or s3:// prefix for the export) for runs; default ./outputs")
    add("--deepspeed_config_path")
    add("--max_epochs", type=int)
    add("--max_steps", type=int)
    add("--save_steps", type=int, help="checkpoint every N optimizer steps")
    add("--save_epochs", type=int, help="checkpoint every N epochs")
    add("--load_ckpt_path")
    add("--save_optimizer", action=argparse.BooleanOptionalAction)
    add("--use_lora", action="store_true")
    add("--lora_config_path", help="JSON with peft LoraConfig fields (default r=8, alpha=16, all-linear)")
    add("--save_lora_adapter", action="store_true")
    add(
        "--loss_weights",
        help="λ1,λ2,λ3 for NLL, consistency, confidence (default: the corpus's, from its meta.json; "
        "0.8,0.1,0.1 when it names none)",
    )
    add("--beta")
    add("--seed", type=int)
    add("--resume")
    add("--gradient_checkpointing", action="store_true")
    add("--attn_implementation")
    add("--keep_checkpoints", type=int)
    # The deepspeed launcher passes --local_rank=N (or --local-rank=N).
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def config_from_args(argv: list[str]) -> tuple[TrainConfig, int | None]:
    args = vars(parser().parse_args(argv))
    local_rank = args.pop("local_rank")
    try:
        return TrainConfig(**args), local_rank
    except ValidationError as err:
        raise invalid(err, flags=True) from None


@cli_errors
def main(argv: list[str] | None = None) -> int:
    import sys

    config, local_rank = config_from_args(list(sys.argv[1:] if argv is None else argv))
    dist.prepare_environment(local_rank)
    train(config)
    return 0
