"""Residential smoke alarms in rented housing: the alarm, smoke building up below it, tamper.

Life safety first. `smoke_alarm` opens at the first reading that either says the alarm sounds or
measures obscuration at the alarm level (the measurement alone is enough: a device whose own alarm
logic or sounder failed still raises it). It is latched, like a fire panel: it stays open until a
person resolves it, because smoke that thins out does not mean the fire is out. A `test` event (the
button pressed) sounds the alarm on purpose: that alone opens nothing; obscuration at the alarm level
during a test still does. No plausibility limit: a flaming fire fills a room with smoke in seconds.
"""

from __future__ import annotations

from citywatch.detectors.base import CompiledRule, LevelState, Verdict, found, threshold, track_level
from citywatch.detectors.kindrules import KindRules, RuleContext
from citywatch.detectors.record import DeviceRecord
from citywatch.kinds.smoke import SmokeRules
from citywatch.model import Device, Finding, Reading

KINDS = frozenset({"smoke"})


class SmokeAlarm(CompiledRule):
    name = "smoke_alarm"
    kinds = KINDS
    in_order_only = False
    v1_key = ""

    def fresh(self) -> None:
        return None

    def __init__(self, rules: SmokeRules) -> None:
        self.rules = rules

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: None) -> Verdict:
        obscuration = reading.values["obscuration_pct_per_m"]
        limit = threshold(device, "smoke.alarm_pct_per_m", self.rules.alarm_pct_per_m)
        if obscuration >= limit:
            return found(Finding(self.name, True, "critical", obscuration, limit,
                                 f"smoke at {obscuration:g} %/m (alarm from {limit:g} %/m)", latched=True))
        if reading.values["alarm"] and reading.values.get("event") != "test":
            return found(Finding(self.name, True, "critical", obscuration, limit, "smoke alarm sounding",
                                 latched=True))
        return None, 0.0


class SmokeRising(CompiledRule):
    """Smoke building up below the alarm level (a smouldering fire, cooking smoke, a dirty chamber):
    a warning that lets a field team call or knock before the alarm sounds."""

    name = "smoke_rising"
    kinds = KINDS
    in_order_only = False
    v1_key = "smoke.level"

    def __init__(self, rules: SmokeRules) -> None:
        self.rules = rules

    def fresh(self) -> LevelState:
        return LevelState()

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: LevelState) -> Verdict:
        obscuration = reading.values["obscuration_pct_per_m"]
        limit = threshold(device, "smoke.pre_alarm_pct_per_m", self.rules.pre_alarm_pct_per_m)
        level = track_level(reading, record, state, obscuration, (limit,), self.rules.hysteresis_pct_per_m)
        if level is None:
            return None, 0.0
        if level == 0:
            return Finding(self.name, False, value=obscuration), 0.0
        return found(Finding(self.name, True, "warning", obscuration, limit,
                             f"smoke building up: {obscuration:g} %/m (pre-alarm from {limit:g} %/m)"))


class SmokeTamper(CompiledRule):
    """The alarm reports being opened or taken off its base: the home is unprotected. Latched."""

    name = "smoke_tamper"
    kinds = KINDS
    in_order_only = False
    v1_key = ""

    def fresh(self) -> None:
        return None

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: None) -> Verdict:
        if reading.values.get("event") == "tamper":
            return found(Finding(self.name, True, "warning", "tamper", None,
                                 "smoke alarm tampered with (removed from its base or opened)", latched=True))
        return None, 0.0


def smoke_rules(rules: SmokeRules) -> list[SmokeAlarm | SmokeRising | SmokeTamper]:
    return [SmokeAlarm(rules), SmokeRising(rules), SmokeTamper()]


def rules(ctx: RuleContext) -> KindRules:
    """Smoke's rules (KindSpec.rules): the alarm, smoke building up, tamper."""
    return KindRules(list(smoke_rules(ctx.section(SmokeRules))))
