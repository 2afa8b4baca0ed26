"""The rule interface and small helpers shared by the per-kind rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from citywatch.model import Device, Finding, Reading

DeviceState = dict[str, Any]


class Rule(Protocol):
    """A domain rule: `evaluate` may read and update `state`, a per-device mapping shared by
    all rules of that device (each rule uses its own keys, prefixed with its name).

    Every accepted reading reaches every rule, late ones included (event time older than a reading
    already seen: `is_late`), except rules with `in_order_only` (learned series, which need time to
    move forward). A late reading may open or raise an alert, never clear one: rules keep their
    state as the newest reading left it."""

    name: str
    kinds: frozenset[str]
    in_order_only: bool

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None: ...


def is_late(reading: Reading, state: DeviceState) -> bool:
    """True when a reading with a later event time was already processed for this device. The
    pipeline moves `state["ts"]` to a reading's event time only after the rules have seen it."""
    last = state.get("ts")
    return last is not None and reading.ts < last


def level_with_hysteresis(value: float, current: int, thresholds: Sequence[float], hysteresis: float) -> int:
    """Alarm level 0..len(thresholds) for `value`: rising at a threshold, falling only once the value
    is `hysteresis` below it, so a value hovering at the threshold does not flap."""
    level = 0
    for i, threshold in enumerate(thresholds, start=1):
        if value >= threshold or (current >= i and value > threshold - hysteresis):
            level = i
    return level


def track_level(reading: Reading, state: DeviceState, key: str, value: float, thresholds: Sequence[float],
                hysteresis: float) -> int | None:
    """The alarm level of `value`, kept under `key`; None for a late reading that would lower the
    level a newer reading set (a late reading may raise the level: fail safe)."""
    current: int = state.get(key, 0)
    level = level_with_hysteresis(value, current, thresholds, hysteresis)
    if level < current and is_late(reading, state):
        return None
    state[key] = level
    return level


def threshold(device: Device, key: str, default: float) -> float:
    """A per-device override from the registry (`thresholds: {key: value}`) or the configured default."""
    return device.thresholds.get(key, default) if device.thresholds else default
