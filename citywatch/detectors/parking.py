"""Parking bays: overstay beyond the bay's maximum stay, occupancy of a no-parking bay."""

from __future__ import annotations

from citywatch.detectors.base import QUIET, CompiledRule, Verdict, found, is_late
from citywatch.detectors.kindrules import KindRules, RuleContext
from citywatch.detectors.occupancy import ParkingFlapping, ParkingStuck
from citywatch.detectors.record import UNSET, DeviceRecord, RuleState, known
from citywatch.kinds.parking import ParkingParams, ParkingRules
from citywatch.model import Device, Finding, Reading


class OccupancyState(RuleState):
    """Event time since which the bay is occupied; UNSET while it is free."""

    __slots__ = ("since",)
    FIELDS = ("since",)

    def __init__(self) -> None:
        self.since = UNSET


def track_occupancy(reading: Reading, record: DeviceRecord, state: OccupancyState) -> float | None:
    """Event time since which the bay is occupied (None when free); kept in state once per reading.

    A late reading (older than one already seen) does not undo what a newer one said: a late
    "free" inside the current occupancy moves its start to the newest reading (the bay was free
    after `since`, so the stay is at most that long); a late "occupied" before it extends it back."""
    since: float | None = state.since if known(state.since) else None
    late = is_late(reading, record)
    if not reading.values["occupied"]:
        if not late:
            state.since = UNSET
            return None
        if since is not None and reading.ts >= since:
            since = state.since = record.ts
        return since
    if since is None:
        if late:
            return None  # a newer reading said free
        since = state.since = reading.ts
    elif reading.ts < since:
        since = state.since = reading.ts
    return since


class ParkingOverstay(CompiledRule):
    name = "parking_overstay"
    kinds = frozenset({"parking"})
    in_order_only = False
    v1_key = "parking.since"

    def __init__(self, rules: ParkingRules) -> None:
        self.rules = rules

    def fresh(self) -> OccupancyState:
        return OccupancyState()

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: OccupancyState) -> Verdict:
        since = track_occupancy(reading, record, state)
        if since is None or device.no_parking:
            return Finding(self.name, False), 0.0
        max_stay_min = device.max_stay_min or self.rules.max_stay_min
        stayed_min = (reading.ts - since) / 60.0
        if stayed_min > max_stay_min:
            return found(Finding(self.name, True, "warning", round(stayed_min, 1), max_stay_min,
                                 f"bay occupied for {stayed_min:.0f} min (allowed {max_stay_min:g} min)"))
        return Finding(self.name, False, value=round(stayed_min, 1)), 0.0


class ParkingForbidden(CompiledRule):
    """A vehicle in a no-parking bay or fire lane (registry flag `no_parking`)."""

    name = "parking_forbidden"
    kinds = frozenset({"parking"})
    in_order_only = False
    v1_key = ""

    def fresh(self) -> None:
        return None

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: None) -> Verdict:
        if not device.no_parking:
            return QUIET
        if reading.values["occupied"]:
            return found(Finding(self.name, True, "warning", True, None, "vehicle in a no-parking bay or fire lane"))
        return Finding(self.name, False, value=False), 0.0


def rules(ctx: RuleContext) -> KindRules:
    """Parking's rules (KindSpec.rules): overstay, no-parking; a sensor stuck or flapping."""
    learned = ctx.learned(ParkingParams)
    return KindRules([ParkingOverstay(ctx.section(ParkingRules)), ParkingForbidden()],
                     [ParkingFlapping(learned), ParkingStuck(ctx.baseline("occupied", 0.05), learned)])
