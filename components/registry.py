"""Explicit name -> class registries, one per component family, checked against the family's interface."""
from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry is built from explicit imports: `Registry("upsampler", Upsampler, {"gaussian": ...})`.
    Every entry must subclass the family's interface; unknown names fail naming the allowed ones."""

    def __init__(self, family: str, interface: type, entries: dict[str, type[T]]):
        for name, cls in entries.items():
            if not (isinstance(cls, type) and issubclass(cls, interface)):
                raise TypeError(f"{family} registry: {name!r} -> {cls!r} does not implement {interface.__name__}")
        self.family, self.interface, self._entries = family, interface, dict(entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> type[T]:
        if name not in self._entries:
            raise ValueError(f"unknown {self.family} {name!r}; allowed: {', '.join(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries
