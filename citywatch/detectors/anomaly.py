"""Learned detectors for the measured kinds, beyond their fixed thresholds: gas rising below the
alarm level, a street louder than its own normal at night though under the limit, water rising
fast before it reaches a level. Each owns the device's seasonal baseline of its field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from citywatch.detectors.base import DeviceState, threshold
from citywatch.detectors.baseline import LearnedRule, SeasonalBaseline, field_ts, squash
from citywatch.detectors.noise import NoiseLimit
from citywatch.detectors.settings import GasSlowRiseParams, NoiseNightParams, WaterRiseParams
from citywatch.model import Device, Finding, Reading

_FAST_S, _SLOW_S = 600.0, 1800.0  # EW time constants whose gap measures the slope
_MAX_DT_S = 1800.0


class GasSlowRise(LearnedRule):
    """%LEL above this device's normal for the hour and day type, accumulated by a one-sided
    CUSUM of the robust z (each reading adds at most 10 - k, so one spike cannot open it), at
    least `min_excess_pct` above normal, still rising, and below the level-1 alarm (above it the
    level alarm speaks; this one neither opens nor clears there). Clears when the gas is back
    within half the excess of normal. While accumulating it does not teach its baseline."""

    name = "gas_slow_rise"
    kinds = frozenset({"gas"})
    key = "gsr"
    field = "lel_pct"

    def __init__(self, baseline: SeasonalBaseline, params: GasSlowRiseParams | None = None,
                 level1_pct: float = 25.0) -> None:
        self.baseline = baseline
        self.p = params or GasSlowRiseParams()
        self.level1_pct = level1_pct
        self.state = self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {"b": self.baseline.fresh(), "c": 0.0, "f": None, "s": 0.0, "t": 0.0, "a": 0}

    def _assess(self, value: float, ts: float, where: tuple[int, int, float] | None = None,
                ) -> tuple[float, float, float, float, float]:
        """(cusum after this value, excess over normal, slope in %LEL/h, fast EW, slow EW), no learning."""
        st = self.state
        baseline = self.baseline.bind(st["b"])
        found = baseline.expect_at(where if where is not None else baseline.locate(ts))
        if found is None:
            cusum, excess = 0.0, 0.0
        else:
            excess = value - found[0]
            z = excess / found[1]
            cusum = st["c"] + (z if z < 10.0 else 10.0) - self.p.z_allowance
            cusum = cusum if cusum > 0.0 else 0.0
        fast = st["f"]
        if fast is None:
            return cusum, excess, 0.0, value, value
        dt = ts - st["t"]
        dt = 0.0 if dt < 0.0 else _MAX_DT_S if dt > _MAX_DT_S else dt
        fast += dt / (dt + _FAST_S) * (value - fast)  # EW weights for irregular timestamps
        slow = st["s"] + dt / (dt + _SLOW_S) * (value - st["s"])
        return cusum, excess, (fast - slow) * 3600.0 / (_SLOW_S - _FAST_S), fast, slow

    def step(self, value: float, ts: float) -> tuple[float, float, float]:
        """Score (cusum / h), excess and slope; then learn."""
        st = self.state
        where = self.baseline.bind(st["b"]).locate(ts)
        cusum, excess, slope, st["f"], st["s"] = self._assess(value, ts, where)
        st["t"] = ts
        st["c"] = cusum
        flagged = st["a"] == 1 or cusum > self.p.cusum_h / 4
        self.baseline.update(value, ts, flagged, where)
        return cusum / self.p.cusum_h, excess, slope

    def score_one(self, x: Mapping[str, Any]) -> float:
        found = field_ts(x, self.field)
        return self._assess(*found)[0] / self.p.cusum_h if found is not None else 0.0

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        value = reading.values.get(self.field)
        if value is None:
            return None
        st = self.bind_device(state)
        score, excess, slope = self.step(value, reading.ts)
        self.last_score = squash(score, 1.0)
        if value >= threshold(device, "gas.level1_pct", self.level1_pct):
            return None
        p = self.p
        if st["a"]:
            if excess < p.min_excess_pct / 2:
                st["a"] = 0
                st["c"] = 0.0
                return Finding(self.name, False, value=value)
        elif not (score >= 1.0 and excess >= p.min_excess_pct and slope >= p.min_slope_pct_h):
            return None
        st["a"] = 1
        return Finding(self.name, True, "warning", value, None,
                       f"gas rising below the alarm level: {value:g}% LEL, {excess:.1f} above this "
                       f"detector's normal for the hour")


class NoiseUnusualNight(LearnedRule):
    """At night, LAeq `z` spreads and `min_excess_db` above this street's normal for the hour,
    for `sustain` readings in a row, though under the legal limit (over it, the limit rule
    speaks and this one holds). Clears at half those margins, or when the day begins."""

    name = "noise_unusual_night"
    kinds = frozenset({"noise"})
    key = "nun"
    field = "laeq_db"

    def __init__(self, baseline: SeasonalBaseline, limit_rule: NoiseLimit,
                 params: NoiseNightParams | None = None) -> None:
        self.baseline = baseline
        self.limit_rule = limit_rule
        self.p = params or NoiseNightParams()
        self.state = self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {"b": self.baseline.fresh(), "k": 0, "a": 0}

    def _assess(self, value: float, ts: float, where: tuple[int, int, float] | None = None,
                ) -> tuple[float, float]:
        """(score: the smaller of z / z_min and excess / excess_min, excess); 0 by day or cold."""
        if not self.limit_rule.is_night(ts):
            return 0.0, 0.0
        baseline = self.baseline.bind(self.state["b"])
        found = baseline.expect_at(where if where is not None else baseline.locate(ts))
        if found is None:
            return 0.0, 0.0
        excess = value - found[0]
        p = self.p
        score = min(excess / found[1] / p.z, excess / p.min_excess_db if p.min_excess_db > 0 else math.inf)
        return (score if score > 0.0 else 0.0), excess

    def step(self, value: float, ts: float, limit: float = math.inf) -> float:
        st = self.state
        where = self.baseline.bind(st["b"]).locate(ts)
        score, _ = self._assess(value, ts, where)
        over = value > limit
        st["k"] = st["k"] + 1 if score >= 1.0 and not over else 0
        self.baseline.update(value, ts, None if score < 0.5 and not over else True, where)
        return score

    def score_one(self, x: Mapping[str, Any]) -> float:
        found = field_ts(x, self.field)
        return self._assess(*found)[0] if found is not None else 0.0

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        value = reading.values.get(self.field)
        if value is None:
            return None
        st = self.bind_device(state)
        night = self.limit_rule.is_night(reading.ts)
        limit = self.limit_rule.limit(device, night)
        score = self.step(value, reading.ts, limit)
        self.last_score = squash(score, 1.0)
        if value > limit:
            return None
        if st["k"] >= self.p.sustain or (st["a"] and score >= 0.5):
            st["a"] = 1
            return Finding(self.name, True, "warning", value, None,
                           f"LAeq {value:g} dB(A) at night: far above this street's normal for the hour, "
                           f"under the limit {limit:g} dB(A)")
        if st["a"]:
            st["a"] = 0
            return Finding(self.name, False, value=value)
        return None


class WaterFastRise(LearnedRule):
    """Depth rising at least `rise_cm_per_10min`, measured over `min_span_s` to `window_s`, and
    `z` spreads beyond this gauge's normal 10-minute change, before the severe level (at and
    above it the level alarm speaks; this one holds). Clears when the rise slows to half the
    rate. Keeps at most 17 (ts, depth) samples, spaced a sixteenth of the window apart; also
    learns the gauge's seasonal depth baseline."""

    name = "water_fast_rise"
    kinds = frozenset({"water"})
    key = "wfr"
    field = "depth_cm"
    min_rate_spread = 0.5  # cm per 10 min: a gauge that never moves still needs a real rise

    def __init__(self, baseline: SeasonalBaseline, params: WaterRiseParams | None = None,
                 severe_cm: float = 25.0) -> None:
        self.baseline = baseline
        self.p = params or WaterRiseParams()
        self.severe_cm = severe_cm
        self.state = self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {"b": self.baseline.fresh(), "ts": [], "d": [], "m": 0.0, "n": 0, "a": 0}

    def _rate(self, value: float, ts: float) -> float | None:
        """Rise in cm per 10 min against the oldest sample within the window, if old enough."""
        st = self.state
        times = st["ts"]
        p = self.p
        for i, t in enumerate(times):
            age = ts - t
            if age <= p.window_s:
                return (value - st["d"][i]) * 600.0 / age if age >= p.min_span_s else None
        return None

    def _score(self, rate: float | None) -> float:
        st = self.state
        if rate is None or st["n"] < self.p.warmup or rate <= 0.0:
            return 0.0
        spread = 1.2533 * st["m"]
        spread = spread if spread > self.min_rate_spread else self.min_rate_spread
        return min(rate / self.p.rise_cm_per_10min, rate / spread / self.p.z)

    def step(self, value: float, ts: float) -> tuple[float, float]:
        """(score, rise in cm per 10 min); then learn."""
        st = self.state
        times, depths = st["ts"], st["d"]
        while times and ts - times[0] > self.p.window_s:
            del times[0]
            del depths[0]
        age = ts - times[0] if times else 0.0
        rate = (value - depths[0]) * 600.0 / age if age >= self.p.min_span_s else None
        score = self._score(rate)
        if not times or ts - times[-1] >= self.p.window_s / 16:
            times.append(ts)
            depths.append(value)
        if rate is not None and score < 0.5 and not st["a"]:
            n = st["n"]
            st["m"] += (abs(rate) - st["m"]) / (n + 1 if n < 99 else 100)
            if n < 1000:
                st["n"] = n + 1
        self.baseline.bind(st["b"]).update(value, ts, True if score >= 0.5 else None)
        return score, rate or 0.0

    def score_one(self, x: Mapping[str, Any]) -> float:
        found = field_ts(x, self.field)
        return self._score(self._rate(*found)) if found is not None else 0.0

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        value = reading.values.get(self.field)
        if value is None:
            return None
        st = self.bind_device(state)
        score, rate = self.step(value, reading.ts)
        self.last_score = squash(score, 1.0)
        if value >= threshold(device, "water.severe_cm", self.severe_cm):
            return None
        if score >= 1.0 or (st["a"] and score >= 0.5):
            st["a"] = 1
            return Finding(self.name, True, "warning", value, self.p.rise_cm_per_10min,
                           f"water rising fast: {value:g} cm, up {rate:.1f} cm per 10 min")
        if st["a"]:
            st["a"] = 0
            return Finding(self.name, False, value=value)
        return None
