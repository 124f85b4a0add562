"""Name -> builder registries for models and datasets (used only at the edges).

A registry stores builder functions, never instances, paths or constants. A typo fails with the list of
known names. ``Registry.scoped()`` restores the entries afterwards so tests do not leak registrations.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """A named table of builder functions."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: register ``fn`` under ``name``; registering a name twice is an error."""

        def add(fn: F) -> F:
            if name in self._builders and self._builders[name] is not fn:
                raise KeyError(f"{self.kind} {name!r} is already registered (by {self._builders[name].__qualname__})")
            self._builders[name] = fn
            return fn

        return add

    def get(self, name: str) -> Callable[..., Any]:
        """The builder registered as ``name``; a KeyError lists the known names otherwise."""
        try:
            return self._builders[name]
        except KeyError:
            known = ", ".join(sorted(self._builders)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the builder registered as ``name``."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    @contextlib.contextmanager
    def scoped(self) -> Iterator["Registry"]:
        """Registrations made inside the block are undone when it ends."""
        saved = dict(self._builders)
        try:
            yield self
        finally:
            self._builders = saved


MODELS = Registry("model")
DATASETS = Registry("dataset")
