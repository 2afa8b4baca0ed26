"""Learned device-health detectors for every kind: the reporting interval drifting far from this
device's own, and the battery draining far faster than this device's own normal."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from citywatch.detectors.base import DeviceState
from citywatch.detectors.baseline import LearnedRule, field_ts
from citywatch.detectors.settings import HealthParams
from citywatch.model import KINDS, Device, Finding, Reading

_GAP_LOG = math.log(20.0)  # a gap this many times the usual interval is the deadman's business
_N_CAP = 1000


class ReportingInterval(LearnedRule):
    """A recent average of log(interval) (EW, weight `interval_alpha`) `interval_factor` times
    away from this device's long-run one (learned only from unflagged intervals, after
    `interval_warmup` of them): a device chattering or sleeping. Gaps over 20 usual intervals
    are left to the offline detector. Clears at half the margin."""

    name = "reporting_interval"
    kinds = frozenset(KINDS)
    key = "rint"

    def __init__(self, params: HealthParams | None = None) -> None:
        self.p = params or HealthParams()
        self.margin = math.log(self.p.interval_factor)
        self.state = self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {"t": None, "l": 0.0, "f": 0.0, "n": 0, "a": 0}

    def _assess(self, ts: float) -> tuple[float, float, float] | None:
        """(score, recent log-interval after this reading, this log-interval), None if unusable."""
        st = self.state
        if st["t"] is None or ts <= st["t"]:
            return None
        log_dt = math.log(max(ts - st["t"], 0.5))
        if st["n"] == 0:
            return 0.0, log_dt, log_dt
        if log_dt - st["l"] > _GAP_LOG:
            return None
        recent = st["f"] + self.p.interval_alpha * (log_dt - st["f"])
        score = abs(recent - st["l"]) / self.margin if st["n"] >= self.p.interval_warmup else 0.0
        return score, recent, log_dt

    def step(self, ts: float) -> float | None:
        """The score of this interval, None when it is not usable (the first, a repeat, a gap)."""
        st = self.state
        found = self._assess(ts)
        if found is None:
            if st["t"] is None or ts > st["t"]:
                st["t"] = ts
            return None
        score, st["f"], log_dt = found
        st["t"] = ts
        n = st["n"]
        if n == 0:
            st["l"] = log_dt
        elif score < 0.5 and not st["a"]:
            st["l"] += (log_dt - st["l"]) / (n + 1 if n < 199 else 200)
        if n < _N_CAP and (n == 0 or score < 0.5):
            st["n"] = n + 1
        return score

    def learn_one(self, x: Mapping[str, Any]) -> None:
        ts = x.get("ts")
        if isinstance(ts, (int, float)):
            self.step(float(ts))

    def score_one(self, x: Mapping[str, Any]) -> float:
        ts = x.get("ts")
        found = self._assess(float(ts)) if isinstance(ts, (int, float)) else None
        return found[0] if found is not None else 0.0

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        st = self.bind_device(state)
        score = self.step(reading.ts)
        if score is None:
            return None
        self.last_score = score / (score + 1.0)
        if score >= 1.0 or (st["a"] and score >= 0.5):
            st["a"] = 1
            return Finding(self.name, True, "warning", round(math.exp(st["f"]), 1), None,
                           f"reporting about every {math.exp(st['f']):.0f} s, usually every "
                           f"{math.exp(st['l']):.0f} s")
        if st["a"]:
            st["a"] = 0
            return Finding(self.name, False)
        return None


class BatteryDrain(LearnedRule):
    """Battery drain (%/day) measured over spans of `drain_span_h`, at least `drain_factor` times
    this device's learned drain and at least `drain_min_pct_day`, after `drain_warmup` spans.
    A rise (replaced, charged) or a one-step drop of over 10 points restarts the span without
    learning (the low-battery rule covers the level). Clears with the next normal span."""

    name = "battery_drain"
    kinds = frozenset(KINDS)
    key = "bdr"
    field = "battery"

    def __init__(self, params: HealthParams | None = None) -> None:
        self.p = params or HealthParams()
        self.span_s = self.p.drain_span_h * 3600.0
        self.state = self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {"t": None, "b": 0.0, "l": 0.0, "m": 0.0, "n": 0, "a": 0}

    def _assess(self, battery: float, ts: float) -> tuple[float, float] | None:
        """(score, drain %/day) when a span completes with this reading, else None."""
        st = self.state
        if st["t"] is None or battery > st["b"] + 2.0 or st["l"] - battery > 10.0:
            return None
        span = ts - st["t"]
        if span < self.span_s:
            return None
        drain = (st["b"] - battery) / span * 86400.0
        if st["n"] < self.p.drain_warmup:
            return 0.0, drain
        limit = max(self.p.drain_factor * st["m"], self.p.drain_min_pct_day)
        return drain / limit, drain

    def step(self, battery: float, ts: float) -> tuple[float, float] | None:
        st = self.state
        found = self._assess(battery, ts)
        restart = st["t"] is None or battery > st["b"] + 2.0 or st["l"] - battery > 10.0
        st["l"] = battery
        if restart:
            st["t"], st["b"] = ts, battery
            return None
        if found is None:
            return None
        score, drain = found
        if score < 1.0:
            n = st["n"]
            st["m"] += (max(drain, 0.0) - st["m"]) / (n + 1 if n < 9 else 10)
            if n < _N_CAP:
                st["n"] = n + 1
        st["t"], st["b"] = ts, battery
        return found

    def score_one(self, x: Mapping[str, Any]) -> float:
        found = field_ts(x, self.field)
        assessed = self._assess(*found) if found is not None else None
        return assessed[0] if assessed is not None else 0.0

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        battery = reading.battery
        if battery is None:
            return None
        st = self.bind_device(state)
        found = self.step(battery, reading.ts)
        if found is None:
            return None
        score, drain = found
        self.last_score = score / (score + 1.0) if score > 0 else 0.0
        if score >= 1.0:
            st["a"] = 1
            return Finding(self.name, True, "warning", round(drain, 1), None,
                           f"battery draining {drain:.1f}%/day, usually {st['m']:.1f}%/day")
        if st["a"]:
            st["a"] = 0
            return Finding(self.name, False, value=round(drain, 1))
        return None
