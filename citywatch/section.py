"""The base of every settings section, in a module of its own: config.py composes the sections, and each
kind (citywatch/kinds/) declares its own, so neither needs to import the other."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic_core.core_schema import ValidationInfo


class Section(BaseModel):
    """A block of config.yaml: unknown keys are refused (a typo is an error, not a silent default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def below(section: str, low_name: str, info: ValidationInfo, high_name: str, high: float) -> None:
    """Cross-field check (fields validate in order, so the lower one is already in info.data)."""
    low = info.data.get(low_name)
    if low is not None and not low < high:
        raise ValueError(f"{section}.{low_name} ({low:g}) must be below {section}.{high_name} ({high:g})")
