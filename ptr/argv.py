"""A stage config written back as its command's flags, for the few places that must start a new
process (``torchrun`` on one machine, every replica of a PyTorchJob). Everywhere else a stage is
called with its config object.

Fields at their default are left out (the command applies the same default); a boolean that is off
where the default is on is written ``--no-<name>``; lists are written as several values, or joined
by commas where the command reads one value. Each config's round trip through its command's parser
is tested field by field (tests/test_stage_argv.py).
"""

from __future__ import annotations

from collections.abc import Collection

from pydantic import BaseModel


def _default(field):
    return field.default_factory() if field.default_factory else field.default


def _text(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def config_argv(
    config: BaseModel, *, joined: Collection[str] = (), names: dict[str, str] | None = None
) -> list[str]:
    """``config`` as flags: ``--<field> value`` for every field that differs from its default.

    ``joined``: list fields the command reads as one comma-separated value; ``names``: fields whose
    flag is not ``--<field>``."""
    argv: list[str] = []
    for name, field in type(config).model_fields.items():
        value = getattr(config, name)
        if value == _default(field):
            continue
        flag = f"--{(names or {}).get(name, name)}"
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif value is None:
            raise ValueError(f"{name}: None cannot be written as a flag (the default is {_default(field)!r})")
        elif isinstance(value, list | tuple):
            values = [_text(v) for v in value]
            argv += [flag, ",".join(values)] if name in joined else [flag, *values]
        elif isinstance(value, BaseModel | dict):
            raise TypeError(f"{name}: a nested config has no flag form; the config's to_argv writes it")
        else:
            argv += [flag, _text(value)]
    return argv
