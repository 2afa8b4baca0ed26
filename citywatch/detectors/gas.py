"""Gas detector alarm levels (GB/T 50493-2019): level-1 (low) and level-2 (high), in %LEL.

A life-safety rule: a reading at a level opens (or raises) the alarm at once. A step faster than
physics allows marks the alarm suspect (see pipeline and plausibility.py); it never withholds it.
"""

from __future__ import annotations

from citywatch.detectors.anomaly import GasSlowRise
from citywatch.detectors.base import CompiledRule, LevelState, Verdict, found, threshold, track_level
from citywatch.detectors.kindrules import KindRules, RuleContext
from citywatch.detectors.record import DeviceRecord
from citywatch.kinds.gas import MIN_SPREAD, GasRules, GasSlowRiseParams
from citywatch.model import Device, Finding, Reading

_SEVERITY = ("", "warning", "critical")


class GasLevel(CompiledRule):
    """One alert per leak; its severity follows the level (level-2 raises it to critical)."""

    name = "gas_level"
    kinds = frozenset({"gas"})
    in_order_only = False
    v1_key = "gas.level"

    def __init__(self, rules: GasRules) -> None:
        self.rules = rules

    def fresh(self) -> LevelState:
        return LevelState()

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: LevelState) -> Verdict:
        lel = reading.values["lel_pct"]
        limits = (threshold(device, "gas.level1_pct", self.rules.level1_pct),
                  threshold(device, "gas.level2_pct", self.rules.level2_pct))
        level = track_level(reading, record, state, lel, limits, self.rules.hysteresis_pct)
        if level is None:
            return None, 0.0
        if level == 0:
            return Finding(self.name, False, value=lel), 0.0
        return found(Finding(self.name, True, _SEVERITY[level], lel, limits[level - 1],
                       f"combustible gas at {lel:g}% LEL (level-{level} alarm at {limits[level - 1]:g}%)"))


def rules(ctx: RuleContext) -> KindRules:
    """Gas's rules (KindSpec.rules): the alarm levels; gas rising below them."""
    gas = ctx.section(GasRules)
    return KindRules([GasLevel(gas)],
                     [GasSlowRise(ctx.baseline("lel_pct", MIN_SPREAD), ctx.learned(GasSlowRiseParams), gas.level1_pct)])
