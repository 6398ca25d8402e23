"""One registry mechanism for every pluggable component: backbones, identity heads, losses.

fast-reid's ``Registry`` without its global config: a component module decorates its factory
with ``@BACKBONES.register("name")`` and everything else asks the registry by the name the spec
gives. An unknown name is a one-line :class:`~reidkit.errors.SpecError` naming the spec key, the
known names and the closest one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from reidkit.errors import SpecError, did_you_mean

F = TypeVar("F", bound=Callable[..., object])


class Registry(Generic[F]):
    """Named factories of one kind; ``key`` is the spec key that chooses among them."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._factories: dict[str, F] = {}

    def register(self, *names: str) -> Callable[[F], F]:
        """Decorator registering a factory under one or more names (aliases)."""

        def decorator(factory: F) -> F:
            for name in names:
                if name in self._factories:
                    raise ValueError(f"{self.key} '{name}' is registered twice")
                self._factories[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> F:
        """The factory registered as ``name``."""
        factory = self._factories.get(name)
        if factory is None:
            known = ", ".join(sorted(self._factories))
            raise SpecError(
                f"{self.key} '{name}' is not registered; choose one of {known}"
                f"{did_you_mean(name, self._factories)}"
            )
        return factory

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._factories))

    def __contains__(self, name: object) -> bool:
        return name in self._factories
