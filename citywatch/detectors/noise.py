"""Environmental noise limits by functional zone and day/night (GB 3096-2008), and a street far louder
than its own normal at night though under the limit (learned)."""

from __future__ import annotations

import math

from citywatch.detectors.base import QUIET, CompiledRule, Verdict, found, threshold
from citywatch.detectors.baseline import BaselineState, LearnedRule, LocalTime, SeasonalBaseline, squash
from citywatch.detectors.kindrules import KindRules, RuleContext
from citywatch.detectors.record import DeviceRecord, RuleState
from citywatch.kinds.noise import MIN_SPREAD, NoiseNightParams, NoiseRules
from citywatch.model import Device, Finding, Reading


class NoiseLimit(CompiledRule):
    """LAeq over the zone's day or night limit; clears `hysteresis_db` below it."""

    name = "noise_limit"
    kinds = frozenset({"noise"})
    in_order_only = False
    v1_key = ""

    def fresh(self) -> None:
        return None

    def __init__(self, rules: NoiseRules, clock: LocalTime) -> None:
        self.rules = rules
        self.clock = clock

    def is_night(self, ts: float) -> bool:
        hour = self.clock.hour(ts)
        return not (self.rules.day_start_hour <= hour < self.rules.night_start_hour)

    def limit(self, device: Device, night: bool) -> float:
        zone = device.zone_class or self.rules.default_zone_class
        day_limit, night_limit = self.rules.limits.get(zone, self.rules.limits[self.rules.default_zone_class])
        if night:
            return threshold(device, "noise.night_db", night_limit)
        return threshold(device, "noise.day_db", day_limit)

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: None) -> Verdict:
        laeq = reading.values["laeq_db"]
        night = self.is_night(reading.ts)
        limit = self.limit(device, night)
        if laeq > limit:
            period = "night" if night else "day"
            return found(Finding(self.name, True, "warning", laeq, limit,
                                 f"LAeq {laeq:g} dB(A) over the {period} limit {limit:g} dB(A)"))
        if laeq <= limit - self.rules.hysteresis_db:
            return Finding(self.name, False, value=laeq), 0.0
        return QUIET


class NoiseNightBurst(CompiledRule):
    """At night a single event (LAmax) may not exceed the limit by more than 15 dB(A)."""

    name = "noise_night_burst"
    kinds = frozenset({"noise"})
    in_order_only = False
    v1_key = ""

    def fresh(self) -> None:
        return None

    def __init__(self, rules: NoiseRules, limit_rule: NoiseLimit) -> None:
        self.rules = rules
        self.limit_rule = limit_rule

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: None) -> Verdict:
        lamax = reading.values.get("lamax_db")
        if lamax is None:
            return QUIET
        if not self.limit_rule.is_night(reading.ts):
            return Finding(self.name, False, value=lamax), 0.0
        allowed = self.limit_rule.limit(device, True) + self.rules.night_burst_db
        if lamax > allowed:
            return found(Finding(self.name, True, "warning", lamax, allowed,
                                 f"night burst LAmax {lamax:g} dB(A) over {allowed:g} dB(A)"))
        if lamax <= allowed - self.rules.hysteresis_db:
            return Finding(self.name, False, value=lamax), 0.0
        return QUIET


class NightState(RuleState):
    """The seasonal baseline; unusual readings in a row; alert open."""

    __slots__ = ("baseline", "run", "open")
    FIELDS = ("baseline", "run", "open")
    V1 = ("b", "k", "a")

    def __init__(self, baseline: BaselineState) -> None:
        self.baseline = baseline
        self.run = 0
        self.open = 0


class NoiseUnusualNight(LearnedRule):
    """At night, LAeq `z` spreads and `min_excess_db` above this street's normal for the hour,
    for `sustain` readings in a row, though under the legal limit (over it, the limit rule
    speaks and this one holds). Clears at half those margins, or when the day begins."""

    name = "noise_unusual_night"
    kinds = frozenset({"noise"})
    v1_key = "nun"
    field = "laeq_db"

    def __init__(self, baseline: SeasonalBaseline, limit_rule: NoiseLimit,
                 params: NoiseNightParams | None = None) -> None:
        self.baseline = baseline
        self.limit_rule = limit_rule
        self.p = params or NoiseNightParams()

    def fresh(self) -> NightState:
        return NightState(self.baseline.fresh())

    def step(self, st: NightState, value: float, ts: float, limit: float = math.inf) -> float:
        """Score: the smaller of z / z_min and excess / excess_min (0 by day or while cold); then learn."""
        where = self.baseline.locate(ts)
        score = 0.0
        expected = self.baseline.expect_at(st.baseline, where) if self.limit_rule.is_night(ts) else None
        if expected is not None:
            excess = value - expected[0]
            p = self.p
            score = min(excess / expected[1] / p.z, excess / p.min_excess_db if p.min_excess_db > 0 else math.inf)
            score = score if score > 0.0 else 0.0
        over = value > limit
        st.run = st.run + 1 if score >= 1.0 and not over else 0
        self.baseline.update(st.baseline, value, ts, None if score < 0.5 and not over else True, where)
        return score

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: NightState) -> Verdict:
        value = reading.values.get(self.field)
        if value is None:
            return QUIET
        night = self.limit_rule.is_night(reading.ts)
        limit = self.limit_rule.limit(device, night)
        score = self.step(state, value, reading.ts, limit)
        squashed = squash(score, 1.0)
        if value > limit:
            return None, squashed
        if state.run >= self.p.sustain or (state.open and score >= 0.5):
            state.open = 1
            return Finding(self.name, True, "warning", value, None,
                           f"LAeq {value:g} dB(A) at night: far above this street's normal for the hour, "
                           f"under the limit {limit:g} dB(A)"), squashed
        if state.open:
            state.open = 0
            return Finding(self.name, False, value=value), squashed
        return None, squashed


def rules(ctx: RuleContext) -> KindRules:
    """Noise's rules (KindSpec.rules): the zone limits, night bursts; a street far above its normal at night."""
    noise_rules = ctx.section(NoiseRules)
    limit = NoiseLimit(noise_rules, ctx.clock)
    return KindRules([limit, NoiseNightBurst(noise_rules, limit)],
                     [NoiseUnusualNight(ctx.baseline("laeq_db", MIN_SPREAD), limit, ctx.learned(NoiseNightParams))])
