"""The rule interface and small helpers shared by the per-kind rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from citywatch.detectors.record import DeviceRecord, RuleState
from citywatch.model import Device, Finding, Reading

Verdict = tuple[Finding | None, float]
"""What a rule says of one reading: a finding for the alert engine (None: nothing to say) and its
score in [0, 1], 0.5 at the rule's alert threshold (fixed rules: 1.0 when active, else 0.0)."""

QUIET: Verdict = (None, 0.0)


class Rule(Protocol):
    """A rule: a stateless object evaluated against a device's record and its own state in it.

    `fresh()` is the rule's state for a new device (None: the rule keeps none); the pipeline keeps
    it in the device's record and hands it back with every reading. Every accepted reading reaches
    every rule, late ones included (event time older than a reading already seen: `is_late`),
    except rules with `in_order_only` (learned series, which need time to move forward). A late
    reading may open or raise an alert, never clear one: rules keep their state as the newest
    reading left it. `v1_key` names where the rule's state was in stored format 1 (record.py)."""

    name: str
    kinds: frozenset[str]
    in_order_only: bool
    v1_key: str

    def fresh(self) -> RuleState | None: ...

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: Any) -> Verdict: ...


class CompiledRule:
    """Base class of the built-in rules (a Rule). Compiled, the pipeline calls a subclass's
    `evaluate` through mypyc's vtable and gets the verdict unboxed: no Python-level call, no tuple
    allocated per rule per reading. Any other object with Rule's attributes is called as before."""

    name: str
    kinds: frozenset[str]
    in_order_only: bool = False
    v1_key: str = ""

    def fresh(self) -> RuleState | None:
        return None

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: Any) -> Verdict:
        raise NotImplementedError  # pragma: no cover - every rule implements it


def verdict(rule: Rule, reading: Reading, device: Device, record: DeviceRecord, state: Any) -> Verdict:
    """`rule.evaluate(...)`: a direct (vtable) call for a CompiledRule, a Python call otherwise."""
    if isinstance(rule, CompiledRule):
        return rule.evaluate(reading, device, record, state)
    return rule.evaluate(reading, device, record, state)


def found(finding: Finding) -> Verdict:
    """The verdict of a fixed rule: score 1.0 when the condition is active, else 0.0."""
    return finding, 1.0 if finding.active else 0.0


def is_late(reading: Reading, record: DeviceRecord) -> bool:
    """True when a reading with a later event time was already processed for this device. The
    pipeline moves `record.ts` to a reading's event time only after the rules have seen it."""
    return reading.ts < record.ts  # False while record.ts is UNSET (NaN compares False)


def level_with_hysteresis(value: float, current: int, thresholds: Sequence[float], hysteresis: float) -> int:
    """Alarm level 0..len(thresholds) for `value`: rising at a threshold, falling only once the value
    is `hysteresis` below it, so a value hovering at the threshold does not flap."""
    level = 0
    for i in range(len(thresholds)):  # by index: no enumerate object per reading
        limit = thresholds[i]
        if value >= limit or (current > i and value > limit - hysteresis):
            level = i + 1
    return level


class LevelState(RuleState):
    """The alarm level a level rule last set (0: none)."""

    __slots__ = ("level",)
    FIELDS = ("level",)

    def __init__(self) -> None:
        self.level = 0


def track_level(reading: Reading, record: DeviceRecord, state: LevelState, value: float,
                thresholds: Sequence[float], hysteresis: float) -> int | None:
    """The alarm level of `value`, kept in `state`; None for a late reading that would lower the
    level a newer reading set (a late reading may raise the level: fail safe)."""
    current = state.level
    level = level_with_hysteresis(value, current, thresholds, hysteresis)
    if level < current and is_late(reading, record):
        return None
    state.level = level
    return level


def threshold(device: Device, key: str, default: float) -> float:
    """A per-device override from the registry (`thresholds: {key: value}`) or the configured default."""
    return device.thresholds.get(key, default) if device.thresholds else default
