"""The Faust runner's sink side: alert store, webhook outbox and delivery, and the HTTP API.

`TransitionSink` writes what the `deliver` and `deadletters` agents consume into the SQLite alert
store in one transaction with the webhook outbox (`WebhookDelivery` drains it), dropping
transition ids it has already stored: Kafka redelivers after a rebalance, webhooks go out once.
`start_sink_api` serves /health, /metrics, /alerts and ack/resolve; actions travel to the worker that owns
the alert's device through the telemetry topic (202 Accepted), and the resulting transition comes
back through the transitions topic like any other.
"""

from __future__ import annotations

import hmac
import json
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from citywatch.config import Settings
from citywatch.httpserve import serve
from citywatch.loop.incidents import open_book
from citywatch.loop.silence_book import SilenceBook
from citywatch.model import TERMINAL_STATUSES, Alert, DeadLetter, Transition
from citywatch.sinks.store import AlertStore, store_path
from citywatch.sinks.webhooks import Outbox, WebhookDelivery
from citywatch.streams.pipeline import Output

if TYPE_CHECKING:
    from citywatch.streams.faust_app import FaustCity

_decode_alert = msgspec.json.Decoder(Alert).decode


# -- the store and outbox ----------------------------------------------------------------------------------------

class TransitionSink:
    """Alert store + webhook outbox in one SQLite transaction, idempotent by transition id."""

    def __init__(self, settings: Settings) -> None:
        path = store_path(settings.data_dir)
        self.outbox = Outbox(settings.webhooks, levels=settings.alerts.escalation.levels,
                             safety_rules=settings.alerts.safety_rules)  # level routes, silences
        self.store = AlertStore(path, hooks=[self.outbox.enqueue])
        self.delivery = WebhookDelivery(path, settings.webhooks)
        # silences (set with `citywatch silences`, direct: the sink holds no data-dir lock) release on tick()
        self.silences = SilenceBook(self.store.conn, settings, on_release=self.delivery.notify)
        self.counters: Counter[str] = Counter()
        # Incidents are grouped here: this is the one consumer of every partition's transitions (its own
        # consumer group, one sink), and it owns the store the grouping commits with.
        self.incidents, start = open_book(settings.incidents, self.store, time.time())
        changes = self.incidents.take_changes()
        if start.incident_transitions or changes.incidents or changes.members:
            self.store.commit(start, [], {}, incidents=changes.incidents, members=changes.members)

    def _unseen(self, transitions: list[Transition]) -> list[Transition]:
        ids = list({t.id for t in transitions})
        known: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self.store.conn.execute(
                f"SELECT id FROM transitions WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            known.update(row[0] for row in rows)
        fresh = []
        for t in transitions:
            if t.id not in known:
                known.add(t.id)
                fresh.append(t)
        return fresh

    def write(self, transitions: list[Transition], dead_letters: Iterable[DeadLetter] = ()) -> Output:
        """Store what is new; returns it (transitions already stored are dropped: redeliveries)."""
        out = Output()
        out.transitions = self._unseen(transitions) if transitions else []
        out.dead_letters = list(dead_letters)
        self.counters["duplicates"] += len(transitions) - len(out.transitions)
        if not out.transitions and not out.dead_letters:
            return out
        latest = {t.alert.id: t.alert for t in out.transitions}  # in order: the last snapshot wins
        self.incidents.group(out)
        changes = self.incidents.take_changes()
        try:
            self.store.commit(out, latest.values(), {}, incidents=changes.incidents, members=changes.members)
        except BaseException:
            self.incidents.give_back(changes)
            raise
        self.counters["transitions"] += len(out.transitions)
        self.counters["dead_letters"] += len(out.dead_letters)
        if out.transitions or out.incident_transitions:
            self.delivery.notify()
        return out

    def close(self) -> None:
        self.delivery.close()
        self.store.close()


# -- the sink's HTTP API -----------------------------------------------------------------------------

def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


async def start_sink_api(city: FaustCity) -> web.AppRunner:
    """/health, /alerts, /alerts/{id} from the alert store; POST /alerts/{id}/ack|resolve goes to
    the device's telemetry partition (202): its owner applies it and the transition follows."""
    from citywatch import metrics
    from citywatch.api import api_token
    from citywatch.loop import kpis_api

    sink, settings = city.sink, city.settings
    assert sink is not None
    token = api_token(settings.api, settings.data_dir)
    assert token is not None
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/health" and not hmac.compare_digest(
                request.headers.get("Authorization", "").encode(), expected):
            return _json({"error": "missing or invalid bearer token"}, 401)
        response: web.StreamResponse = await handler(request)
        return response

    def find(alert_id: str) -> Alert | None:
        row = sink.store.conn.execute("SELECT body FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        return _decode_alert(row[0]) if row else None

    async def health(request: web.Request) -> web.Response:
        return _json({"status": "ok", "role": city.role, "webhooks": sink.delivery.stats()})

    async def alerts(request: web.Request) -> web.Response:
        return _json(sink.store.alerts("open"))

    async def alert(request: web.Request) -> web.Response:
        found = find(request.match_info["alert_id"])
        return _json(found) if found is not None else _json({"error": "no such alert"}, 404)

    async def act(request: web.Request) -> web.Response:
        alert_id, action = request.match_info["alert_id"], request.match_info["action"]
        found = find(alert_id)
        if found is None:
            return _json({"error": f"no alert {alert_id}"}, 404)
        if found.status in TERMINAL_STATUSES:
            return _json({"error": f"alert {alert_id} is already {found.status}"}, 409)
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            body = {}
        by = body.get("by") if isinstance(body, dict) else None
        by = by.strip()[:128] if isinstance(by, str) and by.strip() else "api"
        request_body = json.dumps({"alert_id": alert_id, "by": by, "at": city.clock()})
        await city.request_action(found.device_id, action, request_body.encode())
        return _json({"accepted": action, "alert_id": alert_id, "device_id": found.device_id}, 202)

    app = web.Application(middlewares=[auth], client_max_size=64 * 1024)
    app.router.add_get("/health", health)
    app.router.add_get("/alerts", alerts)
    app.router.add_get("/alerts/{alert_id}", alert)
    app.router.add_post(r"/alerts/{alert_id}/{action:(ack|resolve)}", act)
    kpis_api.register(app, settings.data_dir, city.clock)  # GET /kpis: the loop's figures from the sink's store
    # GET /metrics: this worker's (sink, and the pipeline with role all); open unless api.metrics_auth
    metrics.install(app, metrics.worker_exporter(city).add(metrics.GuardSource(app)),
                    open_route=not settings.api.metrics_auth)
    runner, _, _ = await serve(app, settings.api)  # the same timeouts and connection cap as the runner's API
    return runner
