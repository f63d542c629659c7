"""A tiny named registry, one per axis (models, split points, methods, codecs, profiles), in the style of timm."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from engine.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; unknown names raise a `UserError` listing the known ones."""

    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that adds what it decorates under `name`, at its definition site.

        Args:
            name: the name users pick it by.
        Returns:
            the decorator, which returns its argument unchanged.
        """

        def wrap(obj: T) -> T:
            self.add(name, obj)
            return obj

        return wrap

    def add(self, name: str, obj: T) -> None:
        """Add `obj` under `name`; a name registered twice is a programming error (ValueError).

        Args:
            name: the name users pick it by; obj: what it names.
        """
        if name in self._items:
            raise ValueError(f"{self.axis} {name!r} is registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """The object registered under `name`.

        Args:
            name: a registered name.
        Returns:
            the object; an unknown name raises a UserError listing the known ones.
        """
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self._items)
            raise UserError(f"unknown {self.axis} {name!r}; choose one of: {known}") from None

    def names(self, pattern: str = "*") -> list[str]:
        """The registered names matching a shell-style `pattern`, in registration order (as timm's `list_models`).

        Args:
            pattern: e.g. "conv*"; "*" for all.
        Returns:
            the matching names.
        """
        return [n for n in self._items if fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
