"""Road waterlogging levels: light, moderate, severe (vehicles stall above ~25 cm).

A life-safety rule: a reading at a level opens (or raises) the alert at once. A step faster than
water rises marks the alert suspect (see pipeline and plausibility.py); it never withholds it.
"""

from __future__ import annotations

from citywatch.detectors.anomaly import WaterFastRise
from citywatch.detectors.base import CompiledRule, LevelState, Verdict, found, threshold, track_level
from citywatch.detectors.kindrules import KindRules, RuleContext
from citywatch.detectors.record import DeviceRecord
from citywatch.kinds.water import MIN_SPREAD, WaterRiseParams, WaterRules
from citywatch.model import Device, Finding, Reading

_LEVELS = ("", "light", "moderate", "severe")
_SEVERITY = ("", "info", "warning", "critical")


class WaterDepth(CompiledRule):
    name = "water_depth"
    kinds = frozenset({"water"})
    in_order_only = False
    v1_key = "water.level"

    def __init__(self, rules: WaterRules) -> None:
        self.rules = rules

    def fresh(self) -> LevelState:
        return LevelState()

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: LevelState) -> Verdict:
        depth = reading.values["depth_cm"]
        limits = (threshold(device, "water.light_cm", self.rules.light_cm),
                  threshold(device, "water.moderate_cm", self.rules.moderate_cm),
                  threshold(device, "water.severe_cm", self.rules.severe_cm))
        level = track_level(reading, record, state, depth, limits, self.rules.hysteresis_cm)
        if level is None:
            return None, 0.0
        if level == 0:
            return Finding(self.name, False, value=depth), 0.0
        return found(Finding(self.name, True, _SEVERITY[level], depth, limits[level - 1],
                       f"{_LEVELS[level]} waterlogging: {depth:g} cm (from {limits[level - 1]:g} cm)"))


def rules(ctx: RuleContext) -> KindRules:
    """Water's rules (KindSpec.rules): the depth levels; water rising fast before them."""
    water = ctx.section(WaterRules)
    return KindRules([WaterDepth(water)],
                     [WaterFastRise(ctx.baseline("depth_cm", MIN_SPREAD), ctx.learned(WaterRiseParams),
                                    water.severe_cm)])
