"""Silences and maintenance windows: alerts in scope are detected, stored and shown, but not sent.

A silence names a scope by any combination of matchers (device, grid, community, district, city,
kind, rule; each a list of values: any of them matches, every matcher given must match), a start,
an end, a reason and an author. While it is in force, the webhook outbox writes the rows of a
transition it covers as `held` (with the silence id) instead of `pending` (`Holds`, called from
`Outbox.enqueue` in the batch's own transaction). When it ends (its end time passes, seen on the
runner's tick, or a person ends it early) `release` looks at each held (endpoint, alert) lane:

* the alert (or incident) is still not terminal: its rows become `pending` and go out in their
  original order with their original webhook-ids (the receiver sees the opening late, once);
* it ended meanwhile and the receiver never saw its opening: `suppressed` (kept, never sent);
* it ended meanwhile but the receiver knew it (opened before the silence): sent, so the receiver
  learns how it ended rather than keeping a case open for ever;
* another silence in force covers it: it stays held, under that silence's id.

Life-safety rules (model.SAFETY_RULES and alerts.rules marked `safety: true`) are covered only by a
silence of exactly one device lasting at most `silences.max_safety_h`: a silence by grid, district
or kind never holds a gas, water-depth or forced-door alarm. A silence that names a safety rule must
be such a silence, or it is refused.

Silences live in the `silences` table of state.db, so they survive restarts; a silence whose end
passed while nothing ran is released at the next runner's first tick.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any, NamedTuple

import msgspec

from citywatch.errors import CitywatchError
from citywatch.model import KINDS, TERMINAL_STATUSES, Alert, Incident, IncidentMember

# Matchers a silence may combine, most specific first. community and city are devices' places
# above the grid (model.Device); a scope without one of them never matches a silence naming it.
MATCHER_KEYS: tuple[str, ...] = ("device", "grid", "community", "district", "city", "kind", "rule")
MAX_VALUES = 100  # values per matcher
MAX_TEXT = 128  # characters of a matcher value, the author
MAX_REASON = 500

SILENCES_SCHEMA = """
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY,
    matchers TEXT NOT NULL,
    starts_at REAL NOT NULL,
    ends_at REAL NOT NULL,
    reason TEXT NOT NULL,
    author TEXT NOT NULL,
    created_at REAL NOT NULL,
    safety INTEGER NOT NULL DEFAULT 0,
    ended_at REAL,
    ended_by TEXT,
    released_at REAL
);
CREATE INDEX IF NOT EXISTS silences_open ON silences (released_at, ends_at);
"""

_COLUMNS = "id, matchers, starts_at, ends_at, reason, author, created_at, safety, ended_at, ended_by, released_at"


class SilenceRefused(CitywatchError):
    """The silence asked for is not allowed (no matcher, too long, a safety rule too broadly...)."""


class SilenceNotFound(CitywatchError):
    """No silence with that id."""


class SilenceOver(CitywatchError):
    """The silence has already ended (early, or its end time passed)."""


class Silence(msgspec.Struct, kw_only=True):
    """One silence as stored. `safety`: it may hold life-safety rules (one device, short enough)."""

    id: str
    matchers: dict[str, list[str]]
    starts_at: float
    ends_at: float
    reason: str
    author: str
    created_at: float
    safety: bool = False
    ended_at: float | None = None
    ended_by: str | None = None
    released_at: float | None = None  # its held webhooks were looked at after it ended

    @property
    def until(self) -> float:
        """When it stops (or stopped) holding: its end, or the time a person ended it."""
        return self.ended_at if self.ended_at is not None else self.ends_at

    def in_force(self, now: float) -> bool:
        return self.ended_at is None and self.starts_at <= now < self.ends_at

    def state(self, now: float) -> str:
        """scheduled | active | expired (its end passed) | ended (a person ended it early)."""
        if self.ended_at is not None:
            return "ended"
        if now >= self.ends_at:
            return "expired"
        return "active" if now >= self.starts_at else "scheduled"

    def covers(self, scope: Mapping[str, Any], safety: bool) -> bool:
        """Every matcher holds a value of the scope; a safety subject needs a safety silence."""
        if safety and not self.safety:
            return False
        for key, values in self.matchers.items():
            value = scope.get(key)
            if value is None or value == "" or str(value) not in values:
                return False
        return True

    def scope_text(self) -> str:
        """`grid=G7 kind=noise|water`: the scope in one line (InfluxDB tag, CLI)."""
        return " ".join(f"{key}={'|'.join(self.matchers[key])}" for key in MATCHER_KEYS if key in self.matchers)

    def to_json(self, now: float) -> dict[str, Any]:
        """What the API and `silences list --json` show: UTC times, the state at `now`."""
        return {"id": self.id, "state": self.state(now), "matchers": self.matchers, "scope": self.scope_text(),
                "starts_at": rfc3339(self.starts_at), "ends_at": rfc3339(self.ends_at), "reason": self.reason,
                "author": self.author, "created_at": rfc3339(self.created_at), "covers_safety_rules": self.safety,
                "ended_at": rfc3339(self.ended_at), "ended_by": self.ended_by}


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- what a person asks for, checked ------------------------------------------------------------------


class SilenceRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A silence as the API (JSON body) and the CLI ask for it. Matchers: a string or a list of
    strings each. Times: RFC 3339 with an offset, or epoch seconds; `end` or `duration` ("3h")."""

    device: str | list[str] | None = None
    grid: str | list[str] | None = None
    community: str | list[str] | None = None
    district: str | list[str] | None = None
    city: str | list[str] | None = None
    kind: str | list[str] | None = None
    rule: str | list[str] | None = None
    start: str | float | None = None
    end: str | float | None = None
    duration: str | None = None
    reason: str = ""
    by: str = ""


class Policy(NamedTuple):
    """The limits a silence is checked against (settings.silences and the rule set)."""

    max_safety_h: float
    max_days: float
    safety_rules: frozenset[str]
    known_rules: frozenset[str]  # empty: any rule name is accepted


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """`3h`, `90m`, `1h30m`, `2d`, `45s` -> seconds; SilenceRefused otherwise."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(f"{n}{u}" for n, u in parts) != compact:
        raise SilenceRefused(f"duration {text!r}: use a number with s, m, h or d, e.g. 3h, 90m, 1h30m, 2d")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def parse_time(value: str | float, field: str, local: tzinfo | None = None) -> float:
    """RFC 3339 / ISO 8601 text or epoch seconds -> epoch seconds. Text without an offset is read in
    `local` (the CLI: the city's time zone) or refused (the API: machines say which zone they mean)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise SilenceRefused(f"{field}: a time is RFC 3339 text or epoch seconds")
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise SilenceRefused(f"{field}: {value!r} is not a time (use e.g. 2026-11-27T08:00:00+08:00)") from None
    if when.tzinfo is None:
        if local is None:
            raise SilenceRefused(f"{field}: {value!r} has no UTC offset (e.g. +08:00 or Z)")
        when = when.replace(tzinfo=local)
    return when.timestamp()


def _text(value: str, field: str, limit: int = MAX_TEXT) -> str:
    value = value.strip()
    if not value.isprintable():
        raise SilenceRefused(f"{field}: must be printable text (no control characters or line breaks)")
    if len(value) > limit:
        raise SilenceRefused(f"{field}: at most {limit} characters")
    return value


def _matchers(request: SilenceRequest, policy: Policy) -> dict[str, list[str]]:
    matchers: dict[str, list[str]] = {}
    for key in MATCHER_KEYS:
        raw = getattr(request, key)
        if raw is None:
            continue
        values = [raw] if isinstance(raw, str) else list(raw)
        cleaned = list(dict.fromkeys(_text(v, key) for v in values))
        if not cleaned or any(not v for v in cleaned):
            raise SilenceRefused(f"{key}: empty value")
        if len(cleaned) > MAX_VALUES:
            raise SilenceRefused(f"{key}: at most {MAX_VALUES} values")
        matchers[key] = cleaned
    if not matchers:
        raise SilenceRefused("a silence needs at least one matcher (device, grid, community, district, city, kind "
                             "or rule): one without any would silence the whole city")
    unknown_kinds = [k for k in matchers.get("kind", []) if k not in KINDS]
    if unknown_kinds:
        raise SilenceRefused(f"kind: unknown {unknown_kinds} (one of {', '.join(KINDS)})")
    if policy.known_rules:
        unknown_rules = [r for r in matchers.get("rule", []) if r not in policy.known_rules]
        if unknown_rules:
            raise SilenceRefused(f"rule: unknown {unknown_rules}")
    return matchers


def build(request: SilenceRequest, policy: Policy, now: float, local: tzinfo | None = None,
          new_id: Callable[[], str] | None = None) -> Silence:
    """Check a request against the policy and make the Silence (not yet stored)."""
    matchers = _matchers(request, policy)
    reason = _text(request.reason, "reason", MAX_REASON)
    if not reason:
        raise SilenceRefused("reason: say why (e.g. 'road works on Zhongshan Rd, permit 2026-118')")
    author = _text(request.by, "by")
    if not author:
        raise SilenceRefused("by: say who sets the silence")
    start = now if request.start in (None, "", "now") else parse_time(request.start, "start", local)
    if request.end is not None and request.duration is not None:
        raise SilenceRefused("give end or duration, not both")
    if request.end is not None:
        end = parse_time(request.end, "end", local)
    elif request.duration is not None:
        end = start + parse_duration(request.duration)
    else:
        raise SilenceRefused("give an end (end, or duration such as 3h)")
    if not end > start:
        raise SilenceRefused("end must be after start")
    if end <= now:
        raise SilenceRefused("end is in the past: the silence would hold nothing")
    if end - start > policy.max_days * 86400:
        raise SilenceRefused(f"a silence lasts at most silences.max_days ({policy.max_days:g} days)")
    devices = matchers.get("device", [])
    per_device = len(devices) == 1
    short = end - start <= policy.max_safety_h * 3600
    named_safety = sorted(set(matchers.get("rule", [])) & policy.safety_rules)
    if named_safety:
        if not per_device:
            raise SilenceRefused(f"{', '.join(named_safety)}: a life-safety rule can be silenced only per device "
                                 "(give exactly one --device)")
        if not short:
            raise SilenceRefused(f"{', '.join(named_safety)}: a life-safety rule can be silenced for at most "
                                 f"silences.max_safety_h ({policy.max_safety_h:g} h)")
    silence_id = new_id() if new_id is not None else f"si_{secrets.token_hex(6)}"
    return Silence(id=silence_id, matchers=matchers, starts_at=start, ends_at=end, reason=reason, author=author,
                   created_at=now, safety=per_device and short)


# -- the table --------------------------------------------------------------------------------------


def _row(row: Sequence[Any]) -> Silence:
    (id_, matchers, starts_at, ends_at, reason, author, created_at, safety, ended_at, ended_by, released_at) = row
    return Silence(id=id_, matchers=json.loads(matchers), starts_at=starts_at, ends_at=ends_at, reason=reason,
                   author=author, created_at=created_at, safety=bool(safety), ended_at=ended_at, ended_by=ended_by,
                   released_at=released_at)


def insert(conn: sqlite3.Connection, silence: Silence) -> None:
    conn.execute(f"INSERT INTO silences ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (silence.id, json.dumps(silence.matchers, sort_keys=True), silence.starts_at, silence.ends_at,
                  silence.reason, silence.author, silence.created_at, int(silence.safety), silence.ended_at,
                  silence.ended_by, silence.released_at))


def get(conn: sqlite3.Connection, silence_id: str) -> Silence | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM silences WHERE id = ?", (silence_id,)).fetchone()
    return _row(row) if row else None


def listed(conn: sqlite3.Connection, now: float, everything: bool = False, limit: int = 1000) -> list[Silence]:
    """Silences in force or scheduled (or, with `everything`, all, newest first)."""
    if everything:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM silences ORDER BY created_at DESC LIMIT ?", (limit,))
    else:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM silences WHERE ended_at IS NULL AND ends_at > ?"
                            " ORDER BY starts_at LIMIT ?", (now, limit))
    return [_row(row) for row in rows]


def in_force(conn: sqlite3.Connection, now: float) -> list[Silence]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM silences WHERE released_at IS NULL AND ended_at IS NULL"
                        " AND starts_at <= ? AND ends_at > ?", (now, now))
    return [_row(row) for row in rows]


def due(conn: sqlite3.Connection, now: float) -> list[Silence]:
    """Silences over (ended, or their end passed) whose held webhooks were not yet released."""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM silences WHERE released_at IS NULL"
                        " AND (ended_at IS NOT NULL OR ends_at <= ?) ORDER BY ends_at", (now,))
    return [_row(row) for row in rows]


def mark_ended(conn: sqlite3.Connection, silence: Silence, by: str, now: float) -> Silence:
    """End a silence early (in the caller's transaction). SilenceOver if it already ended."""
    if silence.ended_at is not None or now >= silence.ends_at:
        raise SilenceOver(f"silence {silence.id} is already over ({silence.state(now)} at {rfc3339(silence.until)})")
    conn.execute("UPDATE silences SET ended_at = ?, ended_by = ? WHERE id = ? AND ended_at IS NULL",
                 (now, by, silence.id))
    silence.ended_at, silence.ended_by = now, by
    return silence


# -- what a silence covers ------------------------------------------------------------------------------


def alert_scope(alert: Alert) -> dict[str, Any]:
    """The matcher values of an alert: its device, rule, kind and the device's places."""
    place = alert.device
    return {"device": alert.device_id, "kind": alert.kind, "rule": alert.rule, "grid": place.get("grid"),
            "community": place.get("community"), "district": place.get("district"), "city": place.get("city")}


def is_safety(alert: Alert, safety_rules: frozenset[str] = frozenset()) -> bool:
    return alert.safety or alert.rule in safety_rules


def member_scope(member: IncidentMember) -> dict[str, Any]:
    """The matcher values of one member alert of an incident."""
    place = member.device
    return {"device": member.device_id, "kind": member.kind, "rule": member.rule, "grid": place.get("grid"),
            "community": place.get("community"), "district": place.get("district"), "city": place.get("city")}


Scopes = Sequence[tuple[Mapping[str, Any], bool]]  # (matcher values, is a life-safety alarm) per alert


def incident_scopes(incident: Incident, safety_rules: frozenset[str]) -> Scopes:
    """An incident's scope is its members': a silence covers it only if it covers every member."""
    return [(member_scope(m), m.rule in safety_rules) for m in incident.members]


def silence_for(silences: Iterable[Silence], scope: Mapping[str, Any], *, safety: bool,
                now: float) -> Silence | None:
    """The silence in force at `now` that covers `scope` (the one lasting longest), or None.

    `scope`: matcher values of the subject (alert_scope); a key missing from it never matches a
    silence naming that key. `safety`: the subject is a life-safety alarm, which only a per-device
    safety silence covers."""
    return silence_for_all(silences, [(scope, safety)], now)


def silence_for_all(silences: Iterable[Silence], scopes: Scopes, now: float) -> Silence | None:
    """The silence in force covering every one of `scopes` (an incident's members), or None."""
    if not scopes:
        return None
    best: Silence | None = None
    for silence in silences:
        if (silence.in_force(now) and all(silence.covers(scope, safety) for scope, safety in scopes)
                and (best is None or silence.ends_at > best.ends_at)):
            best = silence
    return best


class Holds:
    """Per outbox batch: the silences in force and which (endpoint, subject) lanes are already held.

    A lane with a held row holds what comes after it too (same silence id), so a receiver never gets
    a later transition before the earlier ones the silence kept back."""

    def __init__(self, conn: sqlite3.Connection, now: float, safety_rules: frozenset[str] = frozenset()) -> None:
        self.conn = conn
        self.now = now
        self.safety_rules = safety_rules
        self.silences = in_force(conn, now)
        self.any_held = conn.execute("SELECT 1 FROM webhook_outbox WHERE status = 'held' LIMIT 1").fetchone() \
            is not None
        self._lanes: dict[tuple[str, str], str | None] = {}

    def for_alert(self, alert: Alert) -> Silence | None:
        if not self.silences:
            return None
        return silence_for(self.silences, alert_scope(alert), safety=is_safety(alert, self.safety_rules), now=self.now)

    def for_incident(self, incident: Incident) -> Silence | None:
        """An incident is held only by a silence covering all its members (a grid silence never holds
        an incident with a life-safety member)."""
        if not self.silences:
            return None
        return silence_for_all(self.silences, incident_scopes(incident, self.safety_rules), self.now)

    def hold(self, endpoint: str, subject_id: str, silence: Silence | None) -> str | None:
        """The silence id the row of `subject_id` to `endpoint` is held under, or None (send it)."""
        key = (endpoint, subject_id)
        if silence is not None:
            self._lanes[key] = silence.id
            return silence.id
        if key not in self._lanes:
            row = None
            if self.any_held:
                row = self.conn.execute("SELECT silence_id FROM webhook_outbox WHERE status = 'held' AND endpoint = ?"
                                        " AND alert_id = ? LIMIT 1", (endpoint, subject_id)).fetchone()
            self._lanes[key] = row[0] if row else None
        return self._lanes[key]


# -- when a silence ends -------------------------------------------------------------------------------


class Subject(NamedTuple):
    """What release needs to know about the alert (or incident) a held lane belongs to."""

    terminal: bool
    scopes: Scopes  # one per alert (an incident: its members)


SubjectLookup = Callable[[sqlite3.Connection, Sequence[str], frozenset[str]], dict[str, Subject]]
_decode_alert = msgspec.json.Decoder(Alert).decode
_decode_incident = msgspec.json.Decoder(Incident).decode


def _by_id(conn: sqlite3.Connection, table: str, ids: Sequence[str]) -> Iterator[tuple[str, str, bytes]]:
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
        return
    for start in range(0, len(ids), 500):
        chunk = list(ids[start:start + 500])
        yield from conn.execute(f"SELECT id, status, body FROM {table} WHERE id IN ({','.join('?' * len(chunk))})",
                                chunk)


def alert_subjects(conn: sqlite3.Connection, ids: Sequence[str], safety_rules: frozenset[str]) -> dict[str, Subject]:
    found: dict[str, Subject] = {}
    for alert_id, status, body in _by_id(conn, "alerts", ids):
        alert = _decode_alert(body)
        found[alert_id] = Subject(status in TERMINAL_STATUSES, [(alert_scope(alert), is_safety(alert, safety_rules))])
    return found


def incident_subjects(conn: sqlite3.Connection, ids: Sequence[str],
                      safety_rules: frozenset[str]) -> dict[str, Subject]:
    found: dict[str, Subject] = {}
    for incident_id, status, body in _by_id(conn, "incidents", ids):
        found[incident_id] = Subject(status == "closed", incident_scopes(_decode_incident(body), safety_rules))
    return found


# Where release looks up the subjects of held lanes (an outbox lane is an alert id or an incident
# id); a subject none of them knows is sent (fail safe).
SUBJECT_LOOKUPS: list[SubjectLookup] = [alert_subjects, incident_subjects]
OPENINGS = frozenset({"opened", "flapping"})


class Released(NamedTuple):
    pending: int  # rows now due to be sent
    suppressed: int  # rows of subjects that ended unseen: kept, never sent
    reheld: int  # rows still held, under another silence in force


def release(conn: sqlite3.Connection, over: Sequence[Silence], now: float,
            safety_rules: frozenset[str] = frozenset(), lookups: Sequence[SubjectLookup] | None = None) -> Released:
    """In the caller's transaction: decide the held rows of the silences `over` (see the module
    docstring) and mark those silences released."""
    ids = [s.id for s in over]
    if not ids:
        return Released(0, 0, 0)
    marks = ",".join("?" * len(ids))
    # Whole lanes: a lane's held rows may be under several silences (the one in force when each was
    # written); deciding them together keeps the lane's order whichever silence ends first.
    touched = conn.execute(f"SELECT DISTINCT endpoint, alert_id FROM webhook_outbox WHERE status = 'held'"
                           f" AND silence_id IN ({marks})", ids).fetchall()
    lanes: dict[tuple[str, str], list[tuple[int, bytes]]] = {}
    for endpoint, subject_id in touched:
        lanes[(endpoint, subject_id)] = conn.execute(
            "SELECT seq, body FROM webhook_outbox WHERE status = 'held' AND endpoint = ? AND alert_id = ?"
            " ORDER BY seq", (endpoint, subject_id)).fetchall()
    subjects: dict[str, Subject] = {}
    wanted = list({subject_id for _, subject_id in lanes})
    for lookup in (SUBJECT_LOOKUPS if lookups is None else lookups):
        subjects.update(lookup(conn, [i for i in wanted if i not in subjects], safety_rules))
    remaining = [s for s in in_force(conn, now) if s.id not in ids]
    counts = {"pending": 0, "suppressed": 0, "reheld": 0}
    for (_endpoint, subject_id), held in lanes.items():
        seqs = [seq for seq, _ in held]
        subject = subjects.get(subject_id)
        other = None if subject is None else silence_for_all(remaining, subject.scopes, now)
        if subject is not None and subject.terminal and _opening(held[0][1]):
            _set(conn, seqs, "status = 'suppressed'")
            counts["suppressed"] += len(seqs)
        elif other is not None:
            _set(conn, seqs, "silence_id = ?", other.id)
            counts["reheld"] += len(seqs)
        else:
            _set(conn, seqs, "status = 'pending', next_attempt_at = 0")
            counts["pending"] += len(seqs)
    conn.execute(f"UPDATE silences SET released_at = ? WHERE id IN ({marks})", [now, *ids])
    return Released(counts["pending"], counts["suppressed"], counts["reheld"])


def _opening(body: bytes) -> bool:
    """Is this held row the subject's opening (so the receiver never heard of it)?"""
    try:
        return json.loads(body).get("transition") in OPENINGS
    except (ValueError, AttributeError):
        return False


def _set(conn: sqlite3.Connection, seqs: Sequence[int], assignment: str, *args: Any) -> None:
    for start in range(0, len(seqs), 500):
        chunk = list(seqs[start:start + 500])
        conn.execute(f"UPDATE webhook_outbox SET {assignment} WHERE seq IN ({','.join('?' * len(chunk))})",
                     [*args, *chunk])
