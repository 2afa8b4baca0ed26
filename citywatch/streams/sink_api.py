"""The Faust sink's HTTP API: /health, /metrics, /kpis, /alerts, /alerts/{id} from the sink's alert store,
and ack/resolve, which travel to the worker that owns the alert's device through the telemetry topic
(202 Accepted); the resulting transition comes back through the transitions topic like any other."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from citywatch import metrics
from citywatch.apitoken import api_token
from citywatch.config import Settings
from citywatch.httpserve import serve
from citywatch.loop import kpis_api
from citywatch.metrics import Exporter
from citywatch.model import TERMINAL_STATUSES, Alert
from citywatch.streams.faust_sink import TransitionSink

RequestAction = Callable[[str, str, bytes], Awaitable[None]]  # (device id, action, JSON body) to its partition
_decode_alert = msgspec.json.Decoder(Alert).decode


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


async def start_sink_api(sink: TransitionSink, settings: Settings, role: str, clock: Callable[[], float],
                         request_action: RequestAction, exporter: Exporter) -> web.AppRunner:
    """/health, /alerts, /alerts/{id} from the alert store; POST /alerts/{id}/ack|resolve goes to
    the device's telemetry partition (202): its owner applies it and the transition follows."""
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
        return _json({"status": "ok", "role": role, "webhooks": sink.delivery.stats()})

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
        request_body = json.dumps({"alert_id": alert_id, "by": by, "at": clock()})
        await request_action(found.device_id, action, request_body.encode())
        return _json({"accepted": action, "alert_id": alert_id, "device_id": found.device_id}, 202)

    app = web.Application(middlewares=[auth], client_max_size=64 * 1024)
    app.router.add_get("/health", health)
    app.router.add_get("/alerts", alerts)
    app.router.add_get("/alerts/{alert_id}", alert)
    app.router.add_post(r"/alerts/{alert_id}/{action:(ack|resolve)}", act)
    kpis_api.register(app, settings.data_dir, clock)  # GET /kpis: the loop's figures from the sink's store
    # GET /metrics: this worker's (sink, and the pipeline with role all); open unless api.metrics_auth
    metrics.install(app, exporter.add(metrics.GuardSource(app)),
                    open_route=not settings.api.metrics_auth)
    runner, _, _ = await serve(app, settings.api)  # the same timeouts and connection cap as the runner's API
    return runner
