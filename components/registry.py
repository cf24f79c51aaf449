"""Explicit name -> class registries, one per component family, checked against the family's interface.

Every entry is built the same way (espnet's ClassChoices is the model): `cls(cls.Config(...), **sizes)`.
`cls.Config` is the variant's own small frozen dataclass, its config section; `sizes` are the numbers only
known when the model is assembled (vocabulary size, channel counts). A section's field names are the keys
users write (e.g. `encoder_channels` of [model]), so `Registry.section` derives it from the run's config
objects by name, and a new variant's hyperparameter is a new field with its default.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def config_section(config_cls: type, *sources: Any) -> Any:
    """`config_cls` (a frozen dataclass) filled by field name from the first source that has the field;
    fields no source has keep their default."""
    values = {}
    for f in dataclasses.fields(config_cls):
        source = next((s for s in sources if hasattr(s, f.name)), None)
        if source is not None:
            values[f.name] = getattr(source, f.name)
    return config_cls(**values)


class Registry(Generic[T]):
    """A registry is built from explicit imports: `Registry("upsampler", Upsampler, {"gaussian": ...})`.
    Every entry must subclass the family's interface and carry `Config`, a frozen dataclass; unknown names
    fail naming the allowed ones."""

    def __init__(self, family: str, interface: type, entries: dict[str, type[T]]):
        for name, cls in entries.items():
            if not (isinstance(cls, type) and issubclass(cls, interface)):
                raise TypeError(f"{family} registry: {name!r} -> {cls!r} does not implement {interface.__name__}")
            config_cls = getattr(cls, "Config", None)
            frozen = getattr(getattr(config_cls, "__dataclass_params__", None), "frozen", False)
            if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls) and frozen):
                raise TypeError(f"{family} registry: {name!r} -> {cls.__name__}.Config is not a frozen dataclass")
        self.family, self.interface, self._entries = family, interface, dict(entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> type[T]:
        if name not in self._entries:
            raise ValueError(f"unknown {self.family} {name!r}; allowed: {', '.join(self._entries)}")
        return self._entries[name]

    def section(self, name: str, *sources: Any) -> Any:
        """The config section of entry `name`, its fields taken by name from `sources` (see config_section)."""
        return config_section(self.get(name).Config, *sources)  # type: ignore[attr-defined]

    def build(self, name: str, *sources: Any, **sizes: Any) -> T:
        """`cls(section, **sizes)`: the one way every entry is built."""
        return self.get(name)(self.section(name, *sources), **sizes)  # type: ignore[call-arg]

    def with_entries(self, **entries: type[T]) -> Registry[T]:
        """A copy with more entries (checked the same way): for tests and examples that add a variant."""
        return Registry(self.family, self.interface, {**self._entries, **entries})

    def __contains__(self, name: str) -> bool:
        return name in self._entries
