"""The device kinds, in a module of their own: `citywatch replay --kind` offers them as choices
without importing citywatch.model (msgspec, about 20 ms of the 0.25 s a 5,000-row replay may take)."""

from __future__ import annotations

KINDS: tuple[str, ...] = ("gas", "noise", "water", "parking", "lock", "smoke")
