"""Learned detectors for the measured kinds, beyond their fixed thresholds: gas rising below the
alarm level, water rising fast before it reaches a level (the noise one, a street louder than its
own normal at night, is in noise.py). Each owns the device's seasonal baseline of its field."""

from __future__ import annotations

from array import array
from typing import Final

from citywatch.detectors.base import QUIET, Verdict, threshold
from citywatch.detectors.baseline import BaselineState, LearnedRule, SeasonalBaseline, squash
from citywatch.detectors.record import UNSET, DeviceRecord, RuleState, known
from citywatch.kinds.gas import GasSlowRiseParams
from citywatch.kinds.water import WaterRiseParams
from citywatch.model import Device, Finding, Reading

_FAST_S: Final = 600.0  # EW time constants whose gap measures the slope
_SLOW_S: Final = 1800.0
_MAX_DT_S: Final = 1800.0


class SlowRiseState(RuleState):
    """The seasonal baseline; the CUSUM; fast and slow EW of the value (fast UNSET before the first)
    and the time of the last; alert open."""

    __slots__ = ("baseline", "cusum", "fast", "slow", "last", "open")
    FIELDS = ("baseline", "cusum", "fast", "slow", "last", "open")
    V1 = ("b", "c", "f", "s", "t", "a")

    def __init__(self, baseline: BaselineState) -> None:
        self.baseline = baseline
        self.cusum = 0.0
        self.fast = UNSET
        self.slow = 0.0
        self.last = 0.0
        self.open = 0


class RiseState(RuleState):
    """The seasonal baseline; up to 17 (time, depth) samples; EW mean absolute 10-minute rate and
    rates learned; alert open."""

    __slots__ = ("baseline", "times", "depths", "rate_mad", "learned", "open")
    FIELDS = ("baseline", "times", "depths", "rate_mad", "learned", "open")
    V1 = ("b", "ts", "d", "m", "n", "a")

    def __init__(self, baseline: BaselineState) -> None:
        self.baseline = baseline
        self.times = array("d")
        self.depths = array("d")
        self.rate_mad = 0.0
        self.learned = 0
        self.open = 0


class GasSlowRise(LearnedRule):
    """%LEL above this device's normal for the hour and day type, accumulated by a one-sided
    CUSUM of the robust z (each reading adds at most 10 - k, so one spike cannot open it), at
    least `min_excess_pct` above normal, still rising, and below the level-1 alarm (above it the
    level alarm speaks; this one neither opens nor clears there). Clears when the gas is back
    within half the excess of normal. While accumulating it does not teach its baseline."""

    name = "gas_slow_rise"
    kinds = frozenset({"gas"})
    v1_key = "gsr"
    field = "lel_pct"

    def __init__(self, baseline: SeasonalBaseline, params: GasSlowRiseParams | None = None,
                 level1_pct: float = 25.0) -> None:
        self.baseline = baseline
        self.p = params or GasSlowRiseParams()
        self.level1_pct = level1_pct

    def fresh(self) -> SlowRiseState:
        return SlowRiseState(self.baseline.fresh())

    def step(self, st: SlowRiseState, value: float, ts: float) -> tuple[float, float, float]:
        """Score (cusum / h), excess over normal and slope in %LEL/h; then learn."""
        where = self.baseline.locate(ts)
        expected = self.baseline.expect_at(st.baseline, where)
        if expected is None:
            cusum, excess = 0.0, 0.0
        else:
            excess = value - expected[0]
            z = excess / expected[1]
            cusum = st.cusum + (z if z < 10.0 else 10.0) - self.p.z_allowance
            cusum = cusum if cusum > 0.0 else 0.0
        fast = st.fast
        if not known(fast):
            slope, fast, slow = 0.0, value, value
        else:
            dt = ts - st.last
            dt = 0.0 if dt < 0.0 else _MAX_DT_S if dt > _MAX_DT_S else dt
            fast += dt / (dt + _FAST_S) * (value - fast)  # EW weights for irregular timestamps
            slow = st.slow + dt / (dt + _SLOW_S) * (value - st.slow)
            slope = (fast - slow) * 3600.0 / (_SLOW_S - _FAST_S)
        st.fast, st.slow, st.last, st.cusum = fast, slow, ts, cusum
        flagged = st.open == 1 or cusum > self.p.cusum_h / 4
        self.baseline.update(st.baseline, value, ts, flagged, where)
        return cusum / self.p.cusum_h, excess, slope

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: SlowRiseState) -> Verdict:
        value = reading.values.get(self.field)
        if value is None:
            return QUIET
        score, excess, slope = self.step(state, value, reading.ts)
        squashed = squash(score, 1.0)
        if value >= threshold(device, "gas.level1_pct", self.level1_pct):
            return None, squashed
        p = self.p
        if state.open:
            if excess < p.min_excess_pct / 2:
                state.open = 0
                state.cusum = 0.0
                return Finding(self.name, False, value=value), squashed
        elif not (score >= 1.0 and excess >= p.min_excess_pct and slope >= p.min_slope_pct_h):
            return None, squashed
        state.open = 1
        return Finding(self.name, True, "warning", value, None,
                       f"gas rising below the alarm level: {value:g}% LEL, {excess:.1f} above this "
                       f"detector's normal for the hour"), squashed


class WaterFastRise(LearnedRule):
    """Depth rising at least `rise_cm_per_10min`, measured over `min_span_s` to `window_s`, and
    `z` spreads beyond this gauge's normal 10-minute change, before the severe level (at and
    above it the level alarm speaks; this one holds). Clears when the rise slows to half the
    rate. Keeps at most 17 (ts, depth) samples, spaced a sixteenth of the window apart; also
    learns the gauge's seasonal depth baseline."""

    name = "water_fast_rise"
    kinds = frozenset({"water"})
    v1_key = "wfr"
    field = "depth_cm"
    min_rate_spread = 0.5  # cm per 10 min: a gauge that never moves still needs a real rise

    def __init__(self, baseline: SeasonalBaseline, params: WaterRiseParams | None = None,
                 severe_cm: float = 25.0) -> None:
        self.baseline = baseline
        self.p = params or WaterRiseParams()
        self.severe_cm = severe_cm

    def fresh(self) -> RiseState:
        return RiseState(self.baseline.fresh())

    def _score(self, st: RiseState, rate: float | None) -> float:
        if rate is None or st.learned < self.p.warmup or rate <= 0.0:
            return 0.0
        spread = 1.2533 * st.rate_mad
        spread = spread if spread > self.min_rate_spread else self.min_rate_spread
        return min(rate / self.p.rise_cm_per_10min, rate / spread / self.p.z)

    def step(self, st: RiseState, value: float, ts: float) -> tuple[float, float]:
        """(score, rise in cm per 10 min); then learn."""
        times, depths = st.times, st.depths
        while times and ts - times[0] > self.p.window_s:
            del times[0]
            del depths[0]
        age = ts - times[0] if times else 0.0
        rate = (value - depths[0]) * 600.0 / age if age >= self.p.min_span_s else None
        score = self._score(st, rate)
        if not times or ts - times[-1] >= self.p.window_s / 16:
            times.append(ts)
            depths.append(value)
        if rate is not None and score < 0.5 and not st.open:
            n = st.learned
            st.rate_mad += (abs(rate) - st.rate_mad) / (n + 1 if n < 99 else 100)
            if n < 1000:
                st.learned = n + 1
        self.baseline.update(st.baseline, value, ts, True if score >= 0.5 else None)
        return score, rate or 0.0

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: RiseState) -> Verdict:
        value = reading.values.get(self.field)
        if value is None:
            return QUIET
        score, rate = self.step(state, value, reading.ts)
        squashed = squash(score, 1.0)
        if value >= threshold(device, "water.severe_cm", self.severe_cm):
            return None, squashed
        if score >= 1.0 or (state.open and score >= 0.5):
            state.open = 1
            return Finding(self.name, True, "warning", value, self.p.rise_cm_per_10min,
                           f"water rising fast: {value:g} cm, up {rate:.1f} cm per 10 min"), squashed
        if state.open:
            state.open = 0
            return Finding(self.name, False, value=value), squashed
        return None, squashed
