"""The Faust sink's HTTP API: citywatch/alertapi.py's application over the sink's alert store.

The same routes, answers and auth as `citywatch run`'s for what both serve (/health, /ready, /stats,
/alerts, /alerts/{id}, ack/resolve, /kpis, /metrics, /openapi.json), with one difference behind the
desk: ack/resolve travel to the worker that owns the alert's device through the telemetry topic
(202 Accepted); the resulting transition comes back through the transitions topic like any other.
What it does not serve, and why: citywatch/alertapi.py's docstring.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from citywatch import alertapi, metrics
from citywatch.apitoken import api_token
from citywatch.config import Settings
from citywatch.errors import AlertError
from citywatch.httpserve import serve
from citywatch.loop.silences import Silence
from citywatch.metrics import Exporter
from citywatch.model import TERMINAL_STATUSES, Alert
from citywatch.service import Accepted
from citywatch.sinks.alertreader import AlertReader
from citywatch.sinks.store import TxHook, store_path
from citywatch.streams.faust_sink import TransitionSink

RequestAction = Callable[[str, str, bytes], Awaitable[None]]  # (device id, action, JSON body) to its partition
PipelineHealth = Callable[[], dict[str, Any]]  # role all: the process role's problems and offline judgement


class SinkDesk:
    """The sink behind the shared routes: open alerts from its store (it holds none in memory), and
    people's actions forwarded to the device's owner with `request_action`."""

    def __init__(self, sink: TransitionSink, settings: Settings, role: str, clock: Callable[[], float],
                 request_action: RequestAction, pipeline_health: PipelineHealth | None = None) -> None:
        self.sink = sink
        self.pipeline_health = pipeline_health
        self.role = role
        self.clock = clock
        self.safety = settings.alerts.safety_rules
        self.request_action = request_action
        self.reader = AlertReader(store_path(settings.data_dir))  # the owner check, off the event loop

    def silences_in_force(self) -> list[Silence]:
        return self.sink.silences.in_force()

    def health(self) -> dict[str, Any]:
        """Live while the worker runs (Faust restarts its agents; Kafka holds what waits); ready unless,
        with role all, the pipeline reports a problem (offline judgement far behind, no watermarks)."""
        extra = self.pipeline_health() if self.pipeline_health is not None else {}
        problems = list(extra.pop("problems", []))
        return {"live": True, "ready": not problems, "problems": problems, "role": self.role,
                "webhooks": self.sink.delivery.stats(), **extra}

    def stats(self) -> dict[str, Any]:
        return {"role": self.role, "sink": dict(self.sink.counters), "webhooks": self.sink.delivery.stats(),
                "health": self.health()}

    def held(self, alert_id: str) -> Alert | None:
        return None  # the sink holds no alert in memory: the route reads the store

    def open_alerts(self) -> list[Alert]:
        return self.sink.store.open_alerts()  # one indexed read on the sink's connection, as it commits

    async def act(self, action: str, alert_id: str, by: str, also: TxHook | None) -> Accepted:
        """Forwarded, not applied. Refused (409, 404 through the route) as the owner would refuse it,
        judged from the store, which may lag the owner by a transition in flight: then the owner rejects
        it (counted in actions_rejected). `also` (the audit in the action's own transaction) cannot
        join here: the API's middleware records the accepted request instead."""
        found = await asyncio.to_thread(self.reader.alert, alert_id)
        if found is None:
            raise AlertError(f"no alert {alert_id}")
        if found.status in TERMINAL_STATUSES or (action == "ack" and found.status != "open"):
            raise AlertError(f"alert {alert_id} is already {found.status}")  # as the owner would (409)
        body = json.dumps({"alert_id": alert_id, "by": by, "at": self.clock()})
        await self.request_action(found.device_id, action, body.encode())
        return Accepted(accepted=action, alert_id=alert_id, device_id=found.device_id)

    def close(self) -> None:
        self.reader.close()


def make_sink_app(sink: TransitionSink, settings: Settings, role: str, clock: Callable[[], float],
                  request_action: RequestAction, exporter: Exporter, token: str,
                  pipeline_health: PipelineHealth | None = None) -> web.Application:
    """The sink's API application (not yet served)."""
    desk = SinkDesk(sink, settings, role, clock, request_action, pipeline_health)

    def install_metrics(app: web.Application) -> None:
        # this worker's (sink, and the pipeline with role all), with the API's connection guard
        metrics.install(app, exporter.add(metrics.GuardSource(app)), open_route=not settings.api.metrics_auth)

    app = alertapi.build(desk, settings, token, sink.store.conn, install_metrics)

    async def close(app: web.Application) -> None:
        desk.close()

    app.on_cleanup.append(close)
    return app


async def start_sink_api(sink: TransitionSink, settings: Settings, role: str, clock: Callable[[], float],
                         request_action: RequestAction, exporter: Exporter,
                         pipeline_health: PipelineHealth | None = None) -> web.AppRunner:
    """Serve the sink's API on api.host:api.port, behind the same guard as the runner's API."""
    token = api_token(settings.api, settings.data_dir)
    assert token is not None
    app = make_sink_app(sink, settings, role, clock, request_action, exporter, token, pipeline_health)
    runner, _, _ = await serve(app, settings.api)  # the same timeouts and connection cap as the runner's API
    return runner
