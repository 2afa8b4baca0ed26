"""The base of every settings section, in a module of its own: config.py composes the sections, and each
kind (citywatch/kinds/) declares its own, so neither needs to import the other."""

from __future__ import annotations

from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic_core.core_schema import ValidationInfo

S = TypeVar("S", bound=BaseModel)


class Section(BaseModel):
    """A block of config.yaml: unknown keys are refused (a typo is an error, not a silent default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SectionGroup(Section):
    """A section whose sub-sections the kinds add (`rules`, `rules.learned`): a kind finds its own by type."""

    what: ClassVar[str] = "section"  # how an error names what is missing

    def section(self, cls: type[S]) -> S:
        """The sub-section of type `cls`, typed (a kind's rules and tools read theirs so)."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, cls):
                return value
        raise KeyError(f"no {self.what} of type {cls.__name__}")


def below(section: str, low_name: str, info: ValidationInfo, high_name: str, high: float) -> None:
    """Cross-field check (fields validate in order, so the lower one is already in info.data)."""
    low = info.data.get(low_name)
    if low is not None and not low < high:
        raise ValueError(f"{section}.{low_name} ({low:g}) must be below {section}.{high_name} ({high:g})")
