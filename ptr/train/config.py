"""``TrainConfig``: everything one training run needs, validated before anything heavy is imported."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from ptr.argv import config_argv
from ptr.errors import PtrError
from ptr.objective import DEFAULT_LOSS_WEIGHTS

BETA_SCHEDULES = {"uniform": 0.0, "linear": 1.0, "quadratic": 2.0}


class TrainConfig(BaseModel):
    """One run. Field names are the paper's flags (``--model_path`` …) plus ptr's objective and resume."""

    model_config = ConfigDict(extra="forbid")

    model_path: str = Field(description="model reference: a HF directory, tiny-random, s3://, models:/ …")
    data_path: str = Field(
        description="encoded corpus folder (or a folder of them), as ShardDataset reads it"
    )
    save_name: str = "ptr"
    output_path: str = "outputs"
    deepspeed_config_path: str | None = Field(None, description="JSON file, or 'default' / 'paper' (shipped)")
    max_epochs: PositiveInt = 1
    max_steps: PositiveInt | None = Field(None, description="optimizer steps; overrides max_epochs")
    save_steps: PositiveInt | None = None
    save_epochs: PositiveInt | None = None
    load_ckpt_path: str | None = Field(None, description="start from this checkpoint's weights")
    save_optimizer: bool = Field(True, description="checkpoints hold optimizer state (exact resume)")
    use_lora: bool = False
    lora_config_path: str | None = None
    save_lora_adapter: bool = Field(False, description="export the adapter alone instead of merging it")
    loss_weights: tuple[float, float, float] | None = Field(
        None, description="λ1,λ2,λ3; default: the corpus's (its meta.json), else 0.8,0.1,0.1"
    )
    beta: str = Field("linear", description="β_t ∝ t**p: uniform (p=0), linear (1), quadratic (2) or p")
    seed: int = 42
    resume: str | None = Field(None, description="'auto' (newest complete checkpoint) or a checkpoint dir")
    gradient_checkpointing: bool = False
    attn_implementation: Literal["auto", "ptr_varlen_sdpa", "sdpa", "eager", "flash_attention_2"] = "auto"
    keep_checkpoints: PositiveInt | None = Field(None, description="keep only the newest N checkpoints")

    @field_validator("loss_weights", mode="before")
    @classmethod
    def _parse_weights(cls, value):
        if isinstance(value, str):
            parts = [p for p in value.split(",") if p.strip()]
            if len(parts) != 3:
                raise ValueError("three comma-separated numbers λ1,λ2,λ3")
            value = tuple(float(p) for p in parts)
        return value

    @field_validator("loss_weights")
    @classmethod
    def _check_weights(cls, value):
        return None if value is None else check_weights(value)

    @field_validator("beta")
    @classmethod
    def _check_beta(cls, value):
        beta_power(value)
        return value

    def to_argv(self) -> list[str]:
        """``ptr train`` flags that give back this config (for torchrun and PyTorchJob replicas)."""
        return config_argv(self, joined=("loss_weights",))

    @property
    def run_dir(self) -> Path:
        return Path(self.output_path) / self.save_name

    @property
    def beta_power(self) -> float:
        return beta_power(self.beta)


def check_weights(value) -> tuple[float, float, float]:
    value = tuple(float(w) for w in value)
    if len(value) != 3 or any(w < 0 for w in value) or abs(sum(value) - 1.0) > 1e-6:
        raise ValueError(f"λ1,λ2,λ3 must be non-negative and sum to 1 (got {','.join(map(str, value))})")
    return value


def resolve_loss_weights(given, metas: list[dict], where: str) -> tuple[tuple[float, float, float], str]:
    """The weights a run trains with, and where they come from: ``--loss_weights`` when given, else the
    corpus's own (meta.json: ``qa`` and ``pretrain`` corpora carry answer-only weights), else the
    paper's. Corpora of one folder that disagree need an explicit choice."""
    found = {check_weights(m["loss_weights"]) for m in metas if m.get("loss_weights") is not None}
    if given is not None:
        differs = found and found != {tuple(given)}
        return tuple(given), "--loss_weights" + (f" (over the corpus's {_fmt(*found)})" if differs else "")
    if len(found) > 1:
        raise PtrError(
            f"{where}: the corpora hold different loss weights ({', '.join(_fmt(w) for w in sorted(found))}); "
            "choose with --loss_weights"
        )
    if found:
        return found.pop(), f"the corpus ({where}/meta.json)"
    return DEFAULT_LOSS_WEIGHTS, "the default (the corpus names none)"


def _fmt(*weights) -> str:
    return " / ".join(",".join(f"{x:g}" for x in w) for w in weights)


def beta_power(beta: str) -> float:
    if beta in BETA_SCHEDULES:
        return BETA_SCHEDULES[beta]
    try:
        power = float(beta)
    except ValueError:
        raise ValueError(f"{beta!r}: one of {', '.join(BETA_SCHEDULES)} or a power p ≥ 0") from None
    if power < 0:
        raise ValueError(f"{beta!r}: β_t must grow with t (p ≥ 0)")
    return power
