"""The HTTP API served by `citywatch run`: health, stats, alerts, and people's ack/resolve.

Every endpoint but /health, /ready and /dispatch/events (signed by the dispatch system instead:
citywatch/loop/dispatch_api.py) needs `Authorization: Bearer <token>`: an account's token
(`citywatch users add`), or the bootstrap admin's (the configured `api.token`, else one generated at
start into data_dir/api-token, mode 0600, for the CLI to use). Who may do what, and the audit of
it, is citywatch/people/api.py's middleware and route table.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from citywatch import metrics
from citywatch.config import ApiSettings
from citywatch.errors import AlertError
from citywatch.httpserve import GUARD_KEY, serve
from citywatch.loop import silences_api
from citywatch.model import TERMINAL_STATUSES
from citywatch.people import api as access
from citywatch.people.throttle import Throttle
from citywatch.people.users import UserBook, registry_db
from citywatch.sinks.alertreader import AlertReader
from citywatch.sinks.database import make_private
from citywatch.sinks.store import store_path

if TYPE_CHECKING:
    from citywatch.streams.embedded import EmbeddedRunner

RUNNER_KEY = web.AppKey("runner", object)
TOKEN_KEY = web.AppKey("token", str)
READER_KEY = web.AppKey("reader", AlertReader)


class _ActionBody(msgspec.Struct):
    """The optional JSON body of ack/resolve: who did it."""

    by: str | None = None


_decode_action = msgspec.json.Decoder(_ActionBody).decode


class _BadBody(Exception):
    """The request body is not what the endpoint takes: 400 with this message."""


def api_token(settings: ApiSettings, data_dir: Path, create: bool = True) -> str | None:
    """The configured token, else the one in data_dir/api-token (created if asked)."""
    if settings.token is not None:
        return settings.token.get_secret_value()
    path = data_dir / "api-token"
    if path.exists():
        make_private(path)  # a secret: 0600, also when an older version or a person made it wider
        return path.read_text().strip()
    if not create:
        return None
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


def _runner(request: web.Request) -> EmbeddedRunner:
    return request.app[RUNNER_KEY]  # type: ignore[return-value]


async def _health(request: web.Request) -> web.Response:
    """Liveness: 200 while the consume loop runs and turns, with no fatal error; else 503 (restart me)."""
    facts = _runner(request).health()
    status = "ok" if facts["ready"] else "not_ready" if facts["live"] else "failing"
    return _json({"status": status, **facts}, 200 if facts["live"] else 503)


async def _ready(request: web.Request) -> web.Response:
    """Readiness: live, and MQTT connected and subscribed, storage writable, backlog under its bound."""
    facts = _runner(request).health()
    status = "ok" if facts["ready"] else "not_ready" if facts["live"] else "failing"
    return _json({"status": status, **facts}, 200 if facts["ready"] else 503)


async def _stats(request: web.Request) -> web.Response:
    stats = _runner(request).stats()
    if GUARD_KEY in request.app:
        stats["api"] = request.app[GUARD_KEY].stats()  # connections open, evicted, refused, timed out
    if access.ACCESS_KEY in request.app:
        stats["auth"] = request.app[access.ACCESS_KEY].stats()  # failed tokens, 429s, blocks, addresses
    return _json(stats)


async def _alerts(request: web.Request) -> web.Response:
    runner = _runner(request)
    alerts = sorted(runner.engine.by_id.values(), key=lambda a: a.opened_at)
    return _json(silences_api.mark(alerts, runner.silences.in_force(), runner.clock(), runner.engine.safety))


async def _stored(request: web.Request, alert_id: str) -> Any:
    """The alert as stored (closed ones are only there): one primary-key read, off the event loop."""
    return await asyncio.to_thread(request.app[READER_KEY].alert, alert_id)


async def _alert(request: web.Request) -> web.Response:
    alert_id = request.match_info["alert_id"]
    alert = _runner(request).engine.by_id.get(alert_id)
    if alert is None:
        alert = await _stored(request, alert_id)
        if alert is None:
            return _json({"error": f"no alert {alert_id}"}, 404)
    runner = _runner(request)
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
        runner = _runner(request)
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


def make_app(runner: EmbeddedRunner, token: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[RUNNER_KEY] = runner
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
    from citywatch.loop import incidents_api  # noqa: PLC0415 (it imports this module)
    incidents_api.register(app)
    from citywatch.loop import dispatch_api  # noqa: PLC0415 (it imports this module)
    dispatch_api.register(app)
    from citywatch.loop import kpis_api  # noqa: PLC0415 (the loop's figures: GET /kpis)
    kpis_api.register(app)
    silences_api.register(app)
    from citywatch.console import app as console  # noqa: PLC0415 (the operator console at /console)
    console.register(app)
    metrics.register(app, runner)  # GET /metrics (Prometheus), open unless api.metrics_auth
    from citywatch import openapi  # noqa: PLC0415 (it imports the route modules, which import this one)
    openapi.register(app)  # GET /openapi.json: OpenAPI 3.1 of every route above (open, like /health)
    return app


async def start_api(runner: EmbeddedRunner, settings: ApiSettings) -> web.AppRunner:
    token = api_token(settings, runner.settings.data_dir)
    assert token is not None
    app_runner, _, runner.api_port = await serve(make_app(runner, token), settings)
    return app_runner
