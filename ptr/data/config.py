"""Building a stage's pydantic config from CLI flags, with errors a user can act on."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from ptr.errors import PtrError

M = TypeVar("M", bound=BaseModel)


def build(model: type[M], **values) -> M:
    """``model(**values)``; a validation error becomes ``--flag: message`` (exit status 2)."""
    try:
        return model(**values)
    except ValidationError as err:
        first = err.errors()[0]
        if not first["loc"]:  # a check across fields: its message names them
            raise PtrError(first["msg"].removeprefix("Value error, ")) from None
        where = ".".join(map(str, first["loc"])) or model.__name__
        raise PtrError(f"--{where}: {first['msg']}") from None


def default(model: type[BaseModel], name: str):
    """A field's default, for argparse (one source of truth for defaults)."""
    field = model.model_fields[name]
    return field.default_factory() if field.default_factory else field.default
