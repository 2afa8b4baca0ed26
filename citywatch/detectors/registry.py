"""The set of rules the pipeline runs, built from settings once."""

from __future__ import annotations

from citywatch.config import Settings
from citywatch.detectors.base import Rule
from citywatch.detectors.gas import GasLevel
from citywatch.detectors.health import BatteryLow
from citywatch.detectors.lock import lock_rules
from citywatch.detectors.noise import LocalClock, NoiseLimit, NoiseNightBurst
from citywatch.detectors.parking import ParkingForbidden, ParkingOverstay
from citywatch.detectors.water import WaterDepth
from citywatch.model import KINDS


def build_rules(settings: Settings) -> dict[str, list[Rule]]:
    """Rules per kind, in evaluation order."""
    r = settings.rules
    noise = NoiseLimit(r.noise, LocalClock(settings.timezone))
    rules: list[Rule] = [
        GasLevel(r.gas), noise, NoiseNightBurst(r.noise, noise), WaterDepth(r.water),
        ParkingOverstay(r.parking), ParkingForbidden(), *lock_rules(r.lock), BatteryLow(r.health),
    ]
    return {kind: [rule for rule in rules if kind in rule.kinds] for kind in KINDS}
