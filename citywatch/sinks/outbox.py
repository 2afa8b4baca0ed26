"""The webhook outbox: alert transitions become rows in state.db inside the batch's own transaction.

Writing the webhook in the same commit as the alert means a transition is never lost between
"stored" and "sent" (a crash leaves a pending row) and never announced before it is stored.
`WebhookDelivery` (webhooks.py) drains the rows; this module does no I/O but SQL.

A transition a silence in force covers (citywatch/loop/silences.py) is written `held` with the
silence id instead of `pending`; when the silence ends its rows are released (`pending`, same
webhook-id, original order) or `suppressed` (the alert ended unseen).

Routes to people (`apprise:` instead of `url`, citywatch/sinks/notify.py) get rows here too, one per
Apprise URL (endpoint `<route>#<n>`), whose body is the notification rendered in the route's language
(notify_text.py) rather than the JSON payload. They do not claim a transition: the default route
still gets every transition no system route (`url`) matched.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec
from pydantic import SecretStr

from citywatch.config import EscalationSettings, WebhookRoute, WebhookSettings
from citywatch.errors import ConfigError
from citywatch.i18n import DEFAULT_LANGUAGE, DEFAULT_TIMEZONE
from citywatch.loop.silences import Holds, Silence
from citywatch.model import SEVERITY_RANK, TERMINAL_STATUSES, Alert, IncidentTransition, Output, Transition
from citywatch.sinks.notify import Target, encode_notification, row_url, targets
from citywatch.sinks.notify_text import alert_notification, incident_notification

DEFAULT_ROUTE = "default"

# One row per (transition, endpoint). status: pending -> delivered | dead; held (silence_id: a silence
# keeps it back) -> pending | suppressed (never sent). Rows of one (endpoint, alert) are sent in `seq`
# order; delivered rows stay as the audit trail.
OUTBOX_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS webhook_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        webhook_id TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        url TEXT NOT NULL,
        alert_id TEXT NOT NULL,
        body BLOB NOT NULL,
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'pending',
        delivered_at REAL,
        last_attempt_at REAL,
        last_status INTEGER,
        last_error TEXT,
        silence_id TEXT,
        UNIQUE (webhook_id, endpoint)
    )""",
    "CREATE INDEX IF NOT EXISTS webhook_outbox_lane ON webhook_outbox (status, endpoint, alert_id, seq)",
    "CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (status, endpoint, next_attempt_at)",
)

_INSERT = (
    "INSERT OR IGNORE INTO webhook_outbox (webhook_id, endpoint, url, alert_id, body, created_at,"
    " attempts, next_attempt_at, status, silence_id) VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?, ?)"
)

_encode = msgspec.json.Encoder().encode


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the outbox table; safe inside an open transaction (no executescript, which commits)."""
    for statement in OUTBOX_SCHEMA:
        conn.execute(statement)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(webhook_outbox)")}
    if "silence_id" not in columns:  # a file from before silences
        conn.execute("ALTER TABLE webhook_outbox ADD COLUMN silence_id TEXT")


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_payload(transition: Transition, public_url: str) -> bytes:
    """The JSON body receivers get: the alert as it was at this transition, and links to act on it."""
    a = transition.alert
    base = f"{public_url.rstrip('/')}/alerts/{a.id}"
    body: dict[str, Any] = {
        "id": transition.id,
        "type": f"alert.{transition.transition}",
        "transition": transition.transition,
        "reason": transition.reason,
        "at": rfc3339(transition.at),
        "alert": {
            "id": a.id, "rule": a.rule, "kind": a.kind, "severity": a.severity, "status": a.status,
            "value": a.value, "threshold": a.threshold, "message": a.message, "count": a.count,
            "opened_at": rfc3339(a.opened_at), "updated_at": rfc3339(a.updated_at),
            "acked_at": rfc3339(a.acked_at), "acked_by": a.acked_by,
            "resolved_at": rfc3339(a.resolved_at), "resolved_by": a.resolved_by,
            "review_deadline": rfc3339(a.review_deadline), "response_deadline": rfc3339(a.response_deadline),
            "escalations": list(a.escalations),
            "safety": a.safety, "suspect": a.suspect or None, "suspect_reason": a.suspect_reason or None,
            "loop": _loop_block(a),
        },
        "device": a.device,
        "links": {"ack": f"{base}/ack", "resolve": f"{base}/resolve", "self": base},
    }
    return _encode(body)


def _loop_block(a: Alert) -> dict[str, Any]:
    """Where the case stands in the closed loop: dispatch, rectification, verification, escalation."""
    return {
        "assignee": a.assignee, "assigned_at": rfc3339(a.assigned_at), "on_site_at": rfc3339(a.on_site_at),
        "rectified_at": rfc3339(a.rectified_at), "rectified_by": a.rectified_by,
        "rectify_note": a.rectify_note or None, "evidence": list(a.evidence),
        "verify_until": rfc3339(a.verify_until), "reopened": a.reopened,
        "rejected_reason": a.rejected_reason or None, "escalation_level": a.escalation_level,
        "closed_at": rfc3339(a.closed_at), "closed_by": a.closed_by,
    }


def render_incident_payload(transition: IncidentTransition, public_url: str) -> bytes:
    """An incident transition (`type: incident.<transition>`): the incident as it was then, with every
    member alert (its status and severity at that moment, its device and a link), and links."""
    i = transition.incident
    base = public_url.rstrip("/")
    members = i.members
    body: dict[str, Any] = {
        "id": transition.id,
        "type": f"incident.{transition.transition}",
        "transition": transition.transition,
        "reason": transition.reason,
        "at": rfc3339(transition.at),
        "incident": {
            "id": i.id, "group": i.group, "key": i.key, "status": i.status, "severity": i.severity,
            "opened_at": rfc3339(i.opened_at), "updated_at": rfc3339(i.updated_at),
            "last_joined_at": rfc3339(i.last_joined_at), "closed_at": rfc3339(i.closed_at), "assignee": i.assignee,
            "location": {"lat": i.lat, "lon": i.lon} if i.lat is not None else None,
            "member_count": len(members),
            "open_member_count": sum(1 for m in members if m.status not in TERMINAL_STATUSES),
            "kinds": sorted({m.kind for m in members}), "rules": sorted({m.rule for m in members}),
            "districts": sorted({str(m.device.get("district") or "") for m in members} - {""}),
            "grids": sorted({str(m.device.get("grid") or "") for m in members} - {""}),
            "members": [{"alert_id": m.alert_id, "device_id": m.device_id, "kind": m.kind, "rule": m.rule,
                         "severity": m.severity, "status": m.status, "opened_at": rfc3339(m.joined_at),
                         "device": m.device, "link": f"{base}/alerts/{m.alert_id}"} for m in members],
        },
        "links": {"self": f"{base}/incidents/{i.id}"},
    }
    return _encode(body)


def route_endpoints(route: WebhookRoute) -> list[str]:
    """A system route is one endpoint (its name); a route to people one per Apprise URL (`<name>#<n>`)."""
    return [t.endpoint for t in targets(route)] if route.notifies else [route.name]


def endpoints(settings: WebhookSettings) -> list[WebhookRoute]:
    """The configured routes plus the default one (when `url` is set), endpoint names checked unique."""
    routes = list(settings.routes)
    if settings.url:
        routes.append(WebhookRoute(name=DEFAULT_ROUTE, url=settings.url))
    names = [name for r in routes for name in route_endpoints(r)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"webhooks.routes: duplicate endpoint name(s) {duplicates}"
                          f" ('{DEFAULT_ROUTE}' is taken by webhooks.url)")
    return routes


def route_secret(settings: WebhookSettings, name: str) -> SecretStr | None:
    """A route's own secret, else the shared one (also used for routes no longer configured)."""
    for route in settings.routes:
        if route.name == name and route.secret is not None:
            return route.secret
    return settings.secret


DEFAULT_LEVELS: tuple[str, ...] = tuple(EscalationSettings().levels)


def level_name(escalation_level: int, levels: Sequence[str] = DEFAULT_LEVELS) -> str:
    """The name of an alert's escalation level (capped at the top one)."""
    return levels[max(0, min(escalation_level, len(levels) - 1))]


def matches(route: WebhookRoute, transition: Transition, levels: Sequence[str] = DEFAULT_LEVELS) -> bool:
    """Every non-empty filter must contain the alert's value, the severity must reach the floor, and a
    route with a `level` takes only alerts escalated to that level (alerts.escalation.levels)."""
    a = transition.alert
    place = a.device
    return (
        (not route.kinds or a.kind in route.kinds)
        and (not route.districts or place.get("district") in route.districts)
        and (not route.grids or place.get("grid") in route.grids)
        and (not route.communities or place.get("community") in route.communities)
        and (not route.cities or place.get("city") in route.cities)
        and (not route.rules or a.rule in route.rules)
        and SEVERITY_RANK.get(a.severity, -1) >= SEVERITY_RANK[route.min_severity]
        and (route.level is None or level_name(a.escalation_level, levels) == route.level)
        and (not route.assignees or a.assignee in route.assignees)
    )


def matches_incident(route: WebhookRoute, transition: IncidentTransition,
                     levels: Sequence[str] = DEFAULT_LEVELS) -> bool:
    """A filter matches an incident when any member matches it; the severity floor is compared with
    the incident's severity. Incidents are at the grid level (escalation is per alert), so a route
    with a `level` above the first gets none."""
    i = transition.incident
    members = i.members

    def has(values: list[str], get: Callable[[Any], Any]) -> bool:
        return not values or any(get(m) in values for m in members)

    level = getattr(route, "level", None)
    assignees = getattr(route, "assignees", [])
    return (
        has(route.kinds, lambda m: m.kind)
        and has(route.rules, lambda m: m.rule)
        and has(route.districts, lambda m: m.device.get("district"))
        and has(route.grids, lambda m: m.device.get("grid"))
        and has(getattr(route, "communities", []), lambda m: m.device.get("community"))
        and has(getattr(route, "cities", []), lambda m: m.device.get("city"))
        and SEVERITY_RANK.get(i.severity, -1) >= SEVERITY_RANK[route.min_severity]
        and (level is None or (bool(levels) and level == levels[0]))
        and (not assignees or i.assignee in assignees)
    )


class Outbox:
    """The store's tx hook: `AlertStore(path, hooks=[outbox.enqueue])`."""

    def __init__(self, settings: WebhookSettings, clock: Callable[[], float] = time.time,
                 levels: Sequence[str] = DEFAULT_LEVELS, safety_rules: frozenset[str] = frozenset()) -> None:
        self.levels = tuple(levels)  # alerts.escalation.levels: what a route's `level` names
        self.safety_rules = safety_rules  # alerts.safety_rules: only a per-device silence holds them
        self.public_url = settings.public_url
        self.routes = list(settings.routes)
        self.default = (WebhookRoute(name=DEFAULT_ROUTE, url=settings.url, receive=list(settings.receive))
                        if settings.url else None)
        endpoints(settings)  # validates the names
        self.targets: dict[str, list[Target]] = {r.name: targets(r) for r in self.routes if r.notifies}
        self.clock = clock
        self.counters: Counter[str] = Counter()  # enqueued, unrouted

    def route(self, transition: Transition) -> list[WebhookRoute]:
        hits = [r for r in self.routes if "alerts" in r.receive and matches(r, transition, self.levels)]
        return self._with_default(hits, "alerts")

    def route_incident(self, transition: IncidentTransition) -> list[WebhookRoute]:
        """Routes with `receive: [incidents]` (or both) matching the incident, else the default route
        if it receives incidents."""
        hits = [r for r in self.routes if "incidents" in r.receive and matches_incident(r, transition, self.levels)]
        return self._with_default(hits, "incidents")

    def _with_default(self, hits: list[WebhookRoute], stream: str) -> list[WebhookRoute]:
        """The default route gets what no system route claimed (routes to people claim nothing)."""
        if self.default is not None and stream in self.default.receive and all(r.notifies for r in hits):
            hits = [*hits, self.default]
        return hits

    def _rows(self, hits: list[WebhookRoute], transition_id: str, subject_id: str, payload: Callable[[], bytes],
              note: Callable[[WebhookRoute], bytes], silence: Silence | None, holds: Holds,
              now: float) -> list[tuple[Any, ...]]:
        """One row per endpoint: a system route's gets the JSON payload, each Apprise URL of a route to
        people the notification in that route's language (rendered once per language and zone)."""
        rows: list[tuple[Any, ...]] = []
        body: bytes | None = None
        for r in hits:
            if r.notifies:
                text = note(r)
                sends = [(t.endpoint, row_url(t), text) for t in self.targets[r.name]]
            else:
                body = payload() if body is None else body
                sends = [(r.name, str(r.url), body)]
            for endpoint, url, data in sends:
                held = holds.hold(endpoint, subject_id, silence)
                rows.append((transition_id, endpoint, url, subject_id, data, now, "held" if held else "pending", held))
        return rows

    def _incident_rows(self, out: Output, now: float, holds: Holds) -> list[tuple[Any, ...]]:
        """Outbox rows of the batch's incident transitions; the incident id is the ordering lane
        (column alert_id), so one incident's transitions reach each endpoint in order."""
        rows: list[tuple[Any, ...]] = []
        for t in out.incident_transitions:
            hits = self.route_incident(t)
            if not hits:
                self.counters["unrouted_incidents"] += 1
                continue
            silence = holds.for_incident(t.incident)  # held only if a silence covers every member
            rows += self._rows(hits, t.id, t.incident_id, partial(render_incident_payload, t, self.public_url),
                               self._note(partial(incident_notification, t, public_url=self.public_url)),
                               silence, holds, now)
        return rows

    @staticmethod
    def _note(render: Callable[[str, str], Any]) -> Callable[[WebhookRoute], bytes]:
        """A route's notification body, rendered once per (language, zone) of the transition's routes."""
        cache: dict[tuple[str, str], bytes] = {}

        def note(route: WebhookRoute) -> bytes:
            key = (route.language or DEFAULT_LANGUAGE, route.timezone or DEFAULT_TIMEZONE)
            if key not in cache:
                cache[key] = encode_notification(render(*key))
            return cache[key]
        return note

    def enqueue(self, conn: sqlite3.Connection, out: Output) -> None:
        """Insert one row per (transition, endpoint) in the caller's open transaction."""
        if not out.transitions and not out.incident_transitions:
            return
        ensure_schema(conn)
        now = self.clock()
        holds = Holds(conn, now, self.safety_rules)  # silences in force (citywatch/loop/silences.py)
        rows = []
        for t in out.transitions:
            hits = self.route(t)
            if not hits:
                self.counters["unrouted"] += 1
                continue
            rows += self._rows(hits, t.id, t.alert_id, partial(render_payload, t, self.public_url),
                               self._note(partial(alert_notification, t, public_url=self.public_url)),
                               holds.for_alert(t.alert), holds, now)
        rows += self._incident_rows(out, now, holds)
        conn.executemany(_INSERT, rows)
        self.counters["enqueued"] += len(rows)
        self.counters["held"] += sum(1 for row in rows if row[-1] is not None)
