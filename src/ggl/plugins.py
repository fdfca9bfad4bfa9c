"""Lookup tables for the pluggable pieces (datasets, models, defences, generators, attacks): a
user extends any of them from params, as a name of the form ``package.module:callable`` is
imported and used exactly like a built-in entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from ggl.errors import GglError

T = TypeVar("T", bound=Callable)

PLUGIN_PATTERN = r"\A[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z"  # \Z: "mod:fn\n" is no plugin name


def import_callable(spec: str) -> Callable:
    """Import ``package.module:callable``; raise a GglError that says, in one line, what went
    wrong (callers that know the params key naming ``spec`` put it in front). A module that
    cannot be found or does not compile is such an error; any other exception its import raises
    is a bug in it, and keeps its traceback."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as exc:
        raise GglError(f"cannot import {spec!r} ({type(exc).__name__}: {exc})") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError as exc:
        raise GglError(f"cannot resolve {spec!r}: module {module_name!r} has no attribute "
                       f"{attr!r}") from exc
    if not callable(obj):
        raise GglError(f"{spec!r} is not callable (it is a {type(obj).__name__})")
    return obj


class Registry(Generic[T]):
    """A named table of callables that also resolves ``module:callable`` plugins."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(fn: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = fn
            return fn

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        if ":" in name:  # package.module:callable
            return import_callable(name)  # type: ignore[return-value]
        raise GglError(f"unknown {self.kind} {name!r}: allowed are {', '.join(self.names())}, "
                       "or 'package.module:callable'")
