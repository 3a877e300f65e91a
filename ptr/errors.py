"""Errors a user can fix: each names where the problem is and exits with status 2."""

from __future__ import annotations

import functools
import sys

EXIT_BAD_INPUT = 2


class PtrError(Exception):
    """A user-facing error: bad input, bad config, an unknown model reference.

    The CLI prints it without a traceback and exits with status 2.
    """

    exit_code = EXIT_BAD_INPUT


class InputError(PtrError):
    """Bad content in an input file, located as ``file:line: field: reason`` (``file[index]: …`` for
    an item of a JSON array). It pickles with its parts, so worker processes hand it back whole."""

    def __init__(
        self, path, line: int | None, reason: str, field: str | None = None, *, index: int | None = None
    ):
        self.path, self.line, self.field, self.reason, self.index = str(path), line, field, reason, index
        where = self.path if line is None else f"{self.path}:{line}"
        if index is not None:
            where = f"{where}[{index}]"
        what = f"{field}: {reason}" if field else reason
        super().__init__(f"{where}: {what}")

    def __reduce__(self):
        return _input_error, (self.path, self.line, self.reason, self.field, self.index)


def _input_error(path, line, reason, field, index):
    return InputError(path, line, reason, field, index=index)


def cli_errors(func):
    """Wrap a CLI ``main`` so that PtrError becomes a one-line message and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PtrError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code

    return wrapper


# pydantic's wording for the two problems a config file has most, in ours
_WORDING = {"extra_forbidden": "unknown key", "missing": "required"}


def problems(err) -> list[tuple[tuple, str]]:
    """A pydantic ``ValidationError``'s problems as ``(location, reason)``, in the project's wording
    (no "Value error, " prefix; "unknown key", "required")."""
    return [
        (tuple(p["loc"]), _WORDING.get(p["type"], p["msg"].removeprefix("Value error, ")))
        for p in err.errors(include_url=False)
    ]


def field_path(loc: tuple, *, flag: bool = False) -> str:
    """``("filters", "min_chars")`` → ``filters.min_chars``; list positions as ``[0]``; with ``flag``
    the first part is written as the command-line flag (``--max_steps``)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else (f"--{part}" if flag else str(part))
    return out


def describe(err, where: str = "", *, flags: bool = False, whole: str = "") -> str:
    """The one-line message of a ``ValidationError``: ``where: field: reason``, each further problem
    after ``;``. ``flags``: fields are named as command-line flags; ``whole`` names a problem with
    the object as a whole (a model validator's)."""
    lines = []
    for loc, reason in problems(err):
        field = field_path(loc, flag=flags) or whole
        lines.append(f"{field}: {reason}" if field else reason)
    return f"{where}: " * bool(where) + "; ".join(lines)


def invalid(err, where: str = "", *, flags: bool = False) -> PtrError:
    """A ``ValidationError`` as the PtrError a user sees (exit status 2)."""
    return PtrError(describe(err, where, flags=flags))
