"""Dispatch both ways, the inbound half: what the dispatch system tells us, verified and applied once.

The dispatch system POSTs one JSON object per message to /dispatch/events (dispatch_api.py), e.g.
`{"type": "alert.assigned", "alert_id": "al_...", "assignee": "gas crew 3", "by": "dispatch"}`, signed
per Standard Webhooks with its *own* secret (`dispatch.secret`, never the outbound webhooks.secret):
headers `webhook-id`, `webhook-timestamp` (integer seconds), `webhook-signature` (`v1,<base64
HMAC-SHA256 of "id.timestamp.body">`, several space-separated during a key rotation). Types:
`alert.` or `incident.` followed by `assigned` (needs `assignee`), `on_site`, `rectified` (`note`,
`evidence`: http(s) links), `rejected` (needs `reason`), `closed`. An accepted message is one stored
transition, sent onward through the outbox like any other.

Checks, in this order; every refusal changes nothing (`code` is a stable English code):

* 503 `not_configured`: no dispatch.secret.
* 401 `bad_signature`: a header missing or malformed, or no signature matches any configured secret.
* 400 `bad_webhook_id` (longer than 256 or not printable ASCII); 400 `stale_timestamp` /
  `future_timestamp`: authentic, but more than `dispatch.tolerance_s` from our clock (a replay of a
  captured message, or the sender's clock is off).
* a webhook-id accepted before: the first answer again (same status and body, header
  `Citywatch-Repeat: true`); the same id with a different body is 409 `webhook_id_reused`.
* 400 `malformed_body` (not a JSON object); 422 `invalid_event` (unknown type, missing id, bad field).
* 404 `unknown_alert` / `unknown_incident`; 409 `illegal_transition` (rectified before assigned,
  anything after closed); 501 `not_implemented` (incident types while this runner cannot dispatch
  incidents); 503 `storage_error` (the disk: try again).
* 200 `accepted`, with the transitions it made.

Only accepted messages are remembered: their receipt (in state.db, table `dispatch_receipts`) is
written in the action's own transaction, so a repeat finds it exactly when the action is stored, and
kept `dispatch.receipts_days` (beyond the timestamp tolerance, so a captured message cannot be
replayed once its receipt is gone). A refused message changed nothing, so the same id may come again
(fixed, or once its turn has come) and is judged afresh.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import msgspec
from standardwebhooks.webhooks import Webhook

from citywatch.config import DispatchSettings
from citywatch.errors import CitywatchError
from citywatch.model import DISPATCH_ACTIONS, Output

SCOPES = ("alert", "incident")
EVENT_TYPES: tuple[str, ...] = tuple(f"{scope}.{action}" for scope in SCOPES for action in DISPATCH_ACTIONS)
MAX_WEBHOOK_ID = 256
MAX_EVIDENCE = 20
MAX_URL = 2048
LIMITS = {"assignee": 200, "by": 128, "note": 4000, "reason": 1000, "alert_id": 128, "incident_id": 128}
REPEAT_HEADER = "Citywatch-Repeat"

RECEIPTS_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS dispatch_receipts (
        webhook_id TEXT PRIMARY KEY,
        received_at REAL NOT NULL,
        digest TEXT NOT NULL,
        status INTEGER NOT NULL,
        response BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS dispatch_receipts_age ON dispatch_receipts (received_at)",
)

_encode = msgspec.json.Encoder().encode
_T = TypeVar("_T")


class Refused(CitywatchError):
    """The message is not applied: answer `status` with `{"error": message, "code": code}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(message)

    def body(self) -> bytes:
        return _encode({"error": str(self), "code": self.code})


# -- authenticity ----------------------------------------------------------------------------------


def verify_signature(keys: list[Webhook], headers: Mapping[str, str], body: bytes, now: float,
                     tolerance_s: float) -> str:
    """The message's webhook-id if one of its signatures matches one of `keys` (constant-time) and its
    timestamp is within `tolerance_s` of `now`; else Refused (401, or 400 for an authentic message
    whose id or timestamp is unusable)."""
    webhook_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    given = headers.get("webhook-signature", "")
    missing = [name for name, value in (("webhook-id", webhook_id), ("webhook-timestamp", stamp),
                                        ("webhook-signature", given)) if not value]
    if missing:
        raise Refused(401, "bad_signature", f"missing header(s) {', '.join(missing)}: sign per Standard Webhooks")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise Refused(401, "bad_signature", "webhook-timestamp must be integer seconds since the epoch")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(401, "bad_signature", "the body is not UTF-8 text, so it cannot be a signed JSON message") \
            from None
    when = datetime.fromtimestamp(int(stamp), UTC)
    offered = [part.partition(",")[2].encode() for part in given.split() if part.startswith("v1,")]
    matched = False
    for key in keys:  # every key and every signature: the time taken says nothing about which matched
        expected = key.sign(webhook_id, when, text).partition(",")[2].encode()
        for signature in offered:
            matched |= hmac.compare_digest(expected, signature)
    if not matched:
        raise Refused(401, "bad_signature", "no webhook-signature matches: sign with the dispatch system's own "
                                            "secret (dispatch.secret on our side)")
    if len(webhook_id) > MAX_WEBHOOK_ID or not (webhook_id.isascii() and webhook_id.isprintable()):
        raise Refused(400, "bad_webhook_id", f"webhook-id must be printable ASCII of at most {MAX_WEBHOOK_ID} "
                                             "characters")
    skew = int(stamp) - now
    if skew < -tolerance_s:
        raise Refused(400, "stale_timestamp", f"webhook-timestamp is {-skew:.0f} s old (at most {tolerance_s:g} s "
                                              "is accepted): a replay, or the sender's clock is behind")
    if skew > tolerance_s:
        raise Refused(400, "future_timestamp", f"webhook-timestamp is {skew:.0f} s ahead of our clock (at most "
                                               f"{tolerance_s:g} s is accepted): the sender's clock is ahead")
    return webhook_id


# -- the message -----------------------------------------------------------------------------------


class DispatchEvent(msgspec.Struct, kw_only=True):
    """One message from the dispatch system (unknown extra fields are ignored)."""

    type: str
    alert_id: str | None = None
    incident_id: str | None = None
    assignee: str = ""
    note: str = ""
    evidence: list[str] = []
    reason: str = ""
    by: str = "dispatch"

    @property
    def scope(self) -> str:
        return self.type.partition(".")[0]

    @property
    def action(self) -> str:
        return self.type.partition(".")[2]

    @property
    def target(self) -> str:
        """The alert or incident id the message is about."""
        return (self.alert_id if self.scope == "alert" else self.incident_id) or ""


class ActionDetail(msgspec.Struct, kw_only=True):
    """The optional JSON body of POST /alerts/{id}/assign|on-site|rectify|reject|close (people, the CLI)."""

    by: str = "api"
    assignee: str = ""
    note: str = ""
    evidence: list[str] = []
    reason: str = ""


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise Refused(400, "malformed_body", f"body is not JSON: {exc}") from None
    except RecursionError:
        raise Refused(400, "malformed_body", "body is nested too deeply") from None
    if not isinstance(value, dict):
        raise Refused(400, "malformed_body", f"body must be a JSON object, not {type(value).__name__}")
    return value


def _convert(value: dict[str, Any], into: type[_T]) -> _T:
    try:
        return msgspec.convert(value, into)
    except msgspec.ValidationError as exc:
        raise Refused(422, "invalid_event", str(exc)) from None


def _text(name: str, value: str, multiline: bool = False) -> str:
    value = value.strip()
    if len(value) > LIMITS[name]:
        raise Refused(422, "invalid_event", f"{name}: at most {LIMITS[name]} characters")
    if not all(c.isprintable() or (multiline and c in "\n\t") for c in value):
        raise Refused(422, "invalid_event", f"{name}: must be printable text"
                                            + ("" if multiline else " on one line"))
    return value


def _links(evidence: list[str]) -> list[str]:
    if len(evidence) > MAX_EVIDENCE:
        raise Refused(422, "invalid_event", f"evidence: at most {MAX_EVIDENCE} links")
    for link in evidence:
        parts = urlsplit(link) if len(link) <= MAX_URL and link.isprintable() and " " not in link else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise Refused(422, "invalid_event", f"evidence: each link must be an http(s) URL of at most {MAX_URL} "
                                                f"characters, got {link[:80]!r}")
    return list(evidence)


def _checked_detail(action: str, assignee: str, note: str, evidence: list[str], reason: str,
                    by: str) -> tuple[str, str, list[str], str, str]:
    assignee, note, reason = _text("assignee", assignee), _text("note", note, multiline=True), _text("reason", reason)
    by = _text("by", by)
    if action == "assigned" and not assignee:
        raise Refused(422, "invalid_event", "assigned needs an assignee (team or person)")
    if action == "rejected" and not reason:
        raise Refused(422, "invalid_event", "rejected needs a reason")
    return assignee, note, _links(evidence), reason, by


def parse_event(body: bytes) -> DispatchEvent:
    """The message in `body`, checked; Refused 400 (not a JSON object) or 422 (not a valid message)."""
    event = _convert(_json_object(body), DispatchEvent)
    if event.type not in EVENT_TYPES:
        raise Refused(422, "invalid_event", f"type must be one of {', '.join(EVENT_TYPES)}; got {event.type[:80]!r}")
    id_field = f"{event.scope}_id"
    target = _text(id_field, event.target)
    if not target:
        raise Refused(422, "invalid_event", f"{event.type} needs {id_field}")
    assignee, note, evidence, reason, by = _checked_detail(event.action, event.assignee, event.note,
                                                           event.evidence, event.reason, event.by)
    return msgspec.structs.replace(event, assignee=assignee, note=note, evidence=evidence, reason=reason,
                                   by=by or "dispatch", **{id_field: target})


def parse_detail(action: str, body: bytes) -> ActionDetail:
    """The optional body of a person's dispatch action; an empty body is `by: api` and nothing else."""
    detail = _convert(_json_object(body), ActionDetail) if body.strip() else ActionDetail()
    assignee, note, evidence, reason, by = _checked_detail(action, detail.assignee, detail.note, detail.evidence,
                                                           detail.reason, detail.by)
    return ActionDetail(by=by or "api", assignee=assignee, note=note, evidence=evidence, reason=reason)


# -- receipts: each accepted message once ---------------------------------------------------------


class Receipt(NamedTuple):
    webhook_id: str
    digest: str
    status: int
    response: bytes


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class Receipts:
    """Accepted messages by webhook-id, in state.db beside the alerts (the runner's own connection, on
    its event loop thread: a lookup and the action's commit run with no await between them)."""

    def __init__(self, conn: sqlite3.Connection, settings: DispatchSettings) -> None:
        self.conn = conn
        self.keep_s = settings.receipts_days * 86400.0
        for statement in RECEIPTS_SCHEMA:
            conn.execute(statement)

    def find(self, webhook_id: str) -> Receipt | None:
        row = self.conn.execute("SELECT webhook_id, digest, status, response FROM dispatch_receipts"
                                " WHERE webhook_id = ?", (webhook_id,)).fetchone()
        return Receipt(*row) if row else None

    def writer(self, webhook_id: str, body_digest: str, at: float,
               render: Callable[[Output], bytes]) -> ReceiptWriter:
        return ReceiptWriter(self, webhook_id, body_digest, at, render)


class ReceiptWriter:
    """A store hook: writes the receipt (the answer rendered from what the action committed) in the
    action's own transaction, and forgets receipts older than dispatch.receipts_days."""

    def __init__(self, receipts: Receipts, webhook_id: str, body_digest: str, at: float,
                 render: Callable[[Output], bytes]) -> None:
        self.receipts = receipts
        self.webhook_id = webhook_id
        self.digest = body_digest
        self.at = at
        self.render = render
        self.response: bytes | None = None

    def __call__(self, conn: sqlite3.Connection, out: Output) -> None:
        self.response = self.render(out)
        conn.execute("INSERT INTO dispatch_receipts VALUES (?, ?, ?, 200, ?)",  # a second one: roll back, never twice
                     (self.webhook_id, self.at, self.digest, self.response))
        conn.execute("DELETE FROM dispatch_receipts WHERE received_at < ?", (self.at - self.receipts.keep_s,))


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def accepted(webhook_id: str, event_type: str, out: Output) -> bytes:
    """The answer to an accepted message: the transitions it made (alerts', and incidents' if any)."""
    made: list[dict[str, Any]] = [
        {"id": t.id, "alert_id": t.alert_id, "transition": t.transition, "status": t.alert.status,
         "at": rfc3339(t.at)} for t in out.transitions]
    for t in getattr(out, "incident_transitions", ()):
        made.append({"id": t.id, "incident_id": getattr(t, "incident_id", None), "transition": t.transition,
                     "at": rfc3339(t.at)})
    return _encode({"status": "accepted", "code": "accepted", "webhook_id": webhook_id, "type": event_type,
                    "transitions": made})
