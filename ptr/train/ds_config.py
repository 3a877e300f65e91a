"""DeepSpeed JSON configs: validated before anything starts, then resolved for this run.

Validation names the offending key (``zero_optimization.stage3_foo: Extra inputs are not permitted``)
and the CLI exits with status 2. DeepSpeed ignores unknown top-level keys, so those are checked here;
the ``zero_optimization``, ``bf16`` and ``fp16`` sections go through DeepSpeed's own schemas.

``"auto"`` values are filled in for the run (:func:`resolve`):

* ``train_batch_size``: micro-batch × gradient accumulation × world size;
* ``bf16.enabled``: on where the hardware computes bf16 natively (``ptr.models.default_dtype``);
* ``scheduler.params.total_num_steps``: the run's optimizer steps; ``warmup_max_lr``: the optimizer lr;
* ``optimizer.params.torch_adam``: on when DeepSpeed runs on the CPU, where its fused and CPU Adam
  kernels need a JIT build (about a minute, and a compiler); torch's AdamW needs none. Set it to
  ``false`` to use DeepSpeedCPUAdam anyway (the ZeRO-Offload kernel).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from ptr.errors import PtrError, problems

CONFIGS = Path(__file__).with_name("configs")  # the configs shipped with ptr (default.json, paper.json)
Auto = Literal["auto"]

# Top-level keys DeepSpeed reads (runtime/config.py); anything else is a typo DeepSpeed would ignore.
OTHER_TOP_LEVEL = (
    "steps_per_print wall_clock_breakdown dump_state memory_breakdown zero_allow_untested_optimizer "
    "zero_force_ds_cpu_optimizer bfloat16 amp torch_autocast communication_data_type "
    "seq_parallel_communication_data_type prescale_gradients gradient_predivide_factor sparse_gradients "
    "disable_allgather checkpoint data_types activation_checkpointing flops_profiler comms_logger "
    "tensorboard wandb csv_monitor comet aio elasticity autotuning compile data_efficiency "
    "curriculum_learning pipeline tensor_parallel hybrid_engine compression_training nebula "
    "weight_quantization dataloader_drop_last graph_harvesting use_data_before_expert_parallelism "
    "gradient_allreduce_op check_overflow"
).split()

ADAM_PARAMS = {
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "bias_correction",
    "amsgrad",
    "torch_adam",
    "adam_w_mode",
}
ADAM_PARAMS |= {"fp32_optimizer_states", "foreach"}
# Keyword arguments of deepspeed.runtime.lr_schedules' classes (a test checks them against DeepSpeed).
SCHEDULER_PARAMS = {
    "WarmupLR": {"warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type", "last_batch_iteration"},
    "WarmupDecayLR": {
        "total_num_steps",
        "warmup_min_lr",
        "warmup_max_lr",
        "warmup_num_steps",
        "warmup_type",
        "last_batch_iteration",
    },
    "WarmupCosineLR": {
        "total_num_steps",
        "warmup_min_ratio",
        "warmup_num_steps",
        "cos_min_ratio",
        "warmup_type",
        "last_batch_iteration",
    },
    "OneCycle": {
        "cycle_min_lr",
        "cycle_max_lr",
        "decay_lr_rate",
        "cycle_first_step_size",
        "cycle_second_step_size",
        "cycle_first_stair_count",
        "cycle_second_stair_count",
        "decay_step_size",
        "cycle_momentum",
        "cycle_min_mom",
        "cycle_max_mom",
        "decay_mom_rate",
        "last_batch_iteration",
    },
    "LRRangeTest": {
        "lr_range_test_min_lr",
        "lr_range_test_step_size",
        "lr_range_test_step_rate",
        "lr_range_test_staircase",
        "last_batch_iteration",
    },
}
OPTIMIZERS = {"Adam", "AdamW", "Adagrad", "Lamb", "Lion", "OneBitAdam", "ZeroOneAdam", "OneBitLamb", "SGD"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimizerSection(_Section):
    type: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known(cls, value):
        if value not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {value!r} (one of {', '.join(sorted(OPTIMIZERS))})")
        return value

    def unknown_params(self) -> set[str]:
        return set(self.params) - ADAM_PARAMS if self.type in ("Adam", "AdamW") else set()


class SchedulerSection(_Section):
    type: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known(cls, value):
        if value not in SCHEDULER_PARAMS:
            raise ValueError(f"unknown scheduler {value!r} (one of {', '.join(SCHEDULER_PARAMS)})")
        return value


class DeepSpeedConfig(_Section):
    """The keys ptr reads itself are typed; the other known keys pass to DeepSpeed as they are."""

    model_config = ConfigDict(extra="allow")
    train_batch_size: PositiveInt | Auto | None = None
    train_micro_batch_size_per_gpu: PositiveInt | Auto | None = None
    gradient_accumulation_steps: PositiveInt | Auto | None = None
    gradient_clipping: float | None = Field(default=None, ge=0)
    optimizer: OptimizerSection
    scheduler: SchedulerSection | None = None
    zero_optimization: dict[str, Any] | None = None
    bf16: dict[str, Any] | None = None
    fp16: dict[str, Any] | None = None


def _where(loc, raw) -> str:
    """The error's key path, cut where pydantic's location leaves the config (union member names)."""
    parts, node = [], raw
    for part in loc:
        if not isinstance(node, dict):
            break
        parts.append(str(part))
        node = node.get(part)
    return ".".join(parts)


def _fail(source, key: str, message: str):
    raise PtrError(f"{source}: {key}: {message}")


def _first_error(err: ValidationError) -> tuple[tuple, str]:
    return problems(err)[0]


def shipped_names() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.json"))


def shipped(name: str | None) -> Path | None:
    """The shipped config a name means (``paper`` or ``paper.json``; None: ``default``), or None when
    ``name`` is not one (a path of the user's)."""
    name = "default" if name is None else str(name)
    stem = name.removesuffix(".json")
    return CONFIGS / f"{stem}.json" if stem in shipped_names() else None


def read_shipped(name: str | None) -> dict:
    """A shipped config by name, as it is (the trainer validates what it is given); an unknown name
    is an error listing the shipped ones."""
    path = shipped(name)
    if path is None:
        raise PtrError(f"no shipped DeepSpeed config {name!r} (shipped: {', '.join(shipped_names())})")
    return json.loads(path.read_text())


def load(path: str | Path | None) -> tuple[dict, str]:
    """Read and validate a config file (``None`` or a shipped name: the config in ``ptr/train/configs``)."""
    if (found := shipped(path)) is not None:
        source = f"ptr/train/configs/{found.name}"
        text = found.read_text()
    else:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise PtrError(f"{source}: cannot read DeepSpeed config ({err.strerror})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise PtrError(f"{source}:{err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(raw, dict):
        raise PtrError(f"{source}: a DeepSpeed config is a JSON object")
    validate(raw, source)
    return raw, source


def validate(raw: dict, source: str = "deepspeed config") -> DeepSpeedConfig:
    """Check ``raw`` as DeepSpeed would read it, and more strictly; raise PtrError naming the key."""
    try:
        cfg = DeepSpeedConfig.model_validate(raw)
    except ValidationError as err:
        loc, msg = _first_error(err)
        _fail(source, _where(loc, raw), msg)
    unknown = sorted(set(raw) - set(DeepSpeedConfig.model_fields) - set(OTHER_TOP_LEVEL))
    if unknown:
        _fail(source, unknown[0], "unknown key")
    if extra := cfg.optimizer.unknown_params():
        _fail(source, f"optimizer.params.{sorted(extra)[0]}", f"not a parameter of {cfg.optimizer.type}")
    if cfg.scheduler is not None:
        extra = set(cfg.scheduler.params) - SCHEDULER_PARAMS[cfg.scheduler.type]
        if extra:
            _fail(source, f"scheduler.params.{sorted(extra)[0]}", f"not a parameter of {cfg.scheduler.type}")
    _validate_with_deepspeed(raw, source)
    if _enabled(raw.get("bf16")) is True and _enabled(raw.get("fp16")) is True:
        _fail(source, "fp16.enabled", "bf16 and fp16 cannot both be enabled")
    zero = raw.get("zero_optimization") or {}
    if zero.get("stage", 0) == 0 and (zero.get("offload_optimizer") or zero.get("offload_param")):
        _fail(source, "zero_optimization.offload_optimizer", "CPU offload needs ZeRO stage 1 or higher")
    if zero.get("offload_param") and zero.get("stage") != 3:
        _fail(source, "zero_optimization.offload_param", "parameter offload needs ZeRO stage 3")
    batch_sizes(raw, world_size=None, source=source)
    return cfg


def _enabled(section) -> bool | str | None:
    return None if section is None else section.get("enabled", False)


def _validate_with_deepspeed(raw: dict, source: str) -> None:
    """DeepSpeed's own pydantic schemas for the sections that have one (they forbid unknown keys)."""
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    for key, schema in (
        ("zero_optimization", DeepSpeedZeroConfig),
        ("bf16", DeepSpeedBF16Config),
        ("fp16", DeepSpeedFP16Config),
    ):
        section = raw.get(key)
        if section is None:
            continue
        if not isinstance(section, dict):
            _fail(source, key, "expected a JSON object")
        section = {k: (False if v == "auto" and k == "enabled" else v) for k, v in section.items()}
        try:
            schema(**section)
        except ValidationError as err:
            loc, msg = _first_error(err)
            _fail(source, _where((key, *loc), raw), msg)
        except (ValueError, AssertionError, TypeError) as err:
            _fail(source, key, str(err))


def batch_sizes(raw: dict, world_size: int | None, source: str = "deepspeed config") -> tuple[int, int]:
    """(micro-batch per rank, gradient accumulation steps), checked against ``train_batch_size``.

    A missing one of the three is derived from the others. With ``world_size`` None (validation before
    the ranks are known) only what must hold for every world size is checked.
    """

    def given(key):
        value = raw.get(key)
        return None if value in (None, "auto") else int(value)

    total = given("train_batch_size")
    micro = given("train_micro_batch_size_per_gpu")
    accum = given("gradient_accumulation_steps")
    if total is not None and micro is not None and accum is not None and total % (micro * accum):
        _fail(
            source,
            "train_batch_size",
            f"{total} is not a multiple of train_micro_batch_size_per_gpu × gradient_accumulation_steps "
            f"({micro} × {accum})",
        )
    if world_size is None:
        return micro or 1, accum or 1
    if total is None:
        return micro or 1, accum or 1
    if micro is not None and accum is not None:
        if total != micro * accum * world_size:
            _fail(
                source,
                "train_batch_size",
                f"{total} ≠ train_micro_batch_size_per_gpu × gradient_accumulation_steps × world size "
                f"({micro} × {accum} × {world_size} = {micro * accum * world_size})",
            )
        return micro, accum
    accum = 1 if micro is None and accum is None else accum
    known, key = (
        (accum, "train_micro_batch_size_per_gpu") if micro is None else (micro, "gradient_accumulation_steps")
    )
    if total % (known * world_size):
        _fail(
            source,
            key,
            f"cannot derive it: train_batch_size {total} is not divisible by {known} × {world_size} ranks",
        )
    derived = total // (known * world_size)
    return (derived, accum) if micro is None else (micro, derived)


def resolve(raw: dict, *, world_size: int, total_steps: int, on_cpu: bool, bf16_native: bool) -> dict:
    """The config this run hands to DeepSpeed: every ``"auto"`` replaced, batch sizes explicit."""
    cfg = copy.deepcopy(raw)
    micro, accum = batch_sizes(cfg, world_size)
    cfg.update(
        train_micro_batch_size_per_gpu=micro,
        gradient_accumulation_steps=accum,
        train_batch_size=micro * accum * world_size,
    )
    cfg.setdefault("steps_per_print", 10**9)  # ptr logs every step itself
    if cfg.get("bf16", {}).get("enabled") == "auto":
        cfg["bf16"]["enabled"] = bool(bf16_native)
    params = cfg["optimizer"].setdefault("params", {})
    if params.get("torch_adam", "auto") == "auto" and cfg["optimizer"]["type"] in ("Adam", "AdamW"):
        params["torch_adam"] = bool(on_cpu)
    if params.get("torch_adam") and (cfg.get("zero_optimization") or {}).get("offload_optimizer"):
        cfg.setdefault("zero_force_ds_cpu_optimizer", False)
    sched = (cfg.get("scheduler") or {}).get("params", {})
    if sched.get("total_num_steps") == "auto":
        sched["total_num_steps"] = int(total_steps)
    if sched.get("warmup_max_lr") == "auto":
        sched["warmup_max_lr"] = params.get("lr", 1e-3)
    leftover = [k for k, v in _walk(cfg) if v == "auto"]
    if leftover:
        raise PtrError(f'deepspeed config: {leftover[0]}: "auto" is not supported for this key')
    return cfg


def _walk(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), obj


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
