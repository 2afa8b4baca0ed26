"""The generic detector (generic.py, what `citywatch replay` runs without a kind) as a learned
pipeline rule on one numeric field of a kind, per device: `generic_anomaly`.

Off by default: a kind gets it only when `rules.learned.generic.fields` names a field for it
(config.yaml). It opens where the detector's alert opens (anomaly score >= 0.5: an improbable
departure from this device's own behaviour at this time of day) and clears after
`clear_after` readings without a new one. Its per-device state is the detector's own plain
state (`GenericDetector.packed`, about 1 KiB of msgpack) under the key `generic`, plus the open
flag and the count of quiet readings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from citywatch.detectors.base import DeviceState
from citywatch.detectors.baseline import LearnedRule, field_ts
from citywatch.detectors.generic import GenericDetector
from citywatch.model import Device, Finding, Reading


class GenericAnomaly(LearnedRule):
    """See the module docstring. One object per kind, shared by that kind's devices."""

    name = "generic_anomaly"
    key = "generic"

    def __init__(self, kind: str, field: str, *, clear_after: int = 30) -> None:
        self.kinds = frozenset({kind})
        self.field = field
        self.clear_after = clear_after
        self.detector = GenericDetector()  # works on each device's state in turn (`unpack`)
        self.state = self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {"d": GenericDetector().packed(), "open": 0, "quiet": 0}

    def step(self, value: float, ts: float) -> tuple[bool, float]:
        """Score, decide and learn one reading of this device (the bound state)."""
        detector = self.detector.unpack(self.state["d"])
        alert, score = detector.process(value, ts)
        self.state["d"] = detector.packed()
        return alert, score

    def score_one(self, x: Mapping[str, Any]) -> float:
        found = field_ts(x, self.field)
        if found is None:
            return 0.0
        return self.detector.unpack(self.state["d"]).score_one({"value": found[0], "ts": found[1]})

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        value = reading.values.get(self.field)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        st = self.bind_device(state)
        alert, score = self.step(float(value), reading.ts)
        self.last_score = score
        if alert:
            st["open"], st["quiet"] = 1, 0
            return Finding(self.name, True, "warning", value, None,
                           f"unusual {self.field} for this device: {value:g} (anomaly score {score:.2f}, "
                           f"alerting at 0.50)")
        if st["open"]:
            st["quiet"] += 1
            if st["quiet"] >= self.clear_after:
                st["open"], st["quiet"] = 0, 0
                return Finding(self.name, False, value=value)
        return None
