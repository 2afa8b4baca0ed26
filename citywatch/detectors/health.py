"""Device health for every kind: low battery. (Offline detection runs on the clock in the pipeline.)"""

from __future__ import annotations

from citywatch.config import HealthRules
from citywatch.detectors.base import QUIET, CompiledRule, Verdict, found, threshold
from citywatch.detectors.record import DeviceRecord
from citywatch.model import KINDS, Device, Finding, Reading

OFFLINE_RULE = "device_offline"


class BatteryLow(CompiledRule):
    name = "battery_low"
    kinds = frozenset(KINDS)
    in_order_only = False
    v1_key = ""

    def __init__(self, rules: HealthRules) -> None:
        self.rules = rules

    def fresh(self) -> None:
        return None

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: None) -> Verdict:
        if reading.values.get("event") == "low_battery":  # locks and smoke alarms report it as an event
            return found(Finding(self.name, True, "warning", reading.battery, None,
                                 f"{reading.kind} reports low battery"))
        battery = reading.battery
        if battery is None:
            return QUIET
        low = threshold(device, "battery.low_pct", self.rules.battery_low_pct)
        if battery < low:
            return found(Finding(self.name, True, "warning", battery, low, f"battery at {battery:g}%"))
        if battery >= max(low, self.rules.battery_clear_pct):
            return Finding(self.name, False, value=battery), 0.0
        return QUIET


LAST_WILL = "last_will"  # the value of a device_offline alert opened by the device's own last will


def offline_finding(active: bool, reason: str, silent_s: float | None = None,
                    limit_s: float | None = None, last_will: bool = False) -> Finding:
    if not active:
        return Finding(OFFLINE_RULE, False)
    value: float | str | None = LAST_WILL if last_will else round(silent_s, 1) if silent_s is not None else None
    return Finding(OFFLINE_RULE, True, "warning", value, limit_s, reason)
