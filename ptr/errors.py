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
