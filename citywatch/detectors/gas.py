"""Gas detector alarm levels (GB/T 50493-2019): level-1 (low) and level-2 (high), in %LEL."""

from __future__ import annotations

from citywatch.config import GasRules
from citywatch.detectors.base import DeviceState, implausible_rise, level_with_hysteresis, threshold
from citywatch.model import Device, Finding, Reading

_SEVERITY = ("", "warning", "critical")


class GasLevel:
    """One alert per leak; its severity follows the level (level-2 raises it to critical)."""

    name = "gas_level"
    kinds = frozenset({"gas"})

    def __init__(self, rules: GasRules, max_step_per_min: float = float("inf")) -> None:
        self.rules = rules
        self.max_step_per_min = max_step_per_min

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        lel = reading.values["lel_pct"]
        if implausible_rise(state, "gas.prev", lel, reading.ts, self.max_step_per_min) and not state.get("gas.level"):
            return None  # a jump no gas cloud makes: sensor_jump reports it; the next reading confirms a leak
        limits = (threshold(device, "gas.level1_pct", self.rules.level1_pct),
                  threshold(device, "gas.level2_pct", self.rules.level2_pct))
        level = level_with_hysteresis(lel, state.get("gas.level", 0), limits, self.rules.hysteresis_pct)
        state["gas.level"] = level
        if level == 0:
            return Finding(self.name, False, value=lel)
        return Finding(self.name, True, _SEVERITY[level], lel, limits[level - 1],
                       f"combustible gas at {lel:g}% LEL (level-{level} alarm at {limits[level - 1]:g}%)")
