"""Learned parking-bay detectors: a sensor stuck (no state change for far longer than this bay's
own change rate allows) or flapping (state changes faster than cars move)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from citywatch.detectors.base import DeviceState
from citywatch.detectors.baseline import LearnedRule, SeasonalBaseline
from citywatch.detectors.settings import ParkingParams
from citywatch.model import Device, Finding, Reading

_RATE_TAU_S = 7 * 86400.0
_MAX_GAP_S = 3600.0  # a device that was off is no evidence of a quiet bay
_QUIET_MIN_S = 6 * 3600.0


def _occupied(x: Mapping[str, Any]) -> tuple[float, float] | None:
    occupied, ts = x.get("occupied"), x.get("ts")
    if occupied is None or ts is None or isinstance(ts, str):
        return None
    return (1.0 if occupied else 0.0), float(ts)


class ParkingStuck(LearnedRule):
    """No state change for at least `stuck_min_h`, when this bay's learned change rate (an EW
    rate over about a week of its own time) expected `stuck_expected_changes` of them. A rarely
    used bay learns a low rate and is not flagged. A silence longer than eight mean gaps (and
    six hours) is not learned as quiet time, so a stuck sensor does not lower its own rate. Also learns
    the bay's seasonal occupancy baseline (share of time occupied by hour and day type)."""

    name = "parking_stuck"
    kinds = frozenset({"parking"})
    key = "pst"

    def __init__(self, baseline: SeasonalBaseline, params: ParkingParams | None = None) -> None:
        self.baseline = baseline
        self.p = params or ParkingParams()
        self.state = self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {"b": self.baseline.fresh(), "o": None, "c": 0.0, "e": 0.0, "w": 0.0, "t": 0.0, "k": 0, "a": 0}

    def _score(self, occupied: float, ts: float) -> float:
        st = self.state
        if st["o"] is None or occupied != st["o"] or st["k"] < self.p.warmup_changes or st["w"] <= 0.0:
            return 0.0
        since = ts - st["c"]
        if since < self.p.stuck_min_h * 3600.0:
            return 0.0
        return float(st["e"] / st["w"] * since / self.p.stuck_expected_changes)

    def step(self, occupied: float, ts: float) -> float:
        st = self.state
        score = self._score(occupied, ts)
        if st["o"] is None:
            st["o"], st["c"], st["t"] = occupied, ts, ts
        else:
            changed = occupied != st["o"]
            dt = ts - st["t"]
            dt = 0.0 if dt < 0.0 else _MAX_GAP_S if dt > _MAX_GAP_S else dt
            decay = 1.0 - dt / _RATE_TAU_S  # exp(-dt/tau) to 2e-6 for dt up to an hour
            # a silence longer than usual (8 mean gaps, at least 6 h) is not taught as quiet time
            quiet_limit = 8.0 * st["w"] / st["e"] if st["e"] > 0 else 0.0
            learn_time = ts - st["c"] <= (quiet_limit if quiet_limit > _QUIET_MIN_S else _QUIET_MIN_S)
            st["e"] = st["e"] * decay + changed
            if learn_time or changed:
                st["w"] = st["w"] * decay + dt
            if changed:
                st["o"], st["c"] = occupied, ts
                if st["k"] < 1000:
                    st["k"] += 1
            st["t"] = ts
        self.baseline.bind(st["b"]).update(occupied, ts)
        return score

    def learn_one(self, x: Mapping[str, Any]) -> None:
        found = _occupied(x)
        if found is not None:
            self.step(*found)

    def score_one(self, x: Mapping[str, Any]) -> float:
        found = _occupied(x)
        return self._score(*found) if found is not None else 0.0

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        occupied = reading.values.get("occupied")
        if occupied is None:
            return None
        st = self.bind_device(state)
        score = self.step(1.0 if occupied else 0.0, reading.ts)
        self.last_score = score / (score + 1.0)
        if score >= 1.0:
            st["a"] = 1
            hours = (reading.ts - st["c"]) / 3600.0
            return Finding(self.name, True, "warning", bool(occupied), None,
                           f"sensor fault: parking sensor reported {'occupied' if occupied else 'free'} "
                           f"without a change for {hours:.0f} h, unusual for this bay")
        if st["a"] and st["c"] == reading.ts:
            st["a"] = 0
            return Finding(self.name, False, value=bool(occupied))
        return None


class ParkingFlapping(LearnedRule):
    """`flap_changes` state changes within `flap_window_s`: faster than cars come and go, so a
    faulty sensor. Keeps the last `flap_changes` change times; clears after a quiet window."""

    name = "parking_flapping"
    kinds = frozenset({"parking"})
    key = "pfl"

    def __init__(self, params: ParkingParams | None = None) -> None:
        self.p = params or ParkingParams()
        self.state = self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {"o": None, "f": [], "a": 0}

    def _score(self, occupied: float, ts: float) -> float:
        st = self.state
        changes = st["f"]
        i = len(changes)
        while i > 0 and ts - changes[i - 1] <= self.p.flap_window_s:
            i -= 1
        recent = len(changes) - i + (st["o"] is not None and occupied != st["o"])
        return recent / self.p.flap_changes

    def step(self, occupied: float, ts: float) -> float:
        st = self.state
        score = self._score(occupied, ts)
        if st["o"] is not None and occupied != st["o"]:
            changes = st["f"]
            changes.append(ts)
            if len(changes) > self.p.flap_changes:
                del changes[0]
        st["o"] = occupied
        return score

    def learn_one(self, x: Mapping[str, Any]) -> None:
        found = _occupied(x)
        if found is not None:
            self.step(*found)

    def score_one(self, x: Mapping[str, Any]) -> float:
        found = _occupied(x)
        return self._score(*found) if found is not None else 0.0

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        occupied = reading.values.get("occupied")
        if occupied is None:
            return None
        st = self.bind_device(state)
        score = self.step(1.0 if occupied else 0.0, reading.ts)
        self.last_score = score / (score + 1.0)
        if score >= 1.0:
            st["a"] = 1
            return Finding(self.name, True, "warning", len(st["f"]), float(self.p.flap_changes),
                           f"sensor fault: parking sensor flapping, {self.p.flap_changes} changes within "
                           f"{self.p.flap_window_s / 60:g} min")
        if st["a"] and (not st["f"] or reading.ts - st["f"][-1] > self.p.flap_window_s):
            st["a"] = 0
            return Finding(self.name, False, value=bool(occupied))
        return None
