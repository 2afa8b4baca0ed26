"""The HTTP API served by `citywatch run`: health, stats, alerts, and people's ack/resolve.

Every endpoint but /health and /ready needs `Authorization: Bearer <api token>`. Without a configured
token, one is generated at start into data_dir/api-token (mode 0600) for the CLI to use.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from citywatch.config import ApiSettings
from citywatch.errors import AlertError

if TYPE_CHECKING:
    from citywatch.streams.embedded import EmbeddedRunner

RUNNER_KEY = web.AppKey("runner", object)
TOKEN_KEY = web.AppKey("token", str)


def api_token(settings: ApiSettings, data_dir: Path, create: bool = True) -> str | None:
    """The configured token, else the one in data_dir/api-token (created if asked)."""
    if settings.token is not None:
        return settings.token.get_secret_value()
    path = data_dir / "api-token"
    if path.exists():
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


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path in ("/health", "/ready"):  # facts for supervisors, no secrets: open
        return await handler(request)
    header = request.headers.get("Authorization", "")
    expected = "Bearer " + request.app[TOKEN_KEY]
    if not hmac.compare_digest(header.encode(), expected.encode()):
        return _json({"error": "missing or invalid bearer token"}, 401)
    return await handler(request)


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
    return _json(_runner(request).stats())


async def _alerts(request: web.Request) -> web.Response:
    return _json(sorted(_runner(request).engine.by_id.values(), key=lambda a: a.opened_at))


async def _alert(request: web.Request) -> web.Response:
    runner = _runner(request)
    alert_id = request.match_info["alert_id"]
    alert = runner.engine.by_id.get(alert_id)
    if alert is None:
        matches = [a for a in runner.store.alerts(None) if a.id == alert_id]
        if not matches:
            return _json({"error": f"no alert {alert_id}"}, 404)
        alert = matches[0]
    return _json(alert)


async def _actor(request: web.Request) -> str:
    if request.can_read_body:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        if isinstance(body, dict) and isinstance(body.get("by"), str) and body["by"].strip():
            return body["by"].strip()[:128]
    return "api"


def _person_action(action: str) -> Any:
    """A handler applying `runner.<action>(alert_id, by)`: acknowledge or resolve."""

    async def handler(request: web.Request) -> web.Response:
        act = getattr(_runner(request), action)
        try:
            transition = act(request.match_info["alert_id"], await _actor(request))
        except AlertError as exc:
            return _json({"error": str(exc)}, 409)
        return _json(transition)

    return handler


def make_app(runner: EmbeddedRunner, token: str) -> web.Application:
    app = web.Application(middlewares=[_auth], client_max_size=64 * 1024)
    app[RUNNER_KEY] = runner
    app[TOKEN_KEY] = token
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/stats", _stats)
    app.router.add_get("/alerts", _alerts)
    app.router.add_get("/alerts/{alert_id}", _alert)
    app.router.add_post("/alerts/{alert_id}/ack", _person_action("acknowledge"))
    app.router.add_post("/alerts/{alert_id}/resolve", _person_action("resolve"))
    return app


async def start_api(runner: EmbeddedRunner, settings: ApiSettings) -> web.AppRunner:
    token = api_token(settings, runner.settings.data_dir)
    assert token is not None
    app_runner = web.AppRunner(make_app(runner, token), access_log=None)
    await app_runner.setup()
    site = web.TCPSite(app_runner, settings.host, settings.port)
    await site.start()
    server = getattr(site, "_server", None)
    runner.api_port = server.sockets[0].getsockname()[1] if server and server.sockets else settings.port
    return app_runner
