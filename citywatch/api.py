"""The HTTP API served by `citywatch run`: citywatch/alertapi.py's application over the embedded runner,
plus the routes only it serves (dispatch actions and /dispatch/events, incidents, silences, the console).

Every endpoint but /health, /ready, /openapi.json and /dispatch/events (signed by the dispatch system
instead: citywatch/loop/dispatch_api.py) needs `Authorization: Bearer <token>`: an account's token
(`citywatch users add`), or the bootstrap admin's (the configured `api.token`, else one generated at
start into data_dir/api-token, mode 0600, for the CLI to use). Who may do what, and the audit of
it, is citywatch/people/api.py's middleware and route table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from citywatch import alertapi, metrics
from citywatch.apitoken import api_token
from citywatch.config import ApiSettings
from citywatch.console import app as console
from citywatch.httpserve import serve
from citywatch.loop import dispatch_api, incidents_api, silences_api
from citywatch.loop.silences import Silence
from citywatch.model import Alert, Transition
from citywatch.service import SERVICE_KEY, AlertService
from citywatch.sinks.store import TxHook


class EmbeddedDesk:
    """The embedded runner behind the shared routes: its alert engine's open alerts, and people's
    actions applied at once (each committed as one transaction, the audit's `also` joining it)."""

    def __init__(self, runner: AlertService) -> None:
        self.runner = runner

    @property
    def clock(self) -> Callable[[], float]:
        return self.runner.clock

    @property
    def safety(self) -> frozenset[str]:
        return self.runner.engine.safety

    def silences_in_force(self) -> list[Silence]:
        return self.runner.silences.in_force()

    def health(self) -> dict[str, Any]:
        return self.runner.health()

    def stats(self) -> dict[str, Any]:
        return self.runner.stats()

    def held(self, alert_id: str) -> Alert | None:
        return self.runner.engine.by_id.get(alert_id)

    def open_alerts(self) -> list[Alert]:
        return sorted(self.runner.engine.by_id.values(), key=lambda a: a.opened_at)

    async def act(self, action: str, alert_id: str, by: str, also: TxHook | None) -> Transition:
        if action == "ack":
            return self.runner.acknowledge(alert_id, by, also=also)
        return self.runner.resolve(alert_id, by, also=also)


def make_app(runner: AlertService, token: str) -> web.Application:
    def runner_only(app: web.Application) -> None:
        """The routes that act on the engine, incidents and silences this process holds (see alertapi)."""
        app[SERVICE_KEY] = runner  # the full interface, for these routes
        incidents_api.register(app)
        dispatch_api.register(app)
        silences_api.register(app)
        console.register(app)

    def install_metrics(app: web.Application) -> None:
        metrics.register(app, runner)  # the pipeline, alerts, store, InfluxDB, health, the API's guard

    return alertapi.build(EmbeddedDesk(runner), runner.settings, token, runner.store.conn, install_metrics,
                          extra=runner_only)


async def start_api(runner: AlertService, settings: ApiSettings) -> web.AppRunner:
    token = api_token(settings, runner.settings.data_dir)
    assert token is not None
    app_runner, _, runner.api_port = await serve(make_app(runner, token), settings)
    return app_runner
