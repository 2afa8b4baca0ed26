"""Parking bays: overstay beyond the bay's maximum stay, occupancy of a no-parking bay."""

from __future__ import annotations

from citywatch.config import ParkingRules
from citywatch.detectors.base import DeviceState, is_late
from citywatch.model import Device, Finding, Reading


def track_occupancy(reading: Reading, state: DeviceState) -> float | None:
    """Event time since which the bay is occupied (None when free); kept in state once per reading.

    A late reading (older than one already seen) does not undo what a newer one said: a late
    "free" inside the current occupancy moves its start to the newest reading (the bay was free
    after `since`, so the stay is at most that long); a late "occupied" before it extends it back."""
    since: float | None = state.get("parking.since")
    late = is_late(reading, state)
    if not reading.values["occupied"]:
        if not late:
            state.pop("parking.since", None)
            return None
        if since is not None and reading.ts >= since:
            since = state["ts"]
            state["parking.since"] = since
        return since
    if since is None:
        if late:
            return None  # a newer reading said free
        since = reading.ts
        state["parking.since"] = since
    elif reading.ts < since:
        since = reading.ts
        state["parking.since"] = since
    return since


class ParkingOverstay:
    name = "parking_overstay"
    kinds = frozenset({"parking"})
    in_order_only = False

    def __init__(self, rules: ParkingRules) -> None:
        self.rules = rules

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        since = track_occupancy(reading, state)
        if since is None or device.no_parking:
            return Finding(self.name, False)
        max_stay_min = device.max_stay_min or self.rules.max_stay_min
        stayed_min = (reading.ts - since) / 60.0
        if stayed_min > max_stay_min:
            return Finding(self.name, True, "warning", round(stayed_min, 1), max_stay_min,
                           f"bay occupied for {stayed_min:.0f} min (allowed {max_stay_min:g} min)")
        return Finding(self.name, False, value=round(stayed_min, 1))


class ParkingForbidden:
    """A vehicle in a no-parking bay or fire lane (registry flag `no_parking`)."""

    name = "parking_forbidden"
    kinds = frozenset({"parking"})
    in_order_only = False

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        if not device.no_parking:
            return None
        if reading.values["occupied"]:
            return Finding(self.name, True, "warning", True, None, "vehicle in a no-parking bay or fire lane")
        return Finding(self.name, False, value=False)
