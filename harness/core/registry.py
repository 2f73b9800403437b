"""One tiny generic registry used by every extension point (bounds, objectives, benchmarks, backends)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from harness.core.errors import SpecError

T = TypeVar("T")

#: The first registry made for each kind, so that a lower layer can check a name against a registry that lives
#: above it once that registry's module is loaded (`loaded`), without importing it.
_BY_KIND: dict[str, Registry] = {}  # type: ignore[type-arg]


def loaded(kind: str) -> Registry | None:  # type: ignore[type-arg]
    """The registry of `kind` if the module that defines it has been imported, else None."""
    return _BY_KIND.get(kind)


class Registry(Generic[T]):
    """Maps names to objects; `@REG.register("name")` adds one, `REG.get("name")` finds it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        _BY_KIND.setdefault(kind, self)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers an object under `name` (names are unique)."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """Return the object registered as `name`, or fail naming the known ones."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise SpecError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
