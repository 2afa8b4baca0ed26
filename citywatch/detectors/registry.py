"""The set of rules the pipeline runs, built from settings once, from each kind's declaration."""

from __future__ import annotations

import importlib

from citywatch.config import Settings
from citywatch.detectors.base import Rule
from citywatch.detectors.baseline import LocalTime
from citywatch.detectors.faults import SensorJump, SensorStuck
from citywatch.detectors.generic_rule import GenericAnomaly
from citywatch.detectors.health import BatteryLow
from citywatch.detectors.kindrules import KindRules, RuleContext
from citywatch.detectors.plausibility import Plausibility
from citywatch.detectors.reporting import BatteryDrain, ReportingInterval
from citywatch.kinds import specs

# Fault rules run first on each reading, so the pipeline can mark an alarm found on the same
# reading as suspect (fail safe: a suspected fault is information on the alarm, never a veto).
FAULT_RULES = frozenset({"sensor_jump", "sensor_stuck"})


def numeric_fields() -> dict[str, tuple[str, float]]:
    """kind -> (the field its fault detectors watch, the smallest spread its baseline assumes)."""
    return {name: (kind.measure.field, kind.measure.min_spread) for name, kind in specs().items()
            if kind.measure is not None}


def build_rules(settings: Settings) -> dict[str, list[Rule]]:
    """Rules per kind, in evaluation order: sensor faults, the kind's fixed thresholds, battery, the
    kind's learned detectors, reporting and battery drain, the generic detector where configured."""
    r = settings.rules
    learned = r.learned
    plausibility = Plausibility(r.plausibility.max_step_per_min, r.plausibility.min_elapsed_s)
    context = RuleContext(settings, LocalTime(settings.timezone))
    f, g = learned.faults, learned.generic
    battery, reporting, drain = BatteryLow(r.health), ReportingInterval(learned.health), BatteryDrain(learned.health)
    out: dict[str, list[Rule]] = {}
    for name, kind in specs().items():
        made: KindRules = importlib.import_module(kind.rules).rules(context) if kind.rules else KindRules([])
        rules: list[Rule] = []
        if kind.measure is not None and plausibility.limit(name) is not None:
            rules.append(SensorJump(name, kind.measure.field, plausibility,
                                    clear_after=r.plausibility.jump_clear_after))
        rules += [*made.fixed, battery]
        if learned.enabled:
            if kind.measure is not None:
                rules.append(SensorStuck(name, kind.measure.field, rest=f.rest_value.get(name),
                                         min_run=f.stuck_min_run, min_duration_s=f.stuck_min_duration_s,
                                         p_tail=f.stuck_p_tail, warmup=f.stuck_warmup))
            rules += [*made.learned, reporting, drain]
            if name in g.fields:  # the generic detector, only on the fields config.yaml names (off by default)
                rules.append(GenericAnomaly(name, g.fields[name], clear_after=g.clear_after))
        rules.sort(key=lambda rule: rule.name not in FAULT_RULES)  # stable: faults first, order kept
        out[name] = rules
    return out
