"""The HTTP API both runners serve, built once: `build(desk, ...)` makes the aiohttp application of
`citywatch run` (citywatch/api.py) and of the Faust sink (citywatch/streams/sink_api.py) from one
route table, one auth middleware and one OpenAPI table.

What differs between the runners is behind `AlertDesk` (citywatch/service.py), not in the routes:
the embedded runner's desk applies a person's ack/resolve at once (200, the transition); the Faust
sink's forwards it to the worker that owns the alert's device through the telemetry topic (202,
`Accepted`), and that worker's transition comes back through the transitions topic. The rest is
passed in: the settings, the bootstrap token, the connection the audit is written on (the store's),
how GET /metrics is installed (each runner's own exporter), and `extra` routes.

Auth is people/api.py's middleware for both: an account's token or the bootstrap admin's (compared
in constant time), roles and scopes, 401/403/429, the audit. Open: /health, /ready, /openapi.json
and (unless api.metrics_auth) /metrics.

SHARED_ROUTES, /kpis, /metrics and /openapi.json are what both serve. Only the embedded runner
serves the routes that act on the alert engine or incidents in its own memory and commit with them
(dispatch actions and /dispatch/events, /incidents, /silences, the console: its `extra`): on Faust the
engine is spread over the process workers, each reached only through its telemetry partition, and
ack/resolve are the actions forwarded there. Each app's /openapi.json describes the routes it serves,
with the same operation objects (citywatch/openapi.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from citywatch import openapi
from citywatch.config import Settings
from citywatch.errors import AlertError
from citywatch.httpserve import GUARD_KEY
from citywatch.loop import kpis_api
from citywatch.loop.silences_api import mark
from citywatch.model import TERMINAL_STATUSES, Alert
from citywatch.people import api as access
from citywatch.people.throttle import Throttle
from citywatch.people.users import UserBook, registry_db
from citywatch.service import DESK_KEY, READER_KEY, TOKEN_KEY, Accepted, AlertDesk
from citywatch.sinks.alertreader import AlertReader
from citywatch.sinks.store import store_path

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _ActionBody(msgspec.Struct):
    """The optional JSON body of ack/resolve: who did it."""

    by: str | None = None


_decode_action = msgspec.json.Decoder(_ActionBody).decode


class _BadBody(Exception):
    """The request body is not what the endpoint takes: 400 with this message."""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


def desk_of(request: web.Request) -> AlertDesk:
    return request.app[DESK_KEY]


def _health_body(request: web.Request) -> tuple[dict[str, Any], dict[str, Any]]:
    facts = desk_of(request).health()
    status = "ok" if facts["ready"] else "not_ready" if facts["live"] else "failing"
    return facts, {"status": status, **facts}


async def _health(request: web.Request) -> web.Response:
    """Liveness: 200 while the process works (the embedded runner: its consume loop turns); else 503."""
    facts, body = _health_body(request)
    return _json(body, 200 if facts["live"] else 503)


async def _ready(request: web.Request) -> web.Response:
    """Readiness: live, and what the runner needs to take work (embedded: MQTT subscribed, storage
    writable, backlog under its bound)."""
    facts, body = _health_body(request)
    return _json(body, 200 if facts["ready"] else 503)


async def _stats(request: web.Request) -> web.Response:
    stats = desk_of(request).stats()
    if GUARD_KEY in request.app:
        stats["api"] = request.app[GUARD_KEY].stats()  # connections open, evicted, refused, timed out
    if access.ACCESS_KEY in request.app:
        stats["auth"] = request.app[access.ACCESS_KEY].stats()  # failed tokens, 429s, blocks, addresses
    return _json(stats)


def _views(request: web.Request, alerts: list[Alert]) -> list[dict[str, Any]]:
    """Alerts as JSON objects, marked when a silence in force holds their webhooks."""
    d = desk_of(request)
    return mark(alerts, d.silences_in_force(), d.clock(), d.safety)


async def _alerts(request: web.Request) -> web.Response:
    return _json(_views(request, desk_of(request).open_alerts()))


async def _stored(request: web.Request, alert_id: str) -> Alert | None:
    """The alert as stored (closed ones are only there): one primary-key read, off the event loop."""
    return await asyncio.to_thread(request.app[READER_KEY].alert, alert_id)


async def _alert(request: web.Request) -> web.Response:
    alert_id = request.match_info["alert_id"]
    alert = desk_of(request).held(alert_id) or await _stored(request, alert_id)
    if alert is None:
        return _json({"error": f"no alert {alert_id}"}, 404)
    return _json(_views(request, [alert])[0])


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


def _person_action(action: str) -> Handler:
    """A handler for a person's `action` (ack or resolve) through the desk: 200 with the transition when
    applied here, 202 when forwarded to the alert's owner. An id never seen answers 404; an alert in a
    state that does not allow it (already acknowledged, already resolved) 409."""

    async def handler(request: web.Request) -> web.Response:
        alert_id = request.match_info["alert_id"]
        try:
            by = access.acting_name(request, await _actor(request))
        except _BadBody as exc:
            return _json({"error": str(exc)}, 400)
        try:
            done = await desk_of(request).act(action, alert_id, by, access.tx_hook(request))
        except AlertError as exc:
            if desk_of(request).held(alert_id) is not None:
                return _json({"error": str(exc)}, 409)
            stored = await _stored(request, alert_id)
            if stored is None:
                return _json({"error": f"no alert {alert_id}"}, 404)
            if stored.status in TERMINAL_STATUSES:
                return _json({"error": f"alert {alert_id} is already {stored.status}"}, 409)
            return _json({"error": str(exc)}, 409)
        return _json(done, 202 if isinstance(done, Accepted) else 200)

    return handler


# The routes both runners serve (with /kpis, /metrics and /openapi.json, registered by build).
SHARED_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/health", _health),
    ("GET", "/ready", _ready),
    ("GET", "/stats", _stats),
    ("GET", "/alerts", _alerts),
    ("GET", "/alerts/{alert_id}", _alert),
    ("POST", "/alerts/{alert_id}/ack", _person_action("ack")),
    ("POST", "/alerts/{alert_id}/resolve", _person_action("resolve")),
)


def build(desk: AlertDesk, settings: Settings, token: str, audit_conn: sqlite3.Connection,
          install_metrics: Callable[[web.Application], object],
          extra: Callable[[web.Application], None] | None = None) -> web.Application:
    """The API application over `desk`. `audit_conn`: the store connection people's actions and refusals
    are audited on; `install_metrics(app)` adds GET /metrics with the runner's exporter; `extra(app)`
    adds the routes only this runner serves (after the shared ones: /alerts/{id}/ack before the
    dispatch actions' /alerts/{id}/{action})."""
    app = web.Application(client_max_size=64 * 1024)
    app[DESK_KEY] = desk
    app[TOKEN_KEY] = token
    reader = app[READER_KEY] = AlertReader(store_path(settings.data_dir))
    s = settings.api
    users = UserBook(registry_db(settings.data_dir))  # accounts, read live (people/users.py)
    access.setup(app, token, users, audit_conn, Throttle(s.auth_failures, s.auth_window_s, s.auth_block_s,
                                                         s.auth_block_max_s, s.auth_addresses))

    async def close(app: web.Application) -> None:
        reader.close()
        users.close()

    app.on_cleanup.append(close)
    for method, path, handler in SHARED_ROUTES:
        if method == "GET":
            app.router.add_get(path, handler)  # and HEAD
        else:
            app.router.add_route(method, path, handler)
    kpis_api.register(app, settings.data_dir, desk.clock)  # GET /kpis: the loop's figures from the store
    if extra is not None:
        extra(app)
    install_metrics(app)  # GET /metrics (Prometheus), open unless api.metrics_auth
    openapi.register(app)  # GET /openapi.json: the routes above, described (last: it reads the router)
    return app
