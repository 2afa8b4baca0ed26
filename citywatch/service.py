"""What the HTTP API (its routes, the console, /metrics) needs of the process that owns the alerts:
interfaces, so the API layer never imports the runner that serves it.

`AlertDesk` is what the routes both runners serve need (citywatch/alertapi.py): the embedded runner's
desk (citywatch/api.py, over its `AlertService`) applies a person's ack/resolve at once, the Faust
sink's (citywatch/streams/sink_api.py) forwards it to the worker that owns the device. `AlertService`
is the embedded runner as the routes only it serves see it (citywatch/streams/embedded.py implements
it; tests may serve the API over anything that does)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from aiohttp import web

if TYPE_CHECKING:
    from citywatch.config import Settings
    from citywatch.detectors.lifecycle import AlertEngine
    from citywatch.devices.registry import RegistryCache
    from citywatch.ingest.collector import Collector
    from citywatch.ingest.collector_process import ProcessCollector
    from citywatch.loop.incidents import IncidentBook, IncidentDispatch
    from citywatch.loop.silence_book import SilenceBook
    from citywatch.loop.silences import Silence
    from citywatch.model import Alert, Output, Transition
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


class Accepted(msgspec.Struct, kw_only=True):
    """A person's action taken for the worker that owns the alert's device (the Faust runner: HTTP 202);
    the transition it makes follows through the transitions topic like any other."""

    accepted: str  # ack or resolve
    alert_id: str
    device_id: str


class AlertDesk(Protocol):
    """The alert-owning process as the routes both runners serve see it (citywatch/alertapi.py)."""

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def safety(self) -> frozenset[str]: ...  # life-safety rules (a silence of them is marked as such)

    def silences_in_force(self) -> list[Silence]: ...

    def health(self) -> dict[str, Any]: ...  # `live`, `ready`, `problems` and what else the runner knows

    def stats(self) -> dict[str, Any]: ...

    def held(self, alert_id: str) -> Alert | None:
        """The alert as this process holds it in memory (open ones), else None: the route reads the store."""
        ...

    def open_alerts(self) -> list[Alert]: ...  # oldest first

    async def act(self, action: str, alert_id: str, by: str, also: TxHook | None) -> Transition | Accepted:
        """`action` (ack or resolve) by `by`: applied (the transition), or forwarded to the alert's owner
        (Accepted). Raises AlertError when the alert is unknown or its state does not allow it."""
        ...


# The values every route module finds on the aiohttp application (set by citywatch/alertapi.py's build,
# SERVICE_KEY by citywatch/api.py's make_app: the embedded runner only).
DESK_KEY: web.AppKey[AlertDesk] = web.AppKey("desk")
SERVICE_KEY: web.AppKey[AlertService] = web.AppKey("service")
TOKEN_KEY = web.AppKey("token", str)  # the bootstrap admin's token
READER_KEY: web.AppKey[AlertReader] = web.AppKey("reader")  # alerts read off the event loop (own connection)


def service(request: web.Request) -> AlertService:
    """The alert service behind this request's application."""
    return request.app[SERVICE_KEY]
