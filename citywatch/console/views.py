"""What the console shows, as plain data: who may see which alert and incident, the filters, each
case's next deadline, and the rows of the queue (rendered by the templates, server-side, for the
page and for each live update alike).

Visibility is the policy's (citywatch/people/policy.py): an alert is shown when `view_alert` is
authorised on it, an incident when `view_incident` is, a device when `view_device` is or when one of
its alerts is shown. Filters narrow what is visible; they never widen it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from citywatch.alert_text import alert_message
from citywatch.i18n import Translator
from citywatch.labels import NP_, label
from citywatch.model import ALERT_STATUSES, KINDS, SEVERITIES, SEVERITY_RANK, TERMINAL_STATUSES, Alert, Incident
from citywatch.people.policy import alert_target, authorize, device_target, incident_target
from citywatch.people.users import User

OPEN_STATUSES = tuple(s for s in ALERT_STATUSES if s not in TERMINAL_STATUSES)
MAX_FILTER_CHARS = 200

# What a person may do to an alert in each status (the engine refuses the rest: lifecycle.py); the
# console shows a button only when the status allows it and the policy grants it.
ACTION_STATUSES: dict[str, frozenset[str]] = {
    "ack": frozenset({"open"}),
    "assign": frozenset({"open", "acknowledged", "assigned", "on_site"}),
    "on_site": frozenset({"assigned"}),
    "rectify": frozenset({"assigned", "on_site"}),
    "reject": frozenset({"open", "acknowledged", "assigned", "on_site"}),
    "resolve": frozenset(OPEN_STATUSES),
    "close": frozenset({"rectified", "verification_overdue"}),
}
ACTIONS = tuple(ACTION_STATUSES)  # policy action codes, also the console's URLs (on_site as on-site)
# The roles' names for people (the templates show pgettext("role", user.role)); marked for extraction.
ROLE_NAMES = (NP_("role", "admin"), NP_("role", "operator"), NP_("role", "field"), NP_("role", "installer"),
              NP_("role", "dispatch"))


@dataclass(frozen=True)
class Filters:
    """The queue's filters (query parameters); empty means any."""

    district: str = ""
    grid: str = ""
    kind: str = ""
    severity: str = ""
    status: str = ""

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Filters:
        """From a query string: unknown codes and over-long values are dropped (never an error)."""
        def one(name: str, allowed: Iterable[str] | None = None) -> str:
            value = str(query.get(name, "")).strip()[:MAX_FILTER_CHARS]
            if not value.isprintable() or (allowed is not None and value not in allowed):
                return ""
            return value

        return cls(district=one("district"), grid=one("grid"), kind=one("kind", KINDS),
                   severity=one("severity", SEVERITIES), status=one("status", OPEN_STATUSES))

    def query(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    def __bool__(self) -> bool:
        return bool(self.query())

    def match_alert(self, alert: Alert) -> bool:
        place = alert.device or {}
        return ((not self.district or place.get("district") == self.district)
                and (not self.grid or place.get("grid") == self.grid)
                and (not self.kind or alert.kind == self.kind)
                and (not self.severity or alert.severity == self.severity)
                and (not self.status or alert.status == self.status))

    def match_incident(self, incident: Incident) -> bool:
        """Any member matches every filter given (a status filter applies to the members' statuses)."""
        if not self:
            return True
        if self.severity and incident.severity != self.severity:
            return False
        for m in incident.members:
            place = m.device or {}
            if ((not self.district or place.get("district") == self.district)
                    and (not self.grid or place.get("grid") == self.grid)
                    and (not self.kind or m.kind == self.kind)
                    and (not self.status or m.status == self.status)):
                return True
        return False


def may_view_alert(user: User, alert: Alert) -> bool:
    return bool(authorize(user, "view_alert", alert_target(alert)))


def may_view_incident(user: User, incident: Incident) -> bool:
    return bool(authorize(user, "view_incident", incident_target(incident)))


def may_view_device(user: User, device: Any) -> bool:
    return bool(authorize(user, "view_device", device_target(device)))


def next_deadline(alert: Alert) -> tuple[str, float]:
    """("review" | "response", when): review until someone acknowledged or assigned it, then response."""
    if alert.responded_at is None and alert.status == "open":
        return "review", alert.review_deadline
    return "response", alert.response_deadline


def incident_deadline(incident: Incident, open_alerts: Mapping[str, Alert]) -> float | None:
    """The earliest next deadline among the incident's unfinished members (None: none known)."""
    due = [next_deadline(a)[1] for m in incident.members
           if m.status not in TERMINAL_STATUSES and (a := open_alerts.get(m.alert_id)) is not None]
    return min(due) if due else None


def alert_actions(user: User, alert: Alert) -> list[str]:
    """The actions the console offers on this alert: granted by the policy and possible in its status."""
    if alert.status in TERMINAL_STATUSES:
        return []
    target = alert_target(alert)
    return [a for a in ACTIONS if alert.status in ACTION_STATUSES[a] and authorize(user, a, target)]


def alert_row(t: Translator, timezone: str, alert: Alert, silenced: bool = False) -> dict[str, Any]:
    """One alert as the queue and its live updates show it."""
    which, due = next_deadline(alert)
    place = alert.device or {}
    return {
        "id": alert.id, "severity": alert.severity, "severity_label": label(t, "severity", alert.severity),
        "kind": alert.kind, "kind_label": label(t, "kind", alert.kind), "rule_label": label(t, "rule", alert.rule),
        "status": alert.status, "status_label": label(t, "alert status", alert.status),
        "message": alert_message(t, alert), "device_id": alert.device_id, "address": str(place.get("address") or ""),
        "district": str(place.get("district") or ""), "grid": str(place.get("grid") or ""),
        "opened": t.local_time(alert.opened_at, timezone), "deadline": due, "deadline_kind": which,
        "deadline_local": t.local_time(due, timezone) if due else "-", "assignee": alert.assignee or "",
        "silenced": silenced, "suspect": bool(alert.suspect), "escalation_level": alert.escalation_level,
    }


def incident_row(t: Translator, timezone: str, incident: Incident, deadline: float | None) -> dict[str, Any]:
    districts = sorted({str((m.device or {}).get("district") or "") for m in incident.members} - {""})
    grids = sorted({str((m.device or {}).get("grid") or "") for m in incident.members} - {""})
    open_members = sum(1 for m in incident.members if m.status not in TERMINAL_STATUSES)
    return {
        "id": incident.id, "severity": incident.severity, "severity_label": label(t, "severity", incident.severity),
        "group": incident.group, "status": incident.status,
        "group_label": label(t, "hazard group", incident.group),  # a group configured otherwise: its name
        "status_label": label(t, "alert status", incident.status), "members": len(incident.members),
        "open_members": open_members, "districts": ", ".join(districts), "grids": ", ".join(grids),
        "opened": t.local_time(incident.opened_at, timezone), "deadline": deadline,
        "deadline_local": t.local_time(deadline, timezone) if deadline else "-", "assignee": incident.assignee or "",
    }


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By deadline (none last), then the most severe first."""
    return sorted(rows, key=lambda r: (r["deadline"] is None, r["deadline"] or 0.0,
                                       -SEVERITY_RANK.get(r["severity"], 0), r["id"]))


def choices(alerts: Iterable[Alert]) -> dict[str, list[str]]:
    """The filter menus: districts and grids among what the user sees; kinds, severities, statuses."""
    districts, grids = set(), set()
    for a in alerts:
        place = a.device or {}
        if place.get("district"):
            districts.add(str(place["district"]))
        if place.get("grid"):
            grids.add(str(place["grid"]))
    return {"district": sorted(districts), "grid": sorted(grids), "kind": list(KINDS), "severity": list(SEVERITIES),
            "status": list(OPEN_STATUSES)}
