"""The generic detector (generic.py, what `citywatch replay` runs without a kind) as a learned
pipeline rule on one numeric field of a kind, per device: `generic_anomaly`.

Off by default: a kind gets it only when `rules.learned.generic.fields` names a field for it
(config.yaml). It opens where the detector's alert opens (anomaly score >= 0.5: an improbable
departure from this device's own behaviour at this time of day) and clears after
`clear_after` readings without a new one. Its per-device state is one detector (stored as its own
plain state, `GenericDetector.to_state`, about 1 KiB of msgpack), the open flag and the count of
quiet readings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from citywatch.detectors.base import QUIET, Verdict
from citywatch.detectors.baseline import LearnedRule
from citywatch.detectors.generic import GenericDetector
from citywatch.detectors.record import DeviceRecord, RuleState
from citywatch.model import Device, Finding, Reading


class GenericState(RuleState):
    """This device's detector, whether its alert is open, quiet readings since its last alert."""

    __slots__ = ("detector", "open", "quiet")
    FIELDS = ("detector", "open", "quiet")
    V1 = ("d", "open", "quiet")

    def __init__(self) -> None:
        self.detector = GenericDetector()
        self.open = 0
        self.quiet = 0

    def dump(self) -> list[Any]:
        return [self.detector.to_state(), self.open, self.quiet]

    def restore(self, values: Sequence[Any]) -> None:
        self.detector = GenericDetector.from_state(values[0])
        self.open, self.quiet = int(values[1]), int(values[2])

    def restore_v1(self, old: Mapping[str, Any]) -> None:
        self.detector.unpack(dict(old["d"]))
        self.open, self.quiet = int(old.get("open", 0)), int(old.get("quiet", 0))


class GenericAnomaly(LearnedRule):
    """See the module docstring. One object per kind, shared by that kind's devices."""

    name = "generic_anomaly"
    v1_key = "generic"

    def __init__(self, kind: str, field: str, *, clear_after: int = 30) -> None:
        self.kinds = frozenset({kind})
        self.field = field
        self.clear_after = clear_after

    def fresh(self) -> GenericState:
        return GenericState()

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: GenericState) -> Verdict:
        value = reading.values.get(self.field)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return QUIET
        alert, score = state.detector.process(float(value), reading.ts)
        if alert:
            state.open, state.quiet = 1, 0
            return Finding(self.name, True, "warning", value, None,
                           f"unusual {self.field} for this device: {value:g} (anomaly score {score:.2f}, "
                           f"alerting at 0.50)"), score
        if state.open:
            state.quiet += 1
            if state.quiet >= self.clear_after:
                state.open, state.quiet = 0, 0
                return Finding(self.name, False, value=value), score
        return None, score
