"""The HTTP API served by `citywatch run`: health, stats, alerts, and people's ack/resolve.

Every endpoint but /health, /ready and /dispatch/events (signed by the dispatch system instead:
citywatch/loop/dispatch_api.py) needs `Authorization: Bearer <token>`: an account's token
(`citywatch users add`), or the bootstrap admin's (the configured `api.token`, else one generated at
start into data_dir/api-token, mode 0600, for the CLI to use). Who may do what, and the audit of
it, is citywatch/people/api.py's middleware and route table.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from aiohttp import web

from citywatch import metrics, openapi
from citywatch.apitoken import api_token
from citywatch.config import ApiSettings
from citywatch.console import app as console
from citywatch.errors import AlertError
from citywatch.httpserve import GUARD_KEY, serve
from citywatch.loop import dispatch_api, incidents_api, kpis_api, silences_api
from citywatch.model import TERMINAL_STATUSES
from citywatch.people import api as access
from citywatch.people.throttle import Throttle
from citywatch.people.users import UserBook, registry_db
from citywatch.service import READER_KEY, SERVICE_KEY, TOKEN_KEY, AlertService, service
from citywatch.sinks.alertreader import AlertReader
from citywatch.sinks.store import store_path


class _ActionBody(msgspec.Struct):
    """The optional JSON body of ack/resolve: who did it."""

    by: str | None = None


_decode_action = msgspec.json.Decoder(_ActionBody).decode


class _BadBody(Exception):
    """The request body is not what the endpoint takes: 400 with this message."""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


async def _health(request: web.Request) -> web.Response:
    """Liveness: 200 while the consume loop runs and turns, with no fatal error; else 503 (restart me)."""
    facts = service(request).health()
    status = "ok" if facts["ready"] else "not_ready" if facts["live"] else "failing"
    return _json({"status": status, **facts}, 200 if facts["live"] else 503)


async def _ready(request: web.Request) -> web.Response:
    """Readiness: live, and MQTT connected and subscribed, storage writable, backlog under its bound."""
    facts = service(request).health()
    status = "ok" if facts["ready"] else "not_ready" if facts["live"] else "failing"
    return _json({"status": status, **facts}, 200 if facts["ready"] else 503)


async def _stats(request: web.Request) -> web.Response:
    stats = service(request).stats()
    if GUARD_KEY in request.app:
        stats["api"] = request.app[GUARD_KEY].stats()  # connections open, evicted, refused, timed out
    if access.ACCESS_KEY in request.app:
        stats["auth"] = request.app[access.ACCESS_KEY].stats()  # failed tokens, 429s, blocks, addresses
    return _json(stats)


async def _alerts(request: web.Request) -> web.Response:
    runner = service(request)
    alerts = sorted(runner.engine.by_id.values(), key=lambda a: a.opened_at)
    return _json(silences_api.mark(alerts, runner.silences.in_force(), runner.clock(), runner.engine.safety))


async def _stored(request: web.Request, alert_id: str) -> Any:
    """The alert as stored (closed ones are only there): one primary-key read, off the event loop."""
    return await asyncio.to_thread(request.app[READER_KEY].alert, alert_id)


async def _alert(request: web.Request) -> web.Response:
    alert_id = request.match_info["alert_id"]
    alert = service(request).engine.by_id.get(alert_id)
    if alert is None:
        alert = await _stored(request, alert_id)
        if alert is None:
            return _json({"error": f"no alert {alert_id}"}, 404)
    runner = service(request)
    return _json(silences_api.mark([alert], runner.silences.in_force(), runner.clock(), runner.engine.safety)[0])


async def _actor(request: web.Request) -> str:
    """Who the body says acts: `by` of an optional JSON object body, else "api" (people/api.py's
    `acting_name` decides what is recorded). A body that is not such an object (malformed, nested
    past the decoder's depth, `by` not text) is refused."""
    body = await request.read()
    if not body.strip():
        return "api"
    try:
        by = _decode_action(body).by
    except msgspec.DecodeError as exc:  # ValidationError included
        raise _BadBody(f"body must be a JSON object like {{\"by\": \"name\"}}: {exc}") from None
    except RecursionError:
        raise _BadBody("body must be a JSON object like {\"by\": \"name\"}: nested too deeply") from None
    if by is None or not by.strip():
        return "api"
    if not by.isprintable():
        raise _BadBody("by: must be printable text (no control characters or line breaks)")
    return by.strip()[:128]


def _person_action(action: str) -> Any:
    """A handler applying `runner.<action>(alert_id, by)`: acknowledge or resolve. An id never
    seen answers 404; an alert in a state that does not allow it (already acknowledged, already
    resolved) 409."""

    async def handler(request: web.Request) -> web.Response:
        runner = service(request)
        alert_id = request.match_info["alert_id"]
        try:
            by = access.acting_name(request, await _actor(request))
        except _BadBody as exc:
            return _json({"error": str(exc)}, 400)
        try:
            transition = getattr(runner, action)(alert_id, by, also=access.tx_hook(request))
        except AlertError as exc:
            if alert_id in runner.engine.by_id:
                return _json({"error": str(exc)}, 409)
            stored = await _stored(request, alert_id)
            if stored is None:
                return _json({"error": f"no alert {alert_id}"}, 404)
            if stored.status in TERMINAL_STATUSES:
                return _json({"error": f"alert {alert_id} is already {stored.status}"}, 409)
            return _json({"error": str(exc)}, 409)
        return _json(transition)

    return handler


def make_app(runner: AlertService, token: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[SERVICE_KEY] = runner
    app[TOKEN_KEY] = token
    reader = app[READER_KEY] = AlertReader(store_path(runner.settings.data_dir))
    s = runner.settings.api
    users = UserBook(registry_db(runner.settings.data_dir))  # accounts, read live (people/users.py)
    access.setup(app, token, users, runner.store.conn, Throttle(s.auth_failures, s.auth_window_s, s.auth_block_s,
                                                                 s.auth_block_max_s, s.auth_addresses))

    async def close_reader(app: web.Application) -> None:
        reader.close()
        users.close()

    app.on_cleanup.append(close_reader)
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/stats", _stats)
    app.router.add_get("/alerts", _alerts)
    app.router.add_get("/alerts/{alert_id}", _alert)
    app.router.add_post("/alerts/{alert_id}/ack", _person_action("acknowledge"))
    app.router.add_post("/alerts/{alert_id}/resolve", _person_action("resolve"))
    incidents_api.register(app)
    dispatch_api.register(app)
    kpis_api.register(app)
    silences_api.register(app)
    console.register(app)
    metrics.register(app, runner)  # GET /metrics (Prometheus), open unless api.metrics_auth
    openapi.register(app)  # GET /openapi.json: OpenAPI 3.1 of every route above (open, like /health)
    return app


async def start_api(runner: AlertService, settings: ApiSettings) -> web.AppRunner:
    token = api_token(settings, runner.settings.data_dir)
    assert token is not None
    app_runner, _, runner.api_port = await serve(make_app(runner, token), settings)
    return app_runner
