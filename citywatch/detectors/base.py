"""The rule interface and small helpers shared by the per-kind rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from citywatch.model import Device, Finding, Reading

DeviceState = dict[str, Any]


class Rule(Protocol):
    """A domain rule: `evaluate` may read and update `state`, a per-device mapping shared by
    all rules of that device (each rule uses its own keys, prefixed with its name)."""

    name: str
    kinds: frozenset[str]

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None: ...


def level_with_hysteresis(value: float, current: int, thresholds: Sequence[float], hysteresis: float) -> int:
    """Alarm level 0..len(thresholds) for `value`: rising at a threshold, falling only once the value
    is `hysteresis` below it, so a value hovering at the threshold does not flap."""
    level = 0
    for i, threshold in enumerate(thresholds, start=1):
        if value >= threshold or (current >= i and value > threshold - hysteresis):
            level = i
    return level


def threshold(device: Device, key: str, default: float) -> float:
    """A per-device override from the registry (`thresholds: {key: value}`) or the configured default."""
    return device.thresholds.get(key, default) if device.thresholds else default


def implausible_rise(state: DeviceState, key: str, value: float, ts: float, max_per_min: float) -> bool:
    """True when `value` rose from the previous reading faster than physics allows (a sensor glitch
    until the next reading confirms it). Keeps the previous (value, ts) under `key`."""
    prev = state.get(key)
    state[key] = [value, ts]
    if prev is None or max_per_min == float("inf"):
        return False
    minutes = max(ts - prev[1], 1.0) / 60.0
    return value - prev[0] > max_per_min * minutes
