"""User-facing errors: one line, exit status 2, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; its message says how, in one line."""

    exit_code = 2


class DataNotFoundError(UserError):
    """No dataset could be located or downloaded."""


class CorruptCacheError(Exception):
    """A cache entry failed validation; callers recompute it."""
