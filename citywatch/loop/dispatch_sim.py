"""A simulated city dispatch system, for `citywatch demo` and the tests: the other side of the loop.

A real HTTP server receives citywatch's webhooks (each signature verified with the standardwebhooks
package; a forged one is answered 401 and counted) and, for each new case (an opened alert, or an
opened incident with `level="incident"`), calls back to citywatch's POST /dispatch/events with its
own signed messages, as a dispatch centre and its field teams would:

* `proper`: assigned, on_site, then rectified once the team had time to fix it;
* `early`: assigned and rectified at once, while the sensor may still alarm (citywatch answers with
  `reopened`; the team then goes back to that device, on_site and rectified, alert by alert, waiting
  twice as long after each reopening);
* `reject`: the first team rejects it (not theirs), another team is assigned and handles it properly;
* `never`: nothing at all (citywatch escalates it up the grid hierarchy).

A latched alert (nothing to measure: `alert.rectified` leaves it `rectified`, awaiting confirmation)
is confirmed with `alert.closed`; with `level="incident"` the alert webhooks are still read for that
and for `reopened`, so a route should send this system both (`receive: [alerts, incidents]`).

The plan of each case is drawn from a random generator seeded with `seed` and the case's own key
(device and rule, or the incident's key), so the same seed gives every case the same plan whatever
the order in which cases arrive. Messages go out one at a time, in order; a 5xx or a
connection error is retried with the same webhook-id (as a real sender does). Everything sent and
received is recorded for the caller to inspect.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

log = logging.getLogger(__name__)

PLANS = ("proper", "early", "reject", "never")
TEAMS = ("grid team 1", "grid team 2", "gas crew 3", "drainage crew 5", "noise patrol 2", "community police")
RETRY_S = 0.2
MAX_TRIES = 20


def new_secret() -> str:
    """A fresh Standard Webhooks secret (whsec_<base64 of 24 random bytes>)."""
    import secrets

    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def subject_rule(payload: dict[str, Any]) -> str:
    return str((payload.get("alert") or {}).get("rule", ""))


def _key(secret: str) -> Webhook:
    return Webhook(secret) if secret.startswith("whsec_") else Webhook(secret.encode())


@dataclass
class Delays:
    """Seconds (of the wall clock) between a case's steps."""

    assign: float = 0.0
    on_site: float = 0.0
    rectify: float = 0.0  # a proper rectification, after on_site
    early: float = 0.0  # an early rectification, after assigned
    retry_after_reopen: float = 0.0  # back on site after citywatch reopened an alert (doubling each time)
    confirm: float = 0.0  # a person's `closed` for a latched case


@dataclass
class Sent:
    """One message sent to citywatch, and its answer (the last attempt's)."""

    webhook_id: str
    type: str
    target: str
    body: bytes
    status: int | None = None
    response: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    repeat: bool = False  # citywatch answered it as a repeat of an earlier message


@dataclass
class Case:
    """A case the dispatch system handles: an alert or an incident."""

    scope: str  # alert | incident
    target: str  # alert id or incident id
    key: str  # device/rule or incident key: what the plan's random draw is seeded with
    plan: str
    events: list[str] = field(default_factory=list)  # webhook types received for it, in order
    team: str = ""


class DispatchSystem:
    """Start with `start()`, point citywatch's webhooks at `url`, stop with `stop()`.

    `citywatch_url`: citywatch's API base (POST {citywatch_url}/dispatch/events). `secret`: this
    system's own signing secret (citywatch's dispatch.secret); `webhook_secret`: citywatch's outbound
    secret (webhooks.secret), to verify what it sends. `plan(case_key, payload)` may fix a case's plan
    (return None to draw it); otherwise plans are drawn with `weights` (proper, early, reject, never).
    `clock` stamps webhook-timestamp (citywatch checks it against its own clock)."""

    def __init__(self, citywatch_url: str, secret: str, webhook_secret: str, *, seed: int = 1,
                 level: str = "alert", weights: tuple[float, float, float, float] = (0.6, 0.2, 0.1, 0.1),
                 plan: Callable[[str, dict[str, Any]], str | None] | None = None, delays: Delays | None = None,
                 clock: Callable[[], float] = time.time, host: str = "127.0.0.1", port: int = 0) -> None:
        if level not in ("alert", "incident"):
            raise ValueError("level must be alert or incident")
        self.citywatch_url = citywatch_url.rstrip("/")
        self.secret = secret
        self.verifier = _key(webhook_secret)
        self.seed = seed
        self.level = level
        self.weights = weights
        self.choose = plan
        self.delays = delays or Delays()
        self.clock = clock
        self.lock = threading.Lock()
        self.cases: dict[str, Case] = {}
        self.received: list[dict[str, Any]] = []  # every verified webhook body, in arrival order
        self.received_ids: Counter[str] = Counter()  # webhook-id -> deliveries (redeliveries counted)
        self.forged = 0  # webhooks whose signature did not verify (answered 401)
        self.reopened: dict[str, int] = {}  # alert id -> times citywatch reopened it
        self.sent: list[Sent] = []
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition(self.lock)
        self._stopping = False
        self._busy = False
        self._held = False
        system = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = system._receive({k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._threads = [threading.Thread(target=self.server.serve_forever, name="dispatch-sim-http", daemon=True),
                         threading.Thread(target=self._work, name="dispatch-sim-worker", daemon=True)]

    @property
    def url(self) -> str:
        """Where citywatch sends its webhooks."""
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> DispatchSystem:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self.server.shutdown()
        self.server.server_close()
        for thread in self._threads:
            thread.join(10)

    # -- receiving citywatch's webhooks -----------------------------------------------------------

    def _receive(self, headers: dict[str, str], body: bytes) -> int:
        try:
            self.verifier.verify(body, headers)
        except WebhookVerificationError:
            with self.lock:
                self.forged += 1
            return 401
        payload = json.loads(body)
        with self.lock:
            webhook_id = headers.get("webhook-id", "")
            self.received_ids[webhook_id] += 1
            if self.received_ids[webhook_id] > 1:
                return 204  # a redelivery: already handled
            self.received.append(payload)
            self._react(payload)
        return 204

    def _react(self, payload: dict[str, Any]) -> None:
        """Called with the lock held: open a case, or move one on."""
        scope, _, transition = str(payload.get("type", "")).partition(".")
        subject = payload.get(scope) or {}
        target = str(subject.get("id", ""))
        if scope == "alert" and transition == "rectified" and subject.get("status") == "rectified":
            # nothing to measure (a forced door): a person checks and confirms the closure
            self._later(self.delays.confirm, "alert", target, "closed")
        elif scope == "alert" and transition == "reopened":  # the team goes back to that device, later each time
            tries = self.reopened[target] = self.reopened.get(target, 0) + 1
            back = self.delays.retry_after_reopen * 2 ** (tries - 1)
            self._later(back, "alert", target, "on_site")
            self._later(back + self.delays.rectify, "alert", target, "rectified",
                        note=f"rectified again after the condition returned ({tries})")
        if scope != self.level:
            return
        case = self.cases.get(target)
        if case is None and transition in ("opened", "flapping"):
            case = self.cases[target] = self._open_case(scope, target, payload)
            self._start(case)
        if case is not None:
            case.events.append(transition)

    def draw(self, key: str) -> tuple[str, str]:
        """(plan, team) of the case with this key: seeded by `seed` and the key alone."""
        rng = random.Random(f"citywatch-dispatch-sim/{self.seed}/{key}")
        return rng.choices(PLANS, self.weights)[0], rng.choice(TEAMS)

    def _open_case(self, scope: str, target: str, payload: dict[str, Any]) -> Case:
        if scope == "alert":
            key = f"{(payload.get('device') or {}).get('id', '')}/{subject_rule(payload)}"
        else:
            key = json.dumps((payload.get("incident") or {}).get("key", {}), sort_keys=True)
        plan, team = self.draw(key)
        chosen = self.choose(key, payload) if self.choose is not None else None
        if chosen is not None:
            if chosen not in PLANS:
                raise ValueError(f"unknown plan {chosen!r}")
            plan = chosen
        return Case(scope=scope, target=target, key=key, plan=plan, team=team)

    def _start(self, case: Case) -> None:
        d, scope, target = self.delays, case.scope, case.target
        if case.plan == "never":
            return
        if case.plan == "reject":
            self._later(d.assign, scope, target, "assigned", assignee=case.team)
            self._later(d.assign, scope, target, "rejected", reason="not in our area: please re-dispatch")
            case.team = next(t for t in TEAMS if t != case.team)
        self._later(d.assign, scope, target, "assigned", assignee=case.team)
        if case.plan == "early":
            self._later(d.assign + d.early, scope, target, "rectified",
                        note="fixed (reported before the sensor cleared)")
            return
        self._later(d.assign + d.on_site, scope, target, "on_site")
        self._later(d.assign + d.on_site + d.rectify, scope, target, "rectified", note="fixed on site",
                    evidence=[f"https://dispatch.example/cases/{target}/photo-1.jpg"])

    def _later(self, delay: float, scope: str, target: str, action: str, **detail: Any) -> None:
        """Queue a message (lock held). Equal delays keep the order they were queued in."""
        event = {"type": f"{scope}.{action}", f"{scope}_id": target, "by": "dispatch-sim", **detail}
        due = time.monotonic() + delay

        def job() -> None:
            self._send_event(event)

        heapq.heappush(self._queue, (due, next(self._order), job))
        self._wake.notify_all()

    # -- calling citywatch back -------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and (self._held or not self._queue or self._queue[0][0] > time.monotonic()):
                    timeout = self._queue[0][0] - time.monotonic() if self._queue and not self._held else None
                    self._wake.wait(timeout)
                if self._stopping:
                    return
                _, _, job = heapq.heappop(self._queue)
                self._busy = True
            try:
                job()
            except Exception:  # a simulator bug must not stop the others: logged
                log.exception("dispatch simulator: a message failed")
            finally:
                with self.lock:
                    self._busy = False

    def hold(self) -> None:
        """Keep queued messages back until `release()` (the dispatch centre is busy: cases pile up)."""
        with self._wake:
            self._held = True

    def release(self) -> None:
        with self._wake:
            self._held = False
            self._wake.notify_all()

    def idle(self) -> bool:
        """Nothing queued or being sent (delayed steps included)."""
        with self.lock:
            return not self._queue and not self._busy

    def _send_event(self, event: dict[str, Any]) -> Sent:
        body = json.dumps(event).encode()
        target = str(event.get("alert_id") or event.get("incident_id") or "")
        return self.send(body, event_type=str(event["type"]), target=target)

    def send(self, body: bytes, *, event_type: str = "", target: str = "", webhook_id: str | None = None,
             timestamp: float | None = None, secret: str | None = None, retry: bool = True) -> Sent:
        """Sign `body` (with this system's secret, or `secret`) and POST it; retried with the same
        webhook-id on 5xx or a connection error (unless `retry` is false). Recorded in `sent`."""
        sent = Sent(webhook_id=webhook_id or f"msg_{uuid.uuid4().hex}", type=event_type, target=target, body=body)
        for attempt in range(1, MAX_TRIES + 1):
            sent.attempts = attempt
            try:
                sent.status, sent.response, sent.repeat = self._post(sent, timestamp, secret)
            except OSError as exc:
                sent.status, sent.response = None, {"error": str(exc)}
            if not retry or (sent.status is not None and sent.status < 500) or self._stopping:
                break
            time.sleep(RETRY_S)
        with self.lock:
            self.sent.append(sent)
        return sent

    def resend(self, original: Sent) -> Sent:
        """The same message again: same webhook-id and body, a fresh timestamp and signature."""
        return self.send(original.body, event_type=original.type, target=original.target,
                         webhook_id=original.webhook_id)

    def _post(self, sent: Sent, timestamp: float | None, secret: str | None) -> tuple[int, dict[str, Any], bool]:
        stamp = int(self.clock() if timestamp is None else timestamp)
        key = _key(secret) if secret is not None else _key(self.secret)
        signature = key.sign(sent.webhook_id, datetime.fromtimestamp(stamp, UTC), sent.body.decode())
        request = urllib.request.Request(
            f"{self.citywatch_url}/dispatch/events", data=sent.body, method="POST",
            headers={"content-type": "application/json", "webhook-id": sent.webhook_id,
                     "webhook-timestamp": str(stamp), "webhook-signature": signature})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"{}"), \
                    response.headers.get("Citywatch-Repeat") == "true"
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                answer = json.loads(raw or b"{}")
            except ValueError:
                answer = {"error": raw.decode("utf-8", "replace")}
            return exc.code, answer if isinstance(answer, dict) else {"error": answer}, False

    # -- what happened ------------------------------------------------------------------------------

    def types(self, target: str | None = None) -> list[str]:
        """The webhook types received (for one alert or incident id, or all), in arrival order."""
        with self.lock:
            bodies = list(self.received)
        out = []
        for body in bodies:
            scope = str(body.get("type", "")).partition(".")[0]
            if target is None or str((body.get(scope) or {}).get("id", "")) == target:
                out.append(str(body.get("type")))
        return out

    def answers(self) -> Counter[int | None]:
        """How citywatch answered the messages sent: HTTP status -> count."""
        with self.lock:
            return Counter(s.status for s in self.sent)
