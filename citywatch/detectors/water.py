"""Road waterlogging levels: light, moderate, severe (vehicles stall above ~25 cm)."""

from __future__ import annotations

from citywatch.config import WaterRules
from citywatch.detectors.base import DeviceState, implausible_rise, level_with_hysteresis, threshold
from citywatch.model import Device, Finding, Reading

_LEVELS = ("", "light", "moderate", "severe")
_SEVERITY = ("", "info", "warning", "critical")


class WaterDepth:
    name = "water_depth"
    kinds = frozenset({"water"})

    def __init__(self, rules: WaterRules, max_step_per_min: float = float("inf")) -> None:
        self.rules = rules
        self.max_step_per_min = max_step_per_min

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        depth = reading.values["depth_cm"]
        if implausible_rise(state, "water.prev", depth, reading.ts, self.max_step_per_min) \
                and not state.get("water.level"):
            return None  # water does not rise this fast: sensor_jump reports it; the next reading confirms
        limits = (threshold(device, "water.light_cm", self.rules.light_cm),
                  threshold(device, "water.moderate_cm", self.rules.moderate_cm),
                  threshold(device, "water.severe_cm", self.rules.severe_cm))
        level = level_with_hysteresis(depth, state.get("water.level", 0), limits, self.rules.hysteresis_cm)
        state["water.level"] = level
        if level == 0:
            return Finding(self.name, False, value=depth)
        return Finding(self.name, True, _SEVERITY[level], depth, limits[level - 1],
                       f"{_LEVELS[level]} waterlogging: {depth:g} cm (from {limits[level - 1]:g} cm)")
