"""What the HTTP API (its routes, the console, /metrics) needs of the process that owns the alerts:
an interface, so the API layer never imports the runner that serves it (citywatch/streams/embedded.py
implements it; tests may serve the API over anything that does)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from citywatch.config import Settings
    from citywatch.detectors.lifecycle import AlertEngine
    from citywatch.devices.registry import RegistryCache
    from citywatch.ingest.collector import Collector
    from citywatch.ingest.collector_process import ProcessCollector
    from citywatch.loop.incidents import IncidentBook, IncidentDispatch
    from citywatch.loop.silence_book import SilenceBook
    from citywatch.model import Output, Transition
    from citywatch.sinks.alertreader import AlertReader
    from citywatch.sinks.influx import InfluxSink
    from citywatch.sinks.store import AlertStore, TxHook
    from citywatch.streams.pipeline import Pipeline


class AlertService(Protocol):
    """The alert-owning process as the API sees it: its state (read on the event loop, between
    batches) and people's actions (each committed as one transaction, `also` joining it)."""

    settings: Settings
    clock: Callable[[], float]
    engine: AlertEngine
    store: AlertStore
    devices: RegistryCache
    silences: SilenceBook
    incidents: IncidentBook
    pipeline: Pipeline
    influx: InfluxSink | None
    listeners: list[Callable[[Output], None]]  # called with every committed Output (console, metrics)
    on_batch: Callable[[float], None] | None  # seconds per batch (metrics)
    api_port: int | None
    batches: int  # processed, committed and acknowledged
    storage_error: str | None  # why the data dir cannot be written now, else None
    collector: Collector | ProcessCollector | None

    def acknowledge(self, alert_id: str, by: str, also: TxHook | None = None) -> Transition: ...

    def resolve(self, alert_id: str, by: str, also: TxHook | None = None) -> Transition: ...

    def dispatch(self, alert_id: str, action: str, by: str, *, assignee: str = "", note: str = "",
                 evidence: Iterable[str] = (), reason: str = "", also: TxHook | None = None) -> Transition: ...

    def dispatch_incident(self, incident_id: str, action: str, by: str, *, assignee: str = "", note: str = "",
                          evidence: Iterable[str] = (), reason: str = "",
                          also: TxHook | None = None) -> IncidentDispatch: ...

    def stats(self) -> dict[str, Any]: ...

    def health(self) -> dict[str, Any]: ...


# The values every route module finds on the aiohttp application (set by citywatch/api.py's make_app).
SERVICE_KEY: web.AppKey[AlertService] = web.AppKey("service")
TOKEN_KEY = web.AppKey("token", str)  # the bootstrap admin's token
READER_KEY: web.AppKey[AlertReader] = web.AppKey("reader")  # alerts read off the event loop (own connection)


def service(request: web.Request) -> AlertService:
    """The alert service behind this request's application."""
    return request.app[SERVICE_KEY]
