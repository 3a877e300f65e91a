"""Building a stage's pydantic config from CLI flags, with errors a user can act on."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from ptr.errors import invalid

M = TypeVar("M", bound=BaseModel)


def build(model: type[M], **values) -> M:
    """``model(**values)``; a validation error becomes ``--flag: message`` (exit status 2)."""
    try:
        return model(**values)
    except ValidationError as err:
        raise invalid(err, flags=True) from None


def default(model: type[BaseModel], name: str):
    """A field's default, for argparse (one source of truth for defaults)."""
    field = model.model_fields[name]
    return field.default_factory() if field.default_factory else field.default
