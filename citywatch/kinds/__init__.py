"""The device kinds: one module per kind in this package, each declaring its `SPEC` (citywatch/kindspec.py).

`KINDS` lists the modules without importing them, so `citywatch replay --kind` offers the kinds as
choices without loading pydantic or msgspec; `spec(kind)` and `specs()` import the declarations.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from citywatch.kindspec import KindSpec

KINDS: tuple[str, ...] = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


@cache
def spec(kind: str) -> KindSpec:
    """The declaration of one kind (KeyError for a kind that has no module here)."""
    if kind not in KINDS:
        raise KeyError(kind)
    declared: KindSpec = importlib.import_module(f"{__name__}.{kind}").SPEC
    if declared.name != kind:
        raise ValueError(f"citywatch/kinds/{kind}.py declares kind {declared.name!r}")
    return declared


def specs() -> dict[str, KindSpec]:
    """Every kind's declaration, in KINDS order."""
    return {kind: spec(kind) for kind in KINDS}
