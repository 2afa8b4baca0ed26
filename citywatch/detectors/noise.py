"""Environmental noise limits by functional zone and day/night (GB 3096-2008)."""

from __future__ import annotations

from citywatch.config import NoiseRules
from citywatch.detectors.base import QUIET, CompiledRule, Verdict, found, threshold
from citywatch.detectors.baseline import LocalTime
from citywatch.detectors.record import DeviceRecord
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
