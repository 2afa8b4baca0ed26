"""Prometheus `/metrics` for the runner, the bridge, the Faust workers and the sink.

Nothing here counts on the per-message path. Each `Source` is a prometheus_client Collector that
reads, at scrape time, what the process already counts: the pipeline's `collections.Counter`, the
collector's restarts, the HTTP guard's counts, the sinks' stats. What would cost more than a few
dict reads (indexed row counts of the webhook outbox, the data dir's disk use, the InfluxDB sink's
stats, which take its lock) is read by `refresh()` in a worker thread, on its own read-only SQLite
connection, before the registry is encoded: a scrape never runs a query on the event loop. The
only observations made as work happens are per batch (the batch latency histogram) and per
transition (`TransitionTally`), never per message.

`register(app, runner)` adds GET /metrics to the runner's API; `serve_metrics` is a small server of
its own for the processes without an API (bridge, process workers).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from citywatch.detectors.health import OFFLINE_RULE
from citywatch.model import TERMINAL_STATUSES, Alert
from citywatch.sinks.alertreader import ReadOnlyStore
from citywatch.sinks.retention import disk_usage
from citywatch.sinks.store import store_path

if TYPE_CHECKING:
    from citywatch.config import Settings
    from citywatch.model import Output
    from citywatch.service import AlertService
    from citywatch.sinks.influx import InfluxSink

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text exposition format
OUTBOX_STATUSES = ("pending", "held", "dead", "suppressed")  # rows waiting or needing a person (not delivered)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DISK_PARTS = ("state_db", "state_wal", "registry_db", "registry_wal", "archive", "influx_buffer", "influx_rejected",
              "data_dir_total")


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def labelled(family: CounterMetricFamily | GaugeMetricFamily, values: Iterable[tuple[tuple[str, ...], float]]
             ) -> CounterMetricFamily | GaugeMetricFamily:
    for labels, value in values:
        family.add_metric(list(labels), value)
    return family


class Source(Collector):
    """A Collector whose expensive reads happen in `refresh()` (off the event loop), the rest in `collect()`."""

    async def refresh(self) -> None:
        return None

    def collect(self) -> Iterable[Metric]:
        return ()


# -- what the pipeline core counts ------------------------------------------------------------------


def pipeline_metrics(counts: Mapping[str, int]) -> Iterator[Metric]:
    """The pipeline's Counter: received, processed, dead letters by reason, status messages, late readings."""
    yield counter("citywatch_messages_received", "Messages the pipeline received (valid or not).",
                  counts.get("received", 0))
    yield counter("citywatch_messages_processed", "Messages accepted and run through the rules (readings and status).",
                  counts.get("processed", 0))
    reasons = CounterMetricFamily("citywatch_dead_letters", "Messages that could not be processed, by reason "
                                  "(sum() for all).", labels=["reason"])
    statuses = CounterMetricFamily("citywatch_status_messages", "Status messages (online/offline) accepted.",
                                   labels=["status"])
    for key, value in sorted(counts.items()):
        if key.startswith("dead_letter."):
            reasons.add_metric([key.removeprefix("dead_letter.")], value)
        elif key.startswith("status."):
            statuses.add_metric([key.removeprefix("status.")], value)
    yield reasons
    yield statuses
    yield counter("citywatch_late_readings", "Readings older than one already seen from their device.",
                  counts.get("late", 0))
    yield counter("citywatch_clock_ahead_readings", "Readings stamped ahead of our clock, processed at arrival.",
                  counts.get("clock_ahead", 0))


class PipelineSource(Source):
    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterable[Metric]:
        return pipeline_metrics(dict(self.counts()))


class TransitionTally:
    """Alert transitions by device kind and transition, and the open `device_offline` alerts, kept from the
    transitions themselves (a few per batch, not per message). `reseed` from the engine's open alerts at start
    and whenever the engine is rebuilt (a Faust rebalance)."""

    def __init__(self, open_alerts: Iterable[Alert] = ()) -> None:
        self.transitions: Counter[tuple[str, str]] = Counter()
        self.offline: set[str] = set()
        self.reseed(open_alerts)

    def reseed(self, open_alerts: Iterable[Alert]) -> None:
        self.offline = {a.id for a in open_alerts if a.rule == OFFLINE_RULE and a.status not in TERMINAL_STATUSES}

    def observe(self, out: Output) -> None:
        for t in out.transitions:
            alert = t.alert
            self.transitions[(alert.kind, t.transition)] += 1
            if alert.rule == OFFLINE_RULE:
                if alert.status in TERMINAL_STATUSES:
                    self.offline.discard(alert.id)
                else:
                    self.offline.add(alert.id)


class AlertSource(Source):
    """Transitions by kind, devices online (reporting within their timeout) and offline (an open
    device_offline alert), open alerts, registered devices."""

    def __init__(self, tally: TransitionTally, online: Callable[[], int], open_alerts: Callable[[], int],
                 registered: Callable[[], int] | None = None) -> None:
        self.tally, self.online, self.open_alerts, self.registered = tally, online, open_alerts, registered

    def collect(self) -> Iterable[Metric]:
        yield labelled(CounterMetricFamily("citywatch_transitions", "Alert transitions, by device kind and transition.",
                                           labels=["kind", "transition"]),
                       sorted(self.tally.transitions.items()))
        yield labelled(GaugeMetricFamily("citywatch_devices", "Devices online (reporting within their offline "
                                         "timeout) and offline (an open device_offline alert).", labels=["state"]),
                       [(("online",), self.online()), (("offline",), len(self.tally.offline))])
        yield gauge("citywatch_open_alerts", "Alerts not resolved or closed.", self.open_alerts())
        if self.registered is not None:
            yield gauge("citywatch_devices_registered", "Devices in the registry.", self.registered())


# -- the store: outbox depth and disk use (read off the event loop) -----------------------------------


class OutboxDepth(ReadOnlyStore):
    """Webhook outbox rows by status, each an indexed range count (the (status, ...) indexes) on a
    read-only connection of its own: never a GROUP BY over the table, never the writer's connection."""

    def counts(self) -> dict[str, int]:
        with self._lock:
            conn = self._connection()
            return {status: int(conn.execute("SELECT COUNT(*) FROM webhook_outbox WHERE status = ?",
                                             (status,)).fetchone()[0])
                    for status in OUTBOX_STATUSES}


class StoreSource(Source):
    """Outbox depth by status and the data dir's disk use (what `citywatch storage` and /stats report)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.outbox = OutboxDepth(store_path(data_dir))
        self.depth: dict[str, int] | None = None
        self.disk: dict[str, Any] = {}

    async def refresh(self) -> None:
        self.depth, self.disk = await asyncio.to_thread(self._read)

    def _read(self) -> tuple[dict[str, int] | None, dict[str, Any]]:
        try:
            depth: dict[str, int] | None = self.outbox.counts()
        except sqlite3.Error as exc:  # the store is failing: /health says so; the scrape still answers
            log.debug("metrics: cannot count the outbox: %s", exc)
            depth = None
        return depth, disk_usage(self.data_dir)

    def collect(self) -> Iterable[Metric]:
        if self.depth is not None:
            yield labelled(GaugeMetricFamily("citywatch_outbox_rows", "Webhook outbox rows by status (waiting: "
                                             "pending, held by a silence; dead; suppressed).", labels=["status"]),
                           [((status,), n) for status, n in self.depth.items()])
        disk = self.disk
        yield labelled(GaugeMetricFamily("citywatch_disk_bytes", "Bytes used in the data dir, by part.",
                                         labels=["part"]),
                       [((part,), disk[part]) for part in DISK_PARTS if disk.get(part) is not None])
        if disk.get("fs_free") is not None:
            yield gauge("citywatch_filesystem_free_bytes", "Free bytes on the data dir's file system.", disk["fs_free"])
            yield gauge("citywatch_filesystem_size_bytes", "Size of the data dir's file system.", disk["fs_size"])

    def close(self) -> None:
        self.outbox.close()


class InfluxSource(Source):
    """The InfluxDB sink: lines written, failures, and its buffer (memory and disk)."""

    def __init__(self, influx: InfluxSink | None) -> None:
        self.influx = influx
        self.stats: dict[str, Any] | None = None

    async def refresh(self) -> None:
        if self.influx is not None:
            self.stats = await asyncio.to_thread(self.influx.stats)  # takes the sink's lock: not on the loop

    def collect(self) -> Iterable[Metric]:
        s = self.stats
        if s is None:
            return
        yield gauge("citywatch_influx_buffer_lines", "Points waiting in the on-disk buffer for InfluxDB.",
                    s["buffered_on_disk"])
        yield gauge("citywatch_influx_buffer_bytes", "Bytes of the on-disk buffer for InfluxDB.", s["buffered_bytes"])
        yield gauge("citywatch_influx_memory_lines", "Points waiting in memory for InfluxDB.", s["in_memory"])
        yield gauge("citywatch_influx_failing", "1 while writes to InfluxDB fail.", int(bool(s["failing"])))
        yield counter("citywatch_influx_written_lines", "Points written to InfluxDB.", s["written_lines"])
        yield counter("citywatch_influx_failed_attempts", "Failed writes to InfluxDB (retried).", s["failed_attempts"])
        yield counter("citywatch_influx_rejected_lines", "Points InfluxDB refused (kept in influx-rejected/).",
                      s["rejected_lines"])


class GuardSource(Source):
    """The HTTP API's connection guard (citywatch/httpserve.py): open connections and what it did."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def collect(self) -> Iterable[Metric]:
        from citywatch.httpserve import GUARD_KEY

        guard = self.app.get(GUARD_KEY)
        if guard is None:
            return
        stats = guard.stats()
        yield gauge("citywatch_api_connections", "Open HTTP connections to the API.", stats["connections"])
        yield gauge("citywatch_api_max_connections", "The API's connection cap.", stats["max_connections"])
        yield labelled(CounterMetricFamily("citywatch_api_connection_events", "API connections accepted, evicted "
                                           "(idle, to make room), refused (all busy), timed out (408).",
                                           labels=["event"]),
                       [((event,), stats[event]) for event in ("accepted", "evicted", "refused", "timed_out")])


# -- the embedded runner ------------------------------------------------------------------------------


class RunnerSource(Source):
    """What the runner's health() and collector report: liveness, MQTT, the hand-off backlog, restarts."""

    def __init__(self, runner: AlertService) -> None:
        self.runner = runner

    def collect(self) -> Iterable[Metric]:
        r = self.runner
        health = r.health()
        backlog = health["backlog"]
        yield gauge("citywatch_live", "1 while the consume loop runs (what /health answers).", int(health["live"]))
        yield gauge("citywatch_ready", "1 while ready (what /ready answers).", int(health["ready"]))
        yield gauge("citywatch_mqtt_connected", "1 while connected and subscribed to the broker.",
                    int(health["mqtt_connected"]))
        yield counter("citywatch_collector_restarts", "Restarts of the MQTT collector's child process.",
                      health["collector_restarts"])
        yield gauge("citywatch_handoff_messages", "Messages waiting between the collector and the pipeline.",
                    backlog["handoff"])
        yield gauge("citywatch_handoff_bytes", "Bytes waiting between the collector and the pipeline.",
                    backlog["handoff_bytes"])
        yield gauge("citywatch_unacked_messages", "Messages taken and not yet acknowledged to the broker.",
                    backlog["unacked"])
        yield gauge("citywatch_storage_error", "1 while the data dir cannot be written (nothing is acknowledged).",
                    int(r.storage_error is not None))
        yield counter("citywatch_batches", "Batches processed, committed and acknowledged.", r.batches)
        c = r.collector
        if c is not None:
            yield counter("citywatch_mqtt_received", "Messages the collector received from the broker.", c.received)
            yield counter("citywatch_mqtt_connects", "Connections the collector made to the broker.", c.connects)


def batch_histogram(registry: CollectorRegistry, name: str, doc: str) -> Histogram:
    return Histogram(name, doc, buckets=BATCH_BUCKETS, registry=registry)


class Exporter:
    """One process's metrics: a registry of Sources; `render()` refreshes them, then encodes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, fds
        self.sources: list[Source] = []

    def add(self, *sources: Source) -> Exporter:
        for source in sources:
            self.registry.register(source)
            self.sources.append(source)
        return self

    async def render(self) -> bytes:
        for source in self.sources:
            await source.refresh()
        return generate_latest(self.registry)

    def close(self) -> None:
        for source in self.sources:
            close = getattr(source, "close", None)
            if close is not None:
                close()


EXPORTER_KEY = web.AppKey("metrics", Exporter)


async def metrics_handler(request: web.Request) -> web.Response:
    body = await request.app[EXPORTER_KEY].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def bearer_ok(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def install(app: web.Application, exporter: Exporter, open_route: bool) -> None:
    """GET /metrics on `app`. `open_route` (api.metrics_auth false): answered before any auth middleware,
    like /health; otherwise the app's own auth applies (a route like any other)."""
    app[EXPORTER_KEY] = exporter
    app.router.add_get("/metrics", metrics_handler)

    async def close(app: web.Application) -> None:
        exporter.close()

    app.on_cleanup.append(close)
    if open_route:
        @web.middleware
        async def open_metrics(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path == "/metrics" and request.method in ("GET", "HEAD"):
                return await metrics_handler(request)
            response: web.StreamResponse = await handler(request)
            return response

        app.middlewares.insert(0, open_metrics)  # serve() puts its connection guard in front of it


def register(app: web.Application, runner: AlertService) -> Exporter:
    """GET /metrics on the runner's API: the pipeline, alerts and devices, the store, InfluxDB, the
    runner's health and the API's connection guard; and the batch latency histogram it observes."""
    exporter = Exporter()
    tally = TransitionTally(runner.engine.by_id.values())
    runner.listeners.append(tally.observe)  # per batch (and per person's action), with its transitions
    exporter.add(PipelineSource(lambda: runner.pipeline.counters),
                 AlertSource(tally, lambda: len(runner.pipeline.deadman), lambda: len(runner.engine.by_id),
                             lambda: len(runner.devices)),
                 StoreSource(runner.settings.data_dir), InfluxSource(runner.influx), RunnerSource(runner),
                 GuardSource(app))
    histogram = batch_histogram(exporter.registry, "citywatch_batch_duration_seconds",
                                "Per batch: processing, commit (SQLite and InfluxDB hand-off) and acknowledgement.")
    runner.on_batch = histogram.observe
    if runner.settings.api.metrics_auth:
        from citywatch.people import api as access

        access.declare(app, "GET", "/metrics", access.Rule("view_stats"))
    install(app, exporter, open_route=not runner.settings.api.metrics_auth)
    return exporter


# -- the Kafka runner: bridge, process workers, sink ---------------------------------------------------


# -- a server of its own (bridge, process workers) ----------------------------------------------------


async def serve_metrics(exporter: Exporter, settings: Settings) -> tuple[web.AppRunner, int] | None:
    """GET /metrics on metrics.host:metrics.port (none when metrics.enabled is false, or the port cannot be
    bound: logged, the process goes on), behind the API's guard (timeouts, connection cap). With
    api.metrics_auth the data dir's bearer token is needed."""
    if not settings.metrics.enabled:
        return None
    from citywatch.apitoken import api_token
    from citywatch.httpserve import serve

    app = web.Application(client_max_size=1024)
    if settings.api.metrics_auth:
        token = api_token(settings.api, settings.data_dir)
        assert token is not None

        @web.middleware
        async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
            if not bearer_ok(request, token):
                return web.json_response({"error": "missing or invalid bearer token"}, status=401)
            response: web.StreamResponse = await handler(request)
            return response

        app.middlewares.append(auth)
    install(app, exporter.add(GuardSource(app)), open_route=False)
    api = settings.api.model_copy(update={"host": settings.metrics.host, "port": settings.metrics.port,
                                          "max_connections": 16})
    try:
        runner, _, port = await serve(app, api)
    except OSError as exc:  # the work goes on without metrics: Prometheus shows the target down
        log.error("metrics: cannot serve /metrics on %s:%d: %s; running without it", settings.metrics.host,
                  settings.metrics.port, exc.strerror or exc)
        return None
    log.info("metrics: http://%s:%d/metrics", settings.metrics.host, port)
    return runner, port
