"""Webhook delivery: drain the outbox over HTTP, signed per Standard Webhooks, at least once.

Each endpoint is a lane with its own concurrency limit and Retry-After pause, so a slow or dead
receiver only delays itself. Within a lane, one alert's transitions leave strictly in order:
n+1 is sent only after n was delivered (or declared dead). State lives in SQLite, not in memory,
so a kill -9 loses nothing: pending rows go out again on restart with the same webhook-id.

Which answers end a delivery (the policy, in `_classify`):

* 2xx: delivered.
* 410 Gone: dead at once (the receiver says the endpoint is gone for good).
* other 4xx but 408/409/425/429: the receiver refuses this payload or our credentials; retried with
  backoff, dead after `webhooks.client_error_attempts` attempts (a receiver being redeployed may
  404 for a while; one with a wrong secret will not heal by itself).
* 3xx: not followed (a redirect could turn the POST into a GET or leak the signature elsewhere);
  retried with backoff, and the Location is logged (rate-limited) and kept in last_error, so a
  person fixes the url; pending rows go to the endpoint's url as configured at send time.
* 5xx, 408, 409, 425, 429, timeouts and connection errors: retried for ever with backoff capped
  at `backoff_max_s`, honouring Retry-After.

Dead rows keep last_status and last_error; `citywatch webhooks resend` sets them pending again
(same webhook-id, so receivers deduplicate) and a running runner picks them up at its next poll.

Notifications to people (routes with `apprise:`, citywatch/sinks/notify.py) are rows of the same
outbox, one endpoint per Apprise URL, and go through the same lanes, order, backoff and dead/resend;
only the send differs (Apprise in a worker thread) and what counts as an answer: an HTTP status
Apprise reports is classified as above; a target no longer configured is dead at once; anything else
(connection refused, SMTP errors, timeouts) is retried for ever with backoff. A stop waits for the
notifications in flight and records them (an Apprise send cannot be taken back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import NamedTuple

import aiohttp
from pydantic import SecretStr
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook, WebhookVerificationError

from citywatch.config import WebhookSettings
from citywatch.errors import ConfigError
from citywatch.ratelog import LogLimiter
from citywatch.sinks.notify import URL_PREFIX, Attempt, Notifier
from citywatch.sinks.outbox import (
    OUTBOX_SCHEMA,
    Outbox,
    endpoints,
    ensure_schema,
    render_payload,
    route_endpoints,
    route_secret,
)

__all__ = ["OUTBOX_SCHEMA", "Outbox", "WebhookDelivery", "backoff_s", "parse_retry_after", "render_payload",
           "sign", "signing_keys", "verify"]

log = logging.getLogger(__name__)
_JITTER = random.Random()  # backoff jitter; the global generator belongs to the application

USER_AGENT = "citywatch/0.1"
POLL_S = 1.0  # rows committed by another process (CLI, API) are picked up within this
ERROR_LIMIT = 2048  # bytes of a rejecting response kept in last_error
RETRY_AFTER_MAX_S = 86400.0  # a buggy Retry-After must not park an endpoint for years
PERMANENT = frozenset({410})  # refusals that end a delivery at the first answer
TRANSIENT_4XX = frozenset({408, 409, 425, 429})  # client errors that say "later", retried for ever
LIBRARY_TOLERANCE_S = 300  # standardwebhooks' Webhook.verify window, fixed in the library


# -- signing ----------------------------------------------------------------------------------

def _key(secret: str) -> Webhook:
    try:  # whsec_<base64> is decoded by the library; anything else is the raw UTF-8 key
        return Webhook(secret) if secret.startswith("whsec_") else Webhook(secret.encode())
    except (ValueError, EmptyWebhookSecretError):  # binascii.Error is a ValueError
        raise ConfigError("webhook secret: empty, or whsec_ followed by invalid base64") from None


def signing_keys(secret: SecretStr | None) -> list[Webhook]:
    """Keys to sign with; several space-separated whsec_ secrets sign with each (key rotation)."""
    if secret is None:
        return []
    value = secret.get_secret_value()
    parts = value.split()
    if len(parts) > 1 and all(p.startswith("whsec_") for p in parts):
        return [_key(p) for p in parts]
    return [_key(value)]


def sign(keys: list[Webhook], webhook_id: str, timestamp: int, body: bytes) -> str:
    when = datetime.fromtimestamp(timestamp, UTC)
    return " ".join(k.sign(webhook_id, when, body.decode()) for k in keys)


def verify(secret: str, headers: Mapping[str, str], body: bytes, tolerance_s: float = 300) -> bool:
    """Receiver side: True if a v1 signature matches (constant-time) and the timestamp is fresh.

    `Webhook.verify` has a fixed 5-minute window, so `tolerance_s` can only narrow it.
    """
    if tolerance_s > LIBRARY_TOLERANCE_S:
        raise ValueError(f"tolerance_s above {LIBRARY_TOLERANCE_S} s is not supported")
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        stamp = float(lowered.get("webhook-timestamp", ""))
    except ValueError:
        return False
    if abs(time.time() - stamp) > tolerance_s:
        return False
    try:
        _key(secret).verify(body, lowered, json_parse=False)
    except (WebhookVerificationError, ValueError):  # malformed headers or body raise ValueError
        return False
    return True


# -- retry policy -----------------------------------------------------------------------------

def backoff_s(attempt: int, initial: float, maximum: float,
              rand: Callable[[], float] = _JITTER.random) -> float:
    """Full jitter: uniform over [0, min(maximum, initial * 2**(attempt-1))], so retries spread out."""
    return rand() * min(maximum, initial * 2.0 ** min(max(attempt - 1, 0), 60))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_MAX_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, when.timestamp() - now), RETRY_AFTER_MAX_S)


# -- delivery ---------------------------------------------------------------------------------

class _Row(NamedTuple):
    seq: int
    webhook_id: str
    url: str
    alert_id: str
    body: bytes
    attempts: int


class _Outcome(NamedTuple):
    kind: str  # delivered | retry | refused (dead after client_error_attempts) | dead
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    unreachable: bool = False  # nothing answered: the whole endpoint is down, not this request


class _Lane:
    """One endpoint: the alerts with a request in flight, and a pause (Retry-After, or the endpoint
    unreachable: then one backoff for the lane, not one retry storm per pending alert)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.busy: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()
        self.paused_until = 0.0
        self.unreachable = 0  # consecutive connection failures


# The oldest pending row of each (endpoint, alert) that is due: only heads are ever sent.
_HEADS = """
SELECT seq, webhook_id, url, alert_id, body, attempts FROM webhook_outbox AS o
WHERE status = 'pending' AND endpoint = ? AND next_attempt_at <= ?
  AND NOT EXISTS (SELECT 1 FROM webhook_outbox AS p WHERE p.status = 'pending'
                  AND p.endpoint = o.endpoint AND p.alert_id = o.alert_id AND p.seq < o.seq)
ORDER BY next_attempt_at, seq LIMIT ?
"""
_NEXT_DUE = ("SELECT MIN(next_attempt_at) FROM webhook_outbox"
             " WHERE status = 'pending' AND endpoint = ? AND next_attempt_at > ?")


class WebhookDelivery:
    """Sends outbox rows; `run` until `stop` is set, `notify` after each commit that enqueued rows."""

    def __init__(self, db_path: Path, settings: WebhookSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        routes = endpoints(settings)
        self.configured = [name for r in routes for name in route_endpoints(r)]
        systems = [r for r in routes if r.url is not None]
        # rows of a configured endpoint go to its url of now
        self._urls = {r.name: r.url for r in systems if r.url is not None}
        self._limiter = LogLimiter(60.0)
        self._keys = {r.name: signing_keys(route_secret(settings, r.name)) for r in systems}
        self._notifier = Notifier(routes)  # routes to people: Apprise
        self._lanes: dict[str, _Lane] = {}
        self._wake = asyncio.Event()
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(db_path, timeout=5, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        ensure_schema(self.conn)

    def close(self) -> None:
        self.conn.close()

    def notify(self) -> None:
        """New rows were committed: look now instead of at the next poll."""
        self._wake.set()
        for lane in self._lanes.values():
            lane.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        self._wake = asyncio.Event()  # bound to this run's loop; run() starts with a full look anyway
        unsigned = [name for name, keys in self._keys.items() if not keys]
        if unsigned:
            log.warning("webhooks: no secret for endpoint(s) %s; sending unsigned", ", ".join(unsigned))
        connector = aiohttp.TCPConnector(limit=0)  # lanes bound concurrency; a shared pool would couple them
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         headers={"User-Agent": USER_AGENT}) as session:
            loops = [asyncio.create_task(self._wake_on(stop))]
            try:
                while not stop.is_set():
                    self._wake.clear()
                    for name in self._endpoint_names():
                        if name not in self._lanes:
                            self._lanes[name] = lane = _Lane(name)
                            loops.append(asyncio.create_task(self._lane_loop(lane, session)))
                    await self._sleep(self._wake, POLL_S)
            finally:
                tasks = loops + [t for lane in self._lanes.values() for t in lane.tasks]
                for task in tasks:  # in-flight rows stay pending: sent again, same id, next run
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._lanes.clear()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    @staticmethod
    async def _sleep(event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()

    def _endpoint_names(self) -> list[str]:
        rows = self.conn.execute("SELECT DISTINCT endpoint FROM webhook_outbox WHERE status = 'pending'")
        return list(dict.fromkeys([*self.configured, *(name for (name,) in rows)]))

    async def _lane_loop(self, lane: _Lane, session: aiohttp.ClientSession) -> None:
        while True:
            lane.wake.clear()
            now = self.clock()
            try:
                if now >= lane.paused_until:
                    self._fill(lane, session, now)
                delay = self._next_wait(lane, now)
            except sqlite3.Error:
                log.exception("webhooks: endpoint %s: reading the outbox failed", lane.name)
                delay = POLL_S
            await self._sleep(lane.wake, delay)

    def _fill(self, lane: _Lane, session: aiohttp.ClientSession, now: float) -> None:
        free = self.settings.concurrency - len(lane.busy)
        if free <= 0:
            return
        for row in map(_Row._make, self.conn.execute(_HEADS, (lane.name, now, free + len(lane.busy)))):
            if row.alert_id in lane.busy:
                continue
            lane.busy.add(row.alert_id)
            task = asyncio.create_task(self._deliver(lane, session, row))
            lane.tasks.add(task)
            task.add_done_callback(lane.tasks.discard)
            free -= 1
            if not free:
                return

    def _next_wait(self, lane: _Lane, now: float) -> float:
        if now < lane.paused_until:
            return min(POLL_S, lane.paused_until - now)
        (due,) = self.conn.execute(_NEXT_DUE, (lane.name, now)).fetchone()
        return POLL_S if due is None else min(POLL_S, max(0.0, due - now))

    async def _deliver(self, lane: _Lane, session: aiohttp.ClientSession, row: _Row) -> None:
        try:
            outcome = await self._send(lane, session, row)
            self._record(lane, row, outcome)
        except sqlite3.Error:  # the row stays pending and is sent again: at-least-once holds
            log.exception("webhooks: endpoint %s: recording webhook %s failed", lane.name, row.webhook_id)
        finally:
            lane.busy.discard(row.alert_id)
            lane.wake.set()

    def _headers(self, lane: _Lane, row: _Row) -> dict[str, str]:
        stamp = int(self.clock())
        headers = {"content-type": "application/json", "webhook-id": row.webhook_id,
                   "webhook-timestamp": str(stamp)}
        keys = self._keys.get(lane.name)
        if keys is None:  # an endpoint no longer configured: the shared secret
            keys = self._keys[lane.name] = signing_keys(self.settings.secret)
        if keys:
            headers["webhook-signature"] = sign(keys, row.webhook_id, stamp, row.body)
        return headers

    async def _send(self, lane: _Lane, session: aiohttp.ClientSession, row: _Row) -> _Outcome:
        if self._notifier.has(lane.name) or row.url.startswith(URL_PREFIX):
            return await self._notify(lane, row)
        try:
            async with session.post(self._urls.get(lane.name, row.url), data=row.body,
                                    headers=self._headers(lane, row), allow_redirects=False) as resp:
                text = (await resp.content.read(ERROR_LIMIT)).decode("utf-8", "replace")
                status, headers = resp.status, resp.headers
        except aiohttp.InvalidURL as exc:  # only rows of an endpoint no longer configured: urls are checked at start
            return _Outcome("dead", None, f"invalid url: {type(exc).__name__}")
        except aiohttp.ClientConnectorError as exc:
            return _Outcome("retry", None, f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT], unreachable=True)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _Outcome("retry", None, f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT])
        kind = _classify(status)
        if kind == "delivered":
            return _Outcome(kind, status)
        if 300 <= status < 400:
            location = headers.get("Location", "")[:512]
            text = f"redirect (HTTP {status}) to {location!r} not followed: fix the endpoint url"
            ok, held = self._limiter.allow((lane.name, "redirect"))
            if ok:
                log.warning("webhooks: endpoint %s answers HTTP %s with Location %r: not followed, retrying; "
                            "fix its url%s", lane.name, status, location, f" ({held} similar)" if held else "")
        return _Outcome(kind, status, text, parse_retry_after(headers.get("Retry-After"), self.clock()))

    async def _notify(self, lane: _Lane, row: _Row) -> _Outcome:
        """Send a notification row through Apprise. A stop does not abandon it: the worker thread would
        send it anyway and the next start would send it again, so it is waited for and recorded."""
        task = asyncio.ensure_future(self._notifier.send(lane.name, row.body))
        try:
            return _notification_outcome(await asyncio.shield(task))
        except asyncio.CancelledError:
            while not task.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(task)
            if not task.cancelled() and task.exception() is None:
                self._record(lane, row, _notification_outcome(task.result()))
            raise

    def _record(self, lane: _Lane, row: _Row, outcome: _Outcome) -> None:
        now = self.clock()
        common = (now, outcome.status, outcome.error)
        sql = ("UPDATE webhook_outbox SET attempts = attempts + 1, last_attempt_at = ?, last_status = ?,"
               " last_error = COALESCE(?, last_error)")  # a delivered row keeps its last failure
        lane.unreachable = lane.unreachable + 1 if outcome.unreachable else 0
        if outcome.kind == "delivered":
            self.conn.execute(sql + ", status = 'delivered', delivered_at = ? WHERE seq = ?",
                              (*common, now, row.seq))
            return
        s = self.settings
        attempts = row.attempts + 1
        if outcome.kind == "dead" or (outcome.kind == "refused" and attempts >= s.client_error_attempts):
            ok, held = self._limiter.allow((lane.name, "dead"))
            if ok:  # one line a minute per endpoint: a receiver refusing everything must not flood the log
                log.warning("webhooks: endpoint %s refused webhook %s (HTTP %s) %s: dead (%d more since the "
                            "last such line); `citywatch webhooks resend` sends dead ones again", lane.name,
                            row.webhook_id, outcome.status,
                            "at once" if outcome.kind == "dead" else f"{attempts} times", held)
            self.conn.execute(sql + ", status = 'dead' WHERE seq = ?", (*common, row.seq))
            return
        delay = backoff_s(attempts, s.backoff_initial_s, s.backoff_max_s)
        if outcome.retry_after is not None:
            delay = outcome.retry_after
            lane.paused_until = max(lane.paused_until, now + delay)  # the endpoint asked all of us to wait
        elif outcome.unreachable:
            pause = backoff_s(lane.unreachable, s.backoff_initial_s, s.backoff_max_s)
            lane.paused_until = max(lane.paused_until, now + pause)
        log.debug("webhooks: endpoint %s: webhook %s failed (%s), retry in %.2f s",
                  lane.name, row.webhook_id, outcome.status or outcome.error, delay)
        self.conn.execute(sql + ", next_attempt_at = ? WHERE seq = ?", (*common, now + delay, row.seq))

    # -- inspection and housekeeping --------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """delivered, pending (not yet delivered nor dead, retrying included), retrying, dead, attempts."""
        out = dict.fromkeys(("delivered", "pending", "retrying", "dead", "attempts"), 0)
        rows = self.conn.execute(
            "SELECT status, attempts > 0, COUNT(*), SUM(attempts) FROM webhook_outbox GROUP BY 1, 2")
        for status, retried, count, attempts in rows:
            out[status] = out.get(status, 0) + count
            out["attempts"] += attempts or 0
            if status == "pending" and retried:
                out["retrying"] += count
        return out

    def pending_count(self) -> int:
        """Rows not yet delivered nor dead: a range of the (status, ...) index, cheap enough for every
        health probe (stats() groups the whole outbox)."""
        return int(self.conn.execute("SELECT COUNT(*) FROM webhook_outbox WHERE status = 'pending'").fetchone()[0])

    def purge_delivered(self, older_than_s: float) -> int:
        """Drop delivered rows older than this (the audit trail's horizon); returns how many."""
        cur = self.conn.execute("DELETE FROM webhook_outbox WHERE status = 'delivered' AND delivered_at < ?",
                                (self.clock() - older_than_s,))
        return cur.rowcount


def _notification_outcome(attempt: Attempt) -> _Outcome:
    """An Apprise send as a delivery outcome: an HTTP status Apprise reported is judged like a webhook's
    answer; a target that cannot be sent to is dead; anything else is retried."""
    if attempt.ok:
        return _Outcome("delivered")
    if attempt.unusable:
        return _Outcome("dead", None, attempt.error)
    if attempt.status is not None:
        kind = _classify(attempt.status)
        return _Outcome("retry" if kind == "delivered" else kind, attempt.status, attempt.error)
    return _Outcome("retry", None, attempt.error, unreachable=attempt.unreachable)


def _classify(status: int) -> str:
    """delivered, dead (a permanent refusal), refused (dead after client_error_attempts), or retry."""
    if 200 <= status < 300:
        return "delivered"
    if status in PERMANENT:
        return "dead"
    if 400 <= status < 500 and status not in TRANSIENT_4XX:
        return "refused"
    return "retry"  # 3xx, 5xx, 408/409/425/429, and anything else a receiver should not answer


# -- people's tools (CLI): list and resend -----------------------------------------------------------

class OutboxRow(NamedTuple):
    webhook_id: str
    endpoint: str
    alert_id: str
    status: str
    attempts: int
    created_at: float
    last_attempt_at: float | None
    last_status: int | None
    last_error: str | None


def undelivered(conn: sqlite3.Connection, dead_only: bool = False, limit: int = 100) -> list[OutboxRow]:
    """Rows not delivered (pending and dead, or dead only), oldest first."""
    where = "status = 'dead'" if dead_only else "status != 'delivered'"
    rows = conn.execute(
        "SELECT webhook_id, endpoint, alert_id, status, attempts, created_at, last_attempt_at, last_status,"
        f" last_error FROM webhook_outbox WHERE {where} ORDER BY seq LIMIT ?", (limit,))
    return [OutboxRow(*row) for row in rows]


def resend(conn: sqlite3.Connection, webhook_ids: Sequence[str] = (), alert_ids: Sequence[str] = (),
           endpoints_: Sequence[str] = ()) -> int:
    """Set dead rows matching every given filter back to pending, due now, attempts from zero (the
    bounded 4xx policy counts afresh); last_status and last_error stay until the next attempt.
    Returns how many. The webhook-id does not change, so a receiver that did get it drops it."""
    where, args = ["status = 'dead'"], []
    for column, values in (("webhook_id", webhook_ids), ("alert_id", alert_ids), ("endpoint", endpoints_)):
        if values:
            where.append(f"{column} IN ({', '.join('?' * len(values))})")
            args += list(values)
    cur = conn.execute("UPDATE webhook_outbox SET status = 'pending', attempts = 0, next_attempt_at = 0"
                       f" WHERE {' AND '.join(where)}", args)
    return cur.rowcount
