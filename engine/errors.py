"""User-facing errors: one line, exit status 2, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; its message says how, in one line."""

    exit_code = 2


class DataNotFoundError(UserError):
    """No dataset could be located or downloaded."""


class CorruptCacheError(Exception):
    """A cache entry failed validation; callers recompute it."""


def one_line(exc: BaseException) -> str:
    """An error as one line of at most 400 characters: a UserError's message, else `Type: message`."""
    text = (str(exc).strip().splitlines() or [""])[0][:400]
    return text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}"
