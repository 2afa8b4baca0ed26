"""Values that cross the seams: readings, devices, findings, alerts, transitions.

They are msgspec Structs: typed, cheap to build on the hot path, and serialisable
to JSON or msgpack for the alert store, webhooks and (later) Kafka topics.
"""

from __future__ import annotations

from typing import Any

import msgspec

from citywatch.kinds import KINDS as KINDS  # re-exported: the kinds live where the CLI takes them cheaply

SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
SEVERITY_RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}
Value = float | int | bool | str | None


class Reading(msgspec.Struct, frozen=True, gc=False):
    """One validated telemetry message. `ts` is event time, `received_at` arrival time (epoch s)."""

    device_id: str
    kind: str
    ts: float
    received_at: float
    values: dict[str, Any]
    seq: int | None = None
    battery: float | None = None
    rssi: float | None = None


class Device(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A registered device and the attributes detectors and dispatch need. Not tracked by the
    garbage collector (it holds strings, numbers and a dict of numbers: no cycle): a million of
    them cost a full collection nothing."""

    id: str
    kind: str
    district: str = ""
    grid: str = ""
    community: str = ""  # community or street: the level between grid and district (escalation, KPIs)
    city: str = ""
    address: str = ""
    lat: float | None = None
    lon: float | None = None
    zone_class: str | None = None
    interval_s: float = 60.0
    tenants: int | None = None
    max_stay_min: float | None = None
    no_parking: bool = False
    thresholds: dict[str, float] = {}
    enabled: bool = True
    created_at: float = 0.0


class Finding(msgspec.Struct, frozen=True, gc=False):
    """What a rule says about one reading: the condition is active (open/update) or not (clear).

    `latched` findings (forced open, tamper, brute force) stay open until a person resolves them.
    `suspect` names a suspected sensor fault seen on the same reading (an impossible jump, a stuck
    sensor): information on the alarm, never a reason to withhold it (fail safe).
    """

    rule: str
    active: bool
    severity: str = "warning"
    value: Value = None
    threshold: float | None = None
    message: str = ""
    latched: bool = False
    suspect: str = ""


# Where an alert stands in the city's closed loop (discover, dispatch, rectify, follow up and close).
# Terminal: `resolved` (the condition cleared before anyone was dispatched, or a person resolved it)
# and `closed` (rectified, then verified by the device's own readings or confirmed by a person).
ALERT_STATUSES: tuple[str, ...] = ("open", "acknowledged", "assigned", "on_site", "rectified", "verifying",
                                   "verification_overdue", "resolved", "closed")
TERMINAL_STATUSES: frozenset[str] = frozenset({"resolved", "closed"})
# Actions the dispatch system (or a person) reports on an alert; each becomes a stored transition.
DISPATCH_ACTIONS: tuple[str, ...] = ("assigned", "on_site", "rectified", "rejected", "closed")


class Alert(msgspec.Struct, kw_only=True):
    """The current state of one case: one per (device, rule) while not resolved or closed."""

    id: str
    device_id: str
    kind: str
    rule: str
    severity: str
    status: str  # open | acknowledged | resolved
    opened_at: float
    updated_at: float
    value: Value = None
    threshold: float | None = None
    message: str = ""
    count: int = 1
    latched: bool = False
    review_deadline: float = 0.0
    response_deadline: float = 0.0
    acked_at: float | None = None
    acked_by: str | None = None
    resolved_at: float | None = None
    resolved_by: str | None = None
    escalations: list[str] = []
    transitions: int = 0
    device: dict[str, Any] = {}  # the dispatch block (district, grid, address, lat, lon), set at open
    flapping: bool = False  # opened as a flapping alert: resolves only after a quiet period
    condition_since: float = 0.0  # event time the condition started (before any hold period)
    last_active_at: float = 0.0  # event time of the latest active finding
    safety: bool = False  # a life-safety rule: opened at the first reading at the level, never held back
    suspect: str = ""  # "sensor_fault" while a suspected fault casts doubt on the reading (the alert stays)
    suspect_reason: str = ""  # what made it suspect (the fault finding's message)
    # the closed loop (dispatch, rectification, verification, escalation up the grid hierarchy)
    assignee: str | None = None  # team or person the dispatch system assigned
    assigned_at: float | None = None
    on_site_at: float | None = None
    rectified_at: float | None = None
    rectified_by: str | None = None
    rectify_note: str = ""
    evidence: list[str] = []  # links the field team gave with `rectified`
    verify_until: float | None = None  # verifying: closes then if the readings stayed clear
    verified_clear: int = 0  # clear readings seen in the current verification window
    closed_at: float | None = None
    closed_by: str | None = None
    reopened: int = 0  # failed rectifications: the condition came back during verification
    rejected_reason: str = ""
    escalation_level: int = 0  # 0 = grid; each missed deadline moves it one level up (alerts.escalation)
    responded_at: float | None = None  # the first acknowledgement or assignment (the loop's figures)


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """One change in an alert's life; `id` is stable and doubles as the webhook-id."""

    id: str
    alert_id: str
    transition: str  # opened | updated | flapping | escalated | acknowledged | resolved
    at: float
    alert: Alert
    reason: str = ""


def device_summary(device: Device | None, device_id: str, kind: str) -> dict[str, Any]:
    """The device block a dispatch system needs to open a work order."""
    if device is None:
        return {"id": device_id, "kind": kind}
    return {
        "id": device.id,
        "kind": device.kind,
        "district": device.district,
        "grid": device.grid,
        "community": device.community,
        "city": device.city,
        "address": device.address,
        "lat": device.lat,
        "lon": device.lon,
    }


class KeyState(msgspec.Struct, kw_only=True):
    """Everything the engine holds for one (device, rule): the unresolved alert, the active streak
    before it opens, the clear streak before it resolves, and recent opening times (flapping)."""

    alert: Alert | None = None
    pending: tuple[int, float] | None = None
    clearing: int | None = None
    cycles: list[float] = []


class DeadLetter(msgspec.Struct, frozen=True):
    """A message that could not be processed, kept with the reason (payload truncated by the pipeline)."""

    topic: str
    payload: bytes
    reason: str
    detail: str
    received_at: float
    size: int
    field: str | None = None  # the payload field at fault, when one is (e.g. lel_pct, ts, seq)


class Output:
    """What one batch produced (the pipeline core's output, whichever runner drives it): the runner commits
    it atomically, then acknowledges the messages."""

    __slots__ = ("accepted", "transitions", "dead_letters", "statuses", "incident_transitions")

    def __init__(self) -> None:
        self.accepted: list[tuple[Reading, Device]] = []
        self.transitions: list[Transition] = []
        self.dead_letters: list[DeadLetter] = []
        self.statuses: list[tuple[Device, str, float]] = []
        self.incident_transitions: list[IncidentTransition] = []  # grouped from `transitions` per batch

    def __len__(self) -> int:
        return (len(self.accepted) + len(self.transitions) + len(self.dead_letters) + len(self.statuses)
                + len(self.incident_transitions))


# -- incidents (unified classification): related alerts grouped, citywatch/loop/incidents.py -----------

# open: grouping; assigned, on_site, rectified: what dispatch last did to the whole incident; closed:
# every member alert is resolved or closed (terminal: a closed incident never reopens).
INCIDENT_STATUSES: tuple[str, ...] = ("open", "assigned", "on_site", "rectified", "closed")


class IncidentMember(msgspec.Struct, kw_only=True):
    """One alert of an incident, as of its latest transition."""

    alert_id: str
    device_id: str
    kind: str
    rule: str
    severity: str
    status: str
    joined_at: float  # the alert's opening (event time)
    device: dict[str, Any] = {}  # the alert's dispatch block (district, grid, address, lat, lon, ...)


class Incident(msgspec.Struct, kw_only=True):
    """Related alerts as one case: same hazard group and key (default: grid) within a time window.
    Its severity is the highest of its members'; it closes when every member is resolved or closed."""

    id: str
    group: str  # hazard group (incidents.groups), e.g. water
    key: dict[str, str]  # the grouping key's fields and values, e.g. {"group": "water", "grid": "G001"}
    status: str  # INCIDENT_STATUSES
    severity: str
    opened_at: float  # event time of the first member's opening
    updated_at: float
    last_joined_at: float  # the latest member's opening: the window runs from here
    closed_at: float | None = None
    assignee: str | None = None  # set when dispatch assigned the whole incident
    lat: float | None = None  # the first located member: the centre for incidents.radius_m
    lon: float | None = None
    members: list[IncidentMember] = []
    transitions: int = 0


class IncidentTransition(msgspec.Struct, frozen=True, kw_only=True):
    """One change in an incident's life (opened, updated: severity raised, closed, and dispatch's
    assigned, on_site, rectified, rejected); `id` is stable and doubles as the webhook-id."""

    id: str
    incident_id: str
    transition: str
    at: float
    incident: Incident
    reason: str = ""
