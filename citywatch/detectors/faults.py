"""Sensor faults on the numeric kinds, reported as faults (`sensor_stuck`, `sensor_jump`) and not
as the condition the sensor measures: stuck at one value, or jumping faster than physics allows."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from citywatch.detectors.base import DeviceState
from citywatch.detectors.baseline import LearnedRule, field_ts
from citywatch.detectors.plausibility import Plausibility
from citywatch.model import Device, Finding, Reading

_P_MIN, _P_MAX = 1e-3, 0.999
_N_CAP = 1000


class SensorStuck(LearnedRule):
    """The same value, exactly, `min_run` readings in a row over at least `min_duration_s`, when
    this device's learned chance of repeating a value makes such a run less likely than `p_tail`.

    A device whose value rarely changes learns a high repeat chance and is not flagged; the
    kind's rest value (0 %LEL in clean air, a dry road) never counts as stuck. A run is learned
    from until it is half as surprising as the alert threshold, no further. State: last value, run length and start,
    repeat chance, readings learned."""

    name = "sensor_stuck"
    key = "stuck"

    def __init__(self, kind: str, field: str, *, rest: float | None = None, min_run: int = 30,
                 min_duration_s: float = 1800.0, p_tail: float = 1e-6, warmup: int = 60) -> None:
        self.kinds = frozenset({kind})
        self.field = field
        self.rest = rest
        self.min_run = min_run
        self.min_duration_s = min_duration_s
        self.bits = -math.log10(p_tail)
        self.warmup = warmup
        self.state = self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {"v": None, "r": 0, "t": 0.0, "p": 0.5, "n": 0}

    def _surprise(self, run: int) -> float:
        """-log10 P(a run this long) under the learned repeat chance, in units of `p_tail`."""
        p = min(max(self.state["p"], _P_MIN), _P_MAX)
        return (run - 1) * -math.log10(p) / self.bits

    def _score(self, value: float, run: int, duration: float) -> float:
        """The run's surprise (>= 1 alerts); 0 when it may not alert."""
        if (value == self.rest or self.state["n"] < self.warmup or run < self.min_run
                or duration < self.min_duration_s):
            return 0.0
        return self._surprise(run)

    def _run(self, value: float, ts: float) -> tuple[int, float]:
        st = self.state
        if st["v"] is not None and value == st["v"]:
            return st["r"] + 1, ts - st["t"]
        return 1, 0.0

    def step(self, value: float, ts: float) -> float:
        st = self.state
        run, duration = self._run(value, ts)
        if run == 1:
            st["v"] = value
            st["t"] = ts
        st["r"] = run
        score = self._score(value, run, duration)
        if value != self.rest and self._surprise(run) < 0.5:
            n = st["n"]
            st["p"] += ((1.0 if run > 1 else 0.0) - st["p"]) / (n + 2 if n < 98 else 100)
            if n < _N_CAP:
                st["n"] = n + 1
        return score

    def score_one(self, x: Mapping[str, Any]) -> float:
        found = field_ts(x, self.field)
        if found is None:
            return 0.0
        run, duration = self._run(*found)
        return self._score(found[0], run, duration)

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        value = reading.values.get(self.field)
        if value is None:
            return None
        st = self.bind_device(state)
        score = self.step(value, reading.ts)
        self.last_score = score / (score + 1.0)
        if score >= 1.0:
            return Finding(self.name, True, "warning", value, None,
                           f"sensor fault suspected: {self.field} stuck at {value:g} for {st['r']} readings "
                           f"({(reading.ts - st['t']) / 60:.0f} min)")
        if st["r"] == 1:
            return Finding(self.name, False, value=value)
        return None


class SensorJump(LearnedRule):
    """A change faster than the kind's plausibility limit (plausibility.py): not something the
    measured world does, so a suspected sensor fault. Always on, learned detectors or not: it is
    physics, not learning. Clears after `clear_after` plausible readings. State: last value and
    time, plausible readings since the last jump, whether a jump is open."""

    name = "sensor_jump"
    key = "jump"

    def __init__(self, kind: str, field: str, plausibility: Plausibility, *, clear_after: int = 10) -> None:
        self.kinds = frozenset({kind})
        self.field = field
        self.plausibility = plausibility
        limit = plausibility.limit(kind)
        self.max_step = limit if limit is not None else math.inf
        self.clear_after = clear_after
        self.state = self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {"v": None, "t": 0.0, "q": 0, "j": 0}

    def _score(self, value: float, ts: float) -> tuple[float, float]:
        """(change / allowed change, allowed change); 0 for the first reading."""
        st = self.state
        if st["v"] is None:
            return 0.0, 0.0
        return self.plausibility.step_ratio(self.max_step, st["v"], st["t"], value, ts)

    def step(self, value: float, ts: float) -> tuple[float, float]:
        st = self.state
        score, allowed = self._score(value, ts)
        st["v"] = value
        st["t"] = ts
        if score > 1.0:
            st["q"] = 0
            st["j"] = 1
        elif st["q"] < self.clear_after:
            st["q"] += 1
        return score, allowed

    def score_one(self, x: Mapping[str, Any]) -> float:
        found = field_ts(x, self.field)
        return self._score(*found)[0] if found is not None else 0.0

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        value = reading.values.get(self.field)
        if value is None:
            return None
        st = self.bind_device(state)
        last = st["v"]
        score, allowed = self.step(value, reading.ts)
        self.last_score = score / (score + 1.0)
        if score > 1.0:
            return Finding(self.name, True, "warning", value, allowed,
                           f"sensor fault suspected: {self.field} jumped from {last:g} to {value:g}, "
                           f"more than the {allowed:g} physically plausible")
        if st["j"] and st["q"] >= self.clear_after:
            st["j"] = 0
            return Finding(self.name, False, value=value)
        return None
