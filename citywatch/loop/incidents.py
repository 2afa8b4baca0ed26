"""Incidents (unified classification): related alerts grouped into one case.

A storm that floods a district opens one alert per gauge; the dispatch system wants one work order
per grid. `IncidentBook` folds alert transitions, per batch and never per reading, into incidents:

- Grouping. An alert joins an open incident with the same key (by default its hazard group, from
  `incidents.groups`, and its grid) if that incident opened or last grew within `window_min` of the
  alert's opening (event time, so replayed and live data group alike) and, with `radius_m`, its
  first located member lies within that many metres (haversine; an alert or incident without
  coordinates is grouped by the key alone). Among several candidates the nearest, then the most
  recently grown, wins. Otherwise the alert opens a new incident.
- Every alert belongs to exactly one incident, for good: the store's `incident_members` table has
  the alert id as primary key, so a second membership fails the batch's commit instead of passing
  silently. An alert joins at its first transition and never moves.
- Lifecycle. `opened` (first member), `updated` (the severity rose: the incident's severity is the
  highest of its members'), `closed` (every member is resolved or closed). A closed incident is never
  reopened: an alert of the same key after the closure opens a new incident, even within the
  window, so a closed work order stays closed. Member joins send nothing (a storm must not page once
  per gauge): each incident payload lists all its members. Incident-level dispatch (assigned,
  on_site, rectified, rejected) fans out to the member alerts (`dispatch_incident`) and is mirrored
  as an incident transition; `status` follows it.
- Ids are deterministic: the incident id hashes its key and first alert id (alert ids are themselves
  deterministic), a transition id is `<incident id>.<n>` (`.<action>` appended for people's acts, as
  for alerts), so a batch redelivered after a crash yields the same ids and webhook receivers drop
  the repeats.

State: open incidents in memory, every change committed with the batch that caused it (the runner
passes `take_changes()` to `AlertStore.commit`). `open_book` loads the open incidents at start,
brings their members up to date from the alerts table (an action applied by the CLI while no runner
ran), closes those whose members are all terminal, and groups open alerts that are in no incident
yet (stored before incidents existed).
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import msgspec

from citywatch.config import IncidentSettings
from citywatch.errors import AlertError, CitywatchError
from citywatch.model import (
    DISPATCH_ACTIONS,
    SEVERITY_RANK,
    TERMINAL_STATUSES,
    Alert,
    Incident,
    IncidentMember,
    IncidentTransition,
    Output,
    Transition,
)

if TYPE_CHECKING:
    from citywatch.detectors.lifecycle import AlertEngine
    from citywatch.sinks.store import AlertStore

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)
PLACE_FIELDS = ("grid", "community", "district", "city")  # key fields read from the alert's device block
# Incident-level dispatch: the incident's status after each action (`closed` is not mirrored: an
# incident closes by itself once every member alert is closed or resolved).
MIRRORED_STATUS = {"assigned": "assigned", "on_site": "on_site", "rectified": "rectified", "rejected": "open"}

MemberRow = tuple[str, str, float]  # (alert id, incident id, joined at): a row of incident_members


class IncidentError(CitywatchError):
    """An incident operation failed; `http_status` is what an API answers."""

    http_status = 409


class IncidentNotFound(IncidentError):
    """No incident with that id (open or closed)."""

    http_status = 404


class IncidentConflict(IncidentError):
    """The incident cannot take the action: it is closed, or no member alert can take it now."""

    http_status = 409


class BadIncidentAction(IncidentError):
    """The action itself is malformed: unknown, or missing what it needs (assignee, reason)."""

    http_status = 400


class IncidentDispatch(msgspec.Struct, kw_only=True):
    """What an incident-level dispatch did: the mirrored incident transition (None for `closed`,
    which closes the incident only once every member is terminal), the member alerts' transitions,
    and the members that could not take the action, with why."""

    incident_id: str
    action: str
    transition: IncidentTransition | None
    applied: list[Transition]
    skipped: dict[str, str]
    closed: bool  # the incident closed as a result


class Changes(msgspec.Struct):
    """What to commit: incidents that changed and new member rows (see IncidentBook.take_changes)."""

    incidents: list[Incident]
    members: list[MemberRow]


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine): exact enough for a few kilometres of city."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def incident_id(key: tuple[str, ...], first_alert_id: str) -> str:
    """Deterministic: the same alerts grouped the same way give the same id in every runner."""
    digest = hashlib.blake2b("|".join((*key, first_alert_id)).encode(), digest_size=8).hexdigest()
    return f"in_{digest}"


def _terminal(status: str) -> bool:
    return status in TERMINAL_STATUSES


def _copy(incident: Incident) -> Incident:
    """A snapshot for a transition: later changes to the live incident must not alter it."""
    return msgspec.structs.replace(incident, key=dict(incident.key),
                                   members=[msgspec.structs.replace(m) for m in incident.members])


def _coordinate(device: dict[str, object], name: str) -> float | None:
    value = device.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class HazardGroups:
    """Rule name -> hazard group: an exact name first, then the first group with a matching pattern,
    else the rule is a group of its own."""

    def __init__(self, groups: dict[str, list[str]]) -> None:
        self.exact: dict[str, str] = {}
        self.patterns: list[tuple[str, str]] = []
        for group, names in groups.items():
            for name in names:
                if any(c in name for c in "*?["):
                    self.patterns.append((name, group))
                else:
                    self.exact.setdefault(name, group)
        self.cache: dict[str, str] = {}

    def __call__(self, rule: str) -> str:
        group = self.cache.get(rule)
        if group is None:
            group = self.exact.get(rule) or next((g for p, g in self.patterns if fnmatch.fnmatchcase(rule, p)), rule)
            self.cache[rule] = group
        return group


class IncidentBook:
    """The open incidents and which alert belongs to which; folds alert transitions into incident
    transitions. `member_of(alert_id)` answers for alerts not in an open incident (the store)."""

    def __init__(self, settings: IncidentSettings, open_incidents: Iterable[Incident] = (),
                 member_of: Callable[[str], str | None] = lambda alert_id: None) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        self.window_s = settings.window_min * 60.0
        self.radius_m = settings.radius_m
        self.group_of = HazardGroups(settings.groups)
        self.member_of = member_of
        self.by_id: dict[str, Incident] = {}
        self.by_key: dict[tuple[str, ...], list[Incident]] = {}
        self.members: dict[str, tuple[Incident, IncidentMember]] = {}
        self._keys: dict[str, tuple[str, ...]] = {}
        self._open: dict[str, int] = {}  # per open incident: members not yet resolved or closed
        self._dirty: dict[str, Incident] = {}
        self._new_members: list[MemberRow] = []
        self.joiners: list[tuple[str, str, str]] = []  # (alert, incident, its team): to assign_joiners
        for incident in open_incidents:
            self._index(incident)

    def _index(self, incident: Incident) -> None:
        key = tuple(incident.key[f] for f in self.settings.key if f in incident.key)
        self.by_id[incident.id] = incident
        self._keys[incident.id] = key
        self.by_key.setdefault(key, []).append(incident)
        for member in incident.members:
            self.members[member.alert_id] = (incident, member)
        self._open[incident.id] = sum(1 for m in incident.members if not _terminal(m.status))

    def _forget(self, incident: Incident) -> None:
        del self.by_id[incident.id]
        key = self._keys.pop(incident.id)
        del self._open[incident.id]
        bucket = self.by_key[key]
        bucket.remove(incident)
        if not bucket:
            del self.by_key[key]
        for member in incident.members:
            self.members.pop(member.alert_id, None)

    # -- keys -------------------------------------------------------------------------------------

    def key_of(self, alert: Alert) -> dict[str, str]:
        """The grouping key's fields and values for this alert (incidents.key)."""
        values: dict[str, str] = {}
        for field in self.settings.key:
            if field == "group":
                values[field] = self.group_of(alert.rule)
            elif field in PLACE_FIELDS:
                values[field] = str(alert.device.get(field) or "")
            else:  # kind, rule, device_id
                values[field] = str(getattr(alert, field))
        return values

    # -- folding alert transitions ------------------------------------------------------------------

    def group(self, out: Output) -> None:
        """Fold the batch's alert transitions in; incident transitions go to out.incident_transitions."""
        if not self.enabled:
            return
        for transition in out.transitions:
            self.fold(transition, out.incident_transitions)

    def fold(self, transition: Transition, sink: list[IncidentTransition]) -> None:
        alert = transition.alert
        entry = self.members.get(alert.id)
        if entry is None:
            if alert.transitions > 1 and self.member_of(alert.id) is not None:
                return  # a member of a closed incident (never reopened, never moved)
            self._join(alert, sink)
            entry = self.members[alert.id]
        incident, member = entry
        self._member_changed(incident, member, alert.status, alert.severity, transition.at, sink)

    def adopt(self, alerts: Iterable[Alert], sink: list[IncidentTransition]) -> None:
        """Group open alerts that are in no incident yet (stored before incidents existed)."""
        if not self.enabled:
            return
        for alert in alerts:
            if alert.id not in self.members:
                self._join(alert, sink)

    def _join(self, alert: Alert, sink: list[IncidentTransition]) -> None:
        at = alert.opened_at
        values = self.key_of(alert)
        key = tuple(values.values())
        lat, lon = _coordinate(alert.device, "lat"), _coordinate(alert.device, "lon")
        if lat is None or lon is None:
            lat = lon = None
        member = IncidentMember(alert_id=alert.id, device_id=alert.device_id, kind=alert.kind, rule=alert.rule,
                                severity=alert.severity, status=alert.status, joined_at=at, device=alert.device)
        incident = self._candidate(key, at, lat, lon)
        if incident is None:
            incident = Incident(id=incident_id(key, alert.id), group=self.group_of(alert.rule), key=values,
                                status="open", severity=alert.severity, opened_at=at, updated_at=at,
                                last_joined_at=at, lat=lat, lon=lon, members=[member])
            self._index(incident)
            self._new_members.append((alert.id, incident.id, at))
            sink.append(self._transition(incident, "opened", at,
                                         f"{alert.rule} on {alert.device_id}: first alert of this incident"))
            return
        incident.members.append(member)
        self.members[alert.id] = (incident, member)
        self._open[incident.id] += not _terminal(member.status)
        incident.last_joined_at = max(incident.last_joined_at, at)
        incident.updated_at = max(incident.updated_at, at)
        if incident.lat is None and lat is not None:
            incident.lat, incident.lon = lat, lon
        self._new_members.append((alert.id, incident.id, at))
        self._dirty[incident.id] = incident
        if incident.status != "open":
            # Dispatch already works this incident: a new alert must not join it silently. It goes to
            # the incident's team (see assign_joiners) and the dispatch side hears of it.
            if incident.assignee and incident.status in ("assigned", "on_site") and not _terminal(member.status):
                self.joiners.append((alert.id, incident.id, incident.assignee))
            sink.append(self._transition(incident, "updated", at, f"{alert.rule} on {alert.device_id} joined "
                                                                  f"the incident while it was {incident.status}"))

    def assign_joiners(self, engine: AlertEngine, at: float, out: Output) -> None:
        """Alerts that joined an incident its team already holds are assigned to that team too (a
        dispatched incident's new member would otherwise wait unassigned). Embedded runner only: the
        Kafka sink holds no alert engine."""
        while self.joiners:
            alert_id, incident_id, assignee = self.joiners.pop(0)
            try:
                transition = engine.dispatch(alert_id, "assigned", f"incident {incident_id}", at, assignee=assignee)
            except AlertError:
                continue  # it moved on meanwhile (e.g. resolved in the same batch)
            out.transitions.append(transition)
            self.fold(transition, out.incident_transitions)

    def _candidate(self, key: tuple[str, ...], at: float, lat: float | None, lon: float | None) -> Incident | None:
        """The open incident of this key the alert joins: within the window (and radius), nearest
        first, then the most recently grown; None when there is none."""
        best: Incident | None = None
        best_rank = (math.inf, 0.0)
        for incident in self.by_key.get(key, ()):
            if not incident.opened_at - self.window_s <= at <= incident.last_joined_at + self.window_s:
                continue
            distance = 0.0
            if self.radius_m is not None and lat is not None and lon is not None \
                    and incident.lat is not None and incident.lon is not None:
                distance = distance_m(lat, lon, incident.lat, incident.lon)
                if distance > self.radius_m:
                    continue
            rank = (distance, -incident.last_joined_at)
            if rank < best_rank:
                best, best_rank = incident, rank
        return best

    def _member_changed(self, incident: Incident, member: IncidentMember, status: str, severity: str, at: float,
                        sink: list[IncidentTransition]) -> None:
        self._open[incident.id] += _terminal(member.status) - _terminal(status)
        member.status, member.severity = status, severity
        incident.updated_at = max(incident.updated_at, at)
        self._dirty[incident.id] = incident
        if SEVERITY_RANK.get(severity, -1) > SEVERITY_RANK.get(incident.severity, -1):
            incident.severity = severity
            sink.append(self._transition(incident, "updated", at, f"severity raised to {severity} by "
                                                                  f"{member.rule} on {member.device_id}"))
        if self._open[incident.id] == 0:
            incident.status, incident.closed_at = "closed", at
            self._forget(incident)
            sink.append(self._transition(incident, "closed", at, f"all {len(incident.members)} member alerts "
                                                                 "resolved or closed"))

    def reconcile(self, current: dict[str, tuple[str, str]], at: float, sink: list[IncidentTransition]) -> None:
        """Bring members up to date with the alerts as stored, (status, severity) by alert id (an
        action applied while no runner ran); an alert no longer stored was archived, so terminal."""
        for incident in list(self.by_id.values()):
            for member in list(incident.members):
                if incident.id not in self.by_id:
                    break  # closed by the previous member
                status, severity = current.get(member.alert_id, (member.status, member.severity))
                if member.alert_id not in current and not _terminal(status):
                    status = "resolved"
                if (status, severity) != (member.status, member.severity):
                    self._member_changed(incident, member, status, severity, at, sink)

    # -- incident-level dispatch -----------------------------------------------------------------------

    def mirror(self, incident_id: str, action: str, by: str, at: float, reason: str) -> IncidentTransition:
        """The incident transition for a dispatch action applied to its members; status follows."""
        incident = self.by_id[incident_id]
        incident.status = MIRRORED_STATUS[action]
        incident.updated_at = max(incident.updated_at, at)
        self._dirty[incident.id] = incident
        return self._transition(incident, action, at, reason, person=True)

    # -- transitions and changes --------------------------------------------------------------------

    def _transition(self, incident: Incident, kind: str, at: float, reason: str,
                    person: bool = False) -> IncidentTransition:
        incident.transitions += 1
        self._dirty[incident.id] = incident
        n = incident.transitions
        transition_id = f"{incident.id}.{n}.{kind}" if person else f"{incident.id}.{n}"
        return IncidentTransition(id=transition_id, incident_id=incident.id, transition=kind, at=at,
                                  incident=_copy(incident), reason=reason)

    def take_changes(self) -> Changes:
        """Incidents changed and member rows added since the last call, for `AlertStore.commit`."""
        changes = Changes(list(self._dirty.values()), self._new_members)
        self._dirty, self._new_members = {}, []
        return changes

    def give_back(self, changes: Changes) -> None:
        """The commit carrying `changes` failed: write them with the next one."""
        for incident in changes.incidents:
            self._dirty.setdefault(incident.id, incident)
        self._new_members[:0] = changes.members

    def get(self, incident_id: str) -> Incident | None:
        """An open incident (live: not a snapshot)."""
        return self.by_id.get(incident_id)


def open_book(settings: IncidentSettings, store: AlertStore, now: float) -> tuple[IncidentBook, Output]:
    """The book as last committed, brought up to date at start; the Output holds the incident
    transitions that bringing up to date produced (commit it with `take_changes()`)."""
    book = IncidentBook(settings, store.open_incidents() if settings.enabled else (), member_of=store.incident_of)
    out = Output()
    if settings.enabled:
        ids = [m.alert_id for incident in book.by_id.values() for m in incident.members]
        book.reconcile(store.alert_statuses(ids), now, out.incident_transitions)
        book.adopt(store.alerts_without_incident(), out.incident_transitions)
    return book, out


def dispatch_incident(book: IncidentBook, engine: AlertEngine, incident_id: str, action: str, by: str, at: float,
                      *, stored: Callable[[str], Incident | None] = lambda incident_id: None,
                      assignee: str = "", note: str = "", evidence: Iterable[str] = (),
                      reason: str = "") -> tuple[IncidentDispatch, Output]:
    """Apply a dispatch action (model.DISPATCH_ACTIONS) to every member alert that can take it
    (`engine.dispatch` on each; resolved or closed members, and those where it is illegal, are skipped
    with the reason) and mirror it as one incident transition. Returns the result and the Output to
    commit as one human action. `stored(id)` looks up closed incidents, to tell 409 from 404.

    Raises IncidentNotFound (unknown id), IncidentConflict (closed, or no member could take the action)
    and BadIncidentAction (unknown action, `assigned` without assignee, `rejected` without reason)."""
    if action not in DISPATCH_ACTIONS:
        raise BadIncidentAction(f"unknown action {action!r}: one of {', '.join(DISPATCH_ACTIONS)}")
    if action == "assigned" and not assignee.strip():
        raise BadIncidentAction("assigned needs an assignee (team or person)")
    if action == "rejected" and not reason.strip():
        raise BadIncidentAction("rejected needs a reason")
    incident = book.get(incident_id)
    if incident is None:
        if stored(incident_id) is not None:
            raise IncidentConflict(f"incident {incident_id} is closed")
        raise IncidentNotFound(f"no incident {incident_id}")
    links = list(evidence)
    out = Output()
    skipped: dict[str, str] = {}
    for member in list(incident.members):
        if _terminal(member.status):
            skipped[member.alert_id] = f"already {member.status}"
            continue
        try:
            out.transitions.append(engine.dispatch(member.alert_id, action, by, at, assignee=assignee, note=note,
                                                   evidence=links, reason=reason))
        except AlertError as exc:
            skipped[member.alert_id] = str(exc)
    if not out.transitions:
        why = "; ".join(f"{alert_id}: {text}" for alert_id, text in skipped.items())
        raise IncidentConflict(f"no member alert of incident {incident_id} can take {action} ({why})")
    mirrored = None
    if action in MIRRORED_STATUS:
        if action == "assigned":
            incident.assignee = assignee.strip()
        elif action == "rejected":
            incident.assignee = None
        detail = {"assigned": f"assigned to {assignee.strip()}", "on_site": "on site", "rectified": "rectified",
                  "rejected": f"rejected: {reason.strip()}"}[action]
        mirrored = book.mirror(incident_id, action, by, at, f"{detail} by {by} ({len(out.transitions)} of "
                                                            f"{len(incident.members)} member alerts)")
        out.incident_transitions.append(mirrored)
    book.group(out)
    closed = any(t.transition == "closed" and t.incident_id == incident_id for t in out.incident_transitions)
    return IncidentDispatch(incident_id=incident_id, action=action, transition=mirrored, applied=out.transitions,
                            skipped=skipped, closed=closed), out
