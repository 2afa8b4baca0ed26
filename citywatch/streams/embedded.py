"""The embedded runner: one asyncio process runs collector, pipeline, stores, sinks and the API.

Per batch: process every message, commit alerts + transitions + dead letters + device values
(record and alert streaks, streams/device_value.py: the Faust Table's bytes) + webhook outbox in one
SQLite transaction, then acknowledge the MQTT messages. A crash before
the commit means the broker redelivers; after it, nothing is lost. Sinks run beside it.

Fail loudly or recover, never hang: the runner owns its data dir (an exclusive lock), and every
background task (consume loop, webhook delivery, collector supervision) is watched. A full or
read-only disk is retried with backoff (nothing acknowledged, reported as not ready); any other
failure, such as a corrupt state.db, stops the runner with one line naming the cause and `run`
raises RunnerFailed, so `citywatch run` exits non-zero and a supervisor restarts it.
`health()` is what /health and /ready report.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from citywatch.config import Settings
from citywatch.datalock import DataDirLock
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.devices.registry import Registry, RegistryCache, registry_path
from citywatch.errors import AlertError, CitywatchError, StorageError
from citywatch.ingest.collector import Collector, Message, message_size, parse_url, with_packet_limit
from citywatch.ingest.collector_process import ProcessCollector
from citywatch.ingest.handoff import Handoff
from citywatch.loop.incidents import IncidentDispatch, dispatch_incident, open_book
from citywatch.loop.silence_book import SilenceBook
from citywatch.model import Output, Transition
from citywatch.sinks.influx import InfluxBackpressure, InfluxSink, lines_for
from citywatch.sinks.retention import Retention
from citywatch.sinks.store import AlertStore, TxHook, store_path
from citywatch.sinks.value_writer import ValueWriter
from citywatch.sinks.walcheckpoint import WalCheckpointer
from citywatch.sinks.webhooks import Outbox, WebhookDelivery
from citywatch.streams.checkpoint import Checkpoint
from citywatch.streams.device_value import DeviceValues
from citywatch.streams.gcpolicy import FreezeAfterFullCollections
from citywatch.streams.pipeline import Pipeline
from citywatch.streams.sight import Sight

log = logging.getLogger(__name__)

Listener = Callable[[Output], None]
STORAGE_RETRY_MAX_S = 5.0
STOP_FLUSH_CHUNK = 20_000  # device values a transaction when flushing at a stop (about 1 s each, compiled)
OFFLINE_CHECKS_BEHIND_S = 60.0  # a backlog this old delays offline detection enough to say so in /ready
STALLED_WAIT_SLACK_S = 0.5  # a wait for readings this much longer than asked was frozen or starved (sight.py)
TASK_NAMES = {"consume": "the consume loop", "webhooks": "the webhook delivery task",
              "collector": "the MQTT collector supervision"}


class RunnerFailed(CitywatchError):
    """The runner stopped on a fatal error; the message is the one line it logged."""


class CollectorDied(CitywatchError):
    """The MQTT collector cannot recover by itself (its network thread ended)."""


class StorageFailure(StorageError):
    """A database file is corrupt (or cannot be opened): retrying cannot help."""

    def __init__(self, path: Path, exc: sqlite3.Error) -> None:
        self.path = path
        if isinstance(exc, sqlite3.OperationalError):
            text = f"fatal: cannot open {path.name} ({path}): {exc}"
        else:
            text = f"fatal: {path.name} ({path}) is corrupt: {exc}; restore from a backup or move it aside"
        super().__init__(text)


@contextlib.contextmanager
def naming(path: Path, transient: bool = False) -> Iterator[None]:
    """Turn an SQLite error about `path` into StorageFailure naming the file. With `transient`, the
    errors of a full or read-only disk (OperationalError) pass through for the caller to retry."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if transient and isinstance(exc, sqlite3.OperationalError):
            raise
        raise StorageFailure(path, exc) from exc


class EmbeddedRunner:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.listeners: list[Listener] = []
        self.ready = asyncio.Event()  # set once started (and also when the start failed)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.lock = DataDirLock(settings.data_dir, "citywatch run").acquire()  # DataDirBusy: one line
        try:
            self._open(settings, clock)
        except BaseException:
            self.lock.release()
            raise
        self.collector: Collector | ProcessCollector | None = None
        self.handoff: Handoff[Message] | None = None
        self.broker: Any = None
        self.batches = 0
        self.api_port: int | None = None
        self.storage_error: str | None = None
        self.fatal: str | None = None  # the one line logged when a fatal error stopped the runner
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.stale_after_s = max(30.0, 10 * settings.alerts.tick_s)  # no loop turn for this long: stalled
        self.last_loop_mono = time.monotonic()
        self.last_loop_at: float | None = None  # wall time of the consume loop's last turn
        self.last_batch_at: float | None = None  # wall time of the last acknowledged batch of messages
        self.unacked = 0  # messages taken from the hand-off and not yet acknowledged
        # devices whose state changed without being written (ingest.state_checkpoint_s > 0)
        self.checkpoint = Checkpoint(settings.ingest.state_checkpoint_s, max(64, settings.ingest.batch_size // 4))
        self.on_batch: Callable[[float], None] | None = None  # seconds per batch, taken to acknowledged (metrics.py)
        self.wal = WalCheckpointer(store_path(settings.data_dir))
        self.value_writer = ValueWriter(store_path(settings.data_dir))  # quiet devices' checkpoints, off the loop
        self.sight = Sight(clock())  # offline detection counts only silence we could have seen (sight.py)

    def _open(self, settings: Settings, clock: Callable[[], float]) -> None:
        """Open the registry and the alert store; an unreadable file stops the start, naming it."""
        with naming(registry_path(settings.data_dir)):
            self.registry = Registry(registry_path(settings.data_dir))
            self.devices = RegistryCache(self.registry)
        self.outbox = Outbox(settings.webhooks, clock, settings.alerts.escalation.levels, settings.alerts.safety_rules)
        with naming(store_path(settings.data_dir)):
            self.store = AlertStore(store_path(settings.data_dir), hooks=[self.outbox.enqueue],
                                    retention=settings.retention)
            self.engine = AlertEngine(settings.alerts, self.store.open_alerts(), track_keys=True)
            self.values = DeviceValues(keep_alert=False)  # alerts: in the store's own table
            records = self.values.load(self.store.device_values().items(), self.engine)  # and the streaks
            self.pipeline = Pipeline(settings, self.devices, self.engine, records, started_at=clock())
            # incidents: the open ones as committed, brought up to date (and open alerts grouped) at start
            self.incidents, start = open_book(settings.incidents, self.store, clock())
            changes = self.incidents.take_changes()
            if start.incident_transitions or changes.incidents or changes.members:
                self.store.commit(start, [], {}, incidents=changes.incidents, members=changes.members)
            self.delivery = WebhookDelivery(store_path(settings.data_dir), settings.webhooks)
        self.influx = InfluxSink(settings.influx, settings.data_dir) if settings.influx.url else None
        self.retention = Retention(settings.retention, settings.data_dir)
        self.silences = SilenceBook(self.store.conn, settings, clock, influx=self.influx,
                                    on_release=self.delivery.notify)  # citywatch/loop/silences.py
        self.silences.start()

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set (returns) or a fatal error (raises RunnerFailed, already logged)."""
        try:
            await self._run(stop)
        finally:
            self.ready.set()  # wake whoever waits for the start, also when it failed
            self.lock.release()
        if self.fatal is not None:
            raise RunnerFailed(self.fatal)

    async def _run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        protocol = mqtt.MQTTv5
        if self.settings.mqtt.embedded:
            self.broker = await start_embedded_broker(self.settings.mqtt.url)
            protocol = mqtt.MQTTv311  # amqtt speaks MQTT 3.1.1
        mqtt_settings = with_packet_limit(self.settings.mqtt, self.settings.ingest.max_payload_bytes)
        handoff: Handoff[Message] = Handoff(mqtt_settings.queue_size, loop, mqtt_settings.queue_bytes,
                                            message_size)
        self.handoff = handoff
        self.wal.start(self.store.conn)  # checkpoints in a thread of their own (walcheckpoint.py)
        if self.checkpoint.every_s > 0:
            self.value_writer.start()
        collector_class = ProcessCollector if mqtt_settings.collector_process else Collector
        self.collector = collector_class(mqtt_settings, handoff, protocol)
        self.collector.start()
        self.last_loop_mono = time.monotonic()
        api_runner = None
        try:
            api_runner = await self._start_api()
            if api_runner is not False:
                self.tasks = {"consume": asyncio.create_task(self._consume(handoff, stop), name="consume"),
                              "webhooks": asyncio.create_task(self.delivery.run(stop), name="webhooks"),
                              "collector": asyncio.create_task(self._watch_collector(stop), name="collector")}
                await self._supervise(stop)
        finally:
            await self._shutdown(handoff, stop, api_runner if api_runner is not False else None)

    async def _supervise(self, stop: asyncio.Event) -> None:
        """Wait for the stop or for the first task to end; a task ending by itself is fatal."""
        stopped = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({stopped, *self.tasks.values()}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        for name, task in self.tasks.items():
            if task in done and not stop.is_set():
                self._fail(name, task)
                break
        stop.set()

    def _fail(self, name: str, task: asyncio.Task[Any]) -> None:
        """Log the one line that says why the runner stops, and keep it for the exit."""
        exc = None if task.cancelled() else task.exception()
        what = TASK_NAMES[name]
        if isinstance(exc, StorageError | CollectorDied):
            self.fatal = str(exc) if str(exc).startswith("fatal: ") else f"fatal: {exc}"
            log.critical("%s", self.fatal)
        elif exc is not None:
            self.fatal = f"fatal: {what} failed: {type(exc).__name__}: {exc}; stopping (a bug: please report it)"
            log.critical("%s", self.fatal, exc_info=exc)
        else:
            self.fatal = f"fatal: {what} stopped unexpectedly; stopping"
            log.critical("%s", self.fatal)

    async def _shutdown(self, handoff: Handoff[Message], stop: asyncio.Event, api_runner: Any) -> None:
        stop.set()
        assert self.collector is not None
        await asyncio.to_thread(self.collector.stop)
        consume = self.tasks.get("consume")
        if consume is not None and not consume.done():
            await asyncio.wait({consume})
        if consume is not None and self.fatal is None and not consume.cancelled() and consume.exception():
            self._fail("consume", consume)  # failed on its last turn, after the stop
        if self.fatal is None:
            try:
                await self._drain(handoff, stop)
                await self._flush_unsaved(stop)
            except StorageError as exc:  # met while draining: still one clear line, still non-zero
                self.fatal = str(exc) if str(exc).startswith("fatal: ") else f"fatal: {exc}"
                log.critical("%s", self.fatal)
        for task in self.tasks.values():
            if not task.done():
                task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.retention.stop()
        await asyncio.to_thread(self.wal.stop)
        for close in (self.delivery.close, self.store.close, self.registry.close):
            with contextlib.suppress(sqlite3.Error):
                close()
        if api_runner is not None:
            await api_runner.cleanup()
        if self.influx is not None:
            await asyncio.to_thread(self.influx.close)
        if self.broker is not None:
            await self.broker.shutdown()

    async def _flush_unsaved(self, stop: asyncio.Event) -> None:
        """Write the learning not yet checkpointed, oldest first, in bounded transactions, for at most
        ingest.stop_flush_s: a stop must finish within the supervisor's timeout, and what is left is
        what a crash would forget (never a message, an alert or a webhook)."""
        deadline = time.monotonic() + self.settings.ingest.stop_flush_s
        await asyncio.to_thread(self.value_writer.stop, self.settings.ingest.stop_flush_s)
        waiting = self.value_writer.take_pending()  # values it could not write in time: the loop tries
        while waiting and self.storage_error is None and time.monotonic() < deadline:
            chunk = dict(itertools.islice(waiting.items(), STOP_FLUSH_CHUNK))
            for device_id in chunk:
                del waiting[device_id]
            await self._store_until_written(Output(), stop, extra_values=chunk)
        while self.checkpoint.unsaved and self.storage_error is None and time.monotonic() < deadline:
            await self._store_until_written(Output(), stop, flush_states=True)
        if self.checkpoint.unsaved or waiting:
            log.warning("stopping with %d devices' learning of the last %g s or less not written "
                        "(ingest.stop_flush_s %g s): as after a crash, they resume from their last checkpoint",
                        len(self.checkpoint.unsaved) + len(waiting), self.settings.ingest.state_checkpoint_s,
                        self.settings.ingest.stop_flush_s)

    async def _start_api(self) -> Any:
        """The API's runner; None when disabled; False when it cannot listen (fatal, logged)."""
        if not self.settings.api.enabled:
            return None
        from citywatch.api import start_api

        api = self.settings.api
        try:
            app_runner = await start_api(self, api)
        except OSError as exc:
            self.fatal = (f"fatal: cannot serve the API on {api.host}:{api.port}: {exc.strerror or exc}; stop what "
                          "listens there or set api.port (CITYWATCH_API__PORT) or api.host")
            log.critical("%s", self.fatal)
            return False
        self.lock.set_api(f"{api.host}:{self.api_port}")
        return app_runner

    async def _watch_collector(self, stop: asyncio.Event) -> None:
        """Ends (fatally) if the collector can no longer recover by itself: a thread collector whose
        paho thread died, or the process collector's supervisor thread. Its child process dying is
        recovered inside ProcessCollector (restarted with backoff)."""
        while not stop.is_set():
            collector = self.collector
            if collector is not None and not collector.alive():
                raise CollectorDied("the MQTT collector's network thread died (see the error above); stopping")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def _consume(self, handoff: Handoff[Message], stop: asyncio.Event) -> None:
        tick_s = self.settings.alerts.tick_s
        batch_size = self.settings.ingest.batch_size
        gc_policy = FreezeAfterFullCollections()
        last_tick = 0.0
        assert self.collector is not None
        if not await self._wait_connected(stop, timeout=10.0):
            log.warning("not connected to %s yet; retrying in the background", self.settings.mqtt.url)
        self.ready.set()
        registry_file = registry_path(self.settings.data_dir)
        while not stop.is_set():
            self._heartbeat()
            wait_s = min(tick_s, 0.2)
            waited_from, waited_mono = self.clock(), time.monotonic()
            batch = await handoff.get_batch(batch_size, timeout=wait_s)
            now = self.clock()
            stalled = time.monotonic() - waited_mono > wait_s + STALLED_WAIT_SLACK_S
            self._watch_sight(now, len(handoff), batch[-1].received_at if batch else None,
                              None if batch or stalled else waited_from)
            with naming(registry_file, transient=True):
                self.devices.refresh()  # one cheap query; reloads only after another process committed
            tick = now - last_tick >= tick_s
            if tick:
                last_tick = now
            if batch or tick:
                await self._handle(batch, now, tick, stop)
            if tick:
                self.retention.start_if_due(now)  # a bounded purge/archive pass, in a worker thread
                self.wal.check(self.store.conn)
            gc_policy.check()
            await asyncio.sleep(0)  # with a backlog every await above returns at once: let the API answer

    async def _wait_connected(self, stop: asyncio.Event, timeout: float) -> bool:
        """Wait for the first connection in short slices, so a stop meanwhile ends the wait."""
        assert self.collector is not None
        deadline = time.monotonic() + timeout
        while not stop.is_set() and time.monotonic() < deadline:
            self._heartbeat()
            if await asyncio.to_thread(self.collector.wait_connected, 0.25):
                return True
        return False

    async def _handle(self, batch: list[Message], now: float, tick: bool, stop: asyncio.Event) -> None:
        """Process a batch, store what it produced, then acknowledge it to the broker."""
        started = time.perf_counter()
        out = Output()
        process = self.pipeline.process
        self.unacked = len(batch)
        for m in batch:
            process(m.topic, m.payload, m.received_at, out)
        if tick:
            self.pipeline.tick(now, out, silence_as_of=self.sight.caught_up_at)
        self.incidents.group(out)  # per batch, on its transitions only: the per-reading path is untouched
        self.incidents.assign_joiners(self.engine, now, out)
        if not await self._store_until_written(out, stop):
            return  # stopping while storage fails: unacknowledged, so the broker redelivers
        if tick:
            self.silences.tick(now)  # silences whose end passed release their held webhooks
        self._published(out)
        if not await self._to_influx(out, stop):
            return
        if batch and self.collector is not None:
            self.collector.ack(batch)
            self.last_batch_at = time.time()
        self.unacked = 0
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(time.perf_counter() - started)

    def _intake_connected(self) -> bool:
        """The collector is connected and subscribed and its process is up: readings can reach us."""
        c = self.collector
        subscribed = getattr(c, "subscribed", None)
        return bool(c is not None and c.connected.is_set() and (subscribed is None or subscribed.is_set())
                    and getattr(c, "down_since", None) is None)

    def _watch_sight(self, now: float, backlog: int, newest_received_at: float | None,
                     quiet_since: float | None) -> None:
        """Blind or behind: offline timers must not count it as the devices' silence (sight.py)."""
        blind_since = self.sight.blind_since
        regained = self.sight.observe(now, self._intake_connected(), backlog, newest_received_at, quiet_since)
        if regained is not None:
            deadman = self.pipeline.deadman
            deadman.grace_from = max(deadman.grace_from, regained)
            if blind_since is not None and regained - blind_since > 1.0:
                log.warning("readings can reach us again after %.0f s without: each device's offline timer "
                            "restarts from now", regained - blind_since)

    def _heartbeat(self) -> None:
        """The consume loop is alive and turning (also while it waits for storage or InfluxDB)."""
        self.last_loop_mono = time.monotonic()
        self.last_loop_at = time.time()

    async def _store_until_written(self, out: Output, stop: asyncio.Event, flush_states: bool = False,
                                   extra_values: Mapping[str, bytes] | None = None) -> bool:
        """Commit, retrying with backoff while the data directory is full or unwritable. Meanwhile
        nothing is acknowledged and no new batch is taken: the broker holds the backlog. Any other
        database error (a corrupt file) raises StorageFailure naming the file: retrying cannot help.
        Quiet devices' checkpointed values go to the value writer's thread (value_writer.py)."""
        alerts, engaged = self.engine.take_dirty(), self.values.touched(self.engine)
        values = self._values_to_write(engaged, self.clock(), flush_states)
        if extra_values:  # older than the values this call computed, which win
            values = {**extra_values, **values}
        elif values and not flush_states and self.value_writer.running:
            quiet = {d: v for d, v in values.items() if v is not None and d not in engaged}
            left = self.value_writer.offer(quiet)
            values = {d: v for d, v in values.items() if d not in quiet or d in left}
        if self.value_writer.died and self.value_writer.pending:  # what it held: older than this batch's
            values = {**self.value_writer.take_pending(), **values}
        incidents = self.incidents.take_changes()
        delay = 0.2
        while True:
            self._heartbeat()
            try:
                with naming(self.store.path, transient=True), self.value_writer.ordered(values):
                    self.store.commit(out, alerts, values, incidents=incidents.incidents,
                                      members=incidents.members)
            except (sqlite3.OperationalError, OSError) as exc:
                if self.storage_error is None:
                    log.error("cannot write to %s (%s): holding %d messages unacknowledged and retrying",
                              self.settings.data_dir, exc, len(out))
                self.storage_error = str(exc)
                if stop.is_set():
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORAGE_RETRY_MAX_S)
                continue
            if self.storage_error is not None:
                log.warning("data directory writable again; resuming")
                self.storage_error = None
            return True

    def _values_to_write(self, engaged: set[str], now: float, flush: bool) -> dict[str, bytes | None]:
        """Device values (record and alert streaks) to commit with this batch (None: delete): those
        `ingest.state_checkpoint_s` says are due (checkpoint.py; every one that changed when it is 0).
        A device whose alert streaks or alerts changed (`engaged`) is written with its batch, as an
        alert is, so a streak is never lost by a crash. On `flush` (a stop), up to STOP_FLUSH_CHUNK
        waiting devices, oldest first."""
        pipeline, encode = self.pipeline, self.values.encode
        dirty = pipeline.take_dirty()
        changed = dirty | engaged if engaged else dirty
        due = self.checkpoint.due(changed, engaged, now, flush, flush_limit=STOP_FLUSH_CHUNK)
        return {device_id: encode(device_id, pipeline) for device_id in due}

    def _published(self, out: Output) -> None:
        if out.transitions or out.incident_transitions:
            self.delivery.notify()
        for listener in self.listeners:
            listener(out)

    async def _to_influx(self, out: Output, stop: asyncio.Event) -> bool:
        """Hand points to the InfluxDB sink and wait until they are in InfluxDB or its disk buffer,
        so an acknowledged message never has points only in memory. A full buffer makes us wait
        here (off the loop): no new batch is taken and the broker holds the backlog."""
        if self.influx is None or not len(out):
            return True
        lines = lines_for(out)
        try:
            self.influx.add(lines, timeout=0)
        except InfluxBackpressure:
            while True:  # wait in slices, so a stop is noticed while InfluxDB stays down
                self._heartbeat()
                try:
                    await asyncio.to_thread(self.influx.add, lines, 1.0)
                    break
                except InfluxBackpressure:
                    if stop.is_set():
                        return False
        while not await asyncio.to_thread(self.influx.flush, 1.0):
            self._heartbeat()
            if stop.is_set():
                return False
        return True

    async def _drain(self, handoff: Handoff[Message], stop: asyncio.Event) -> None:
        """Process what is already in the hand-off before stopping (unacked: redelivered anyway)."""
        while len(handoff) and self.storage_error is None:
            await self._handle(await handoff.get_batch(self.settings.ingest.batch_size, 0.0), self.clock(), False,
                               stop)

    # -- people's actions (API, CLI) --------------------------------------------------------

    def acknowledge(self, alert_id: str, by: str, also: TxHook | None = None) -> Transition:
        """`also` writes in the action's transaction (the audit record: citywatch/people/api.py)."""
        return self._human(self.engine.acknowledge(alert_id, by, self.clock()), also)

    def resolve(self, alert_id: str, by: str, also: TxHook | None = None) -> Transition:
        return self._human(self.engine.resolve(alert_id, by, self.clock()), also)

    def dispatch(self, alert_id: str, action: str, by: str, *, assignee: str = "", note: str = "",
                 evidence: Iterable[str] = (), reason: str = "", also: TxHook | None = None) -> Transition:
        """What the dispatch system (or a person) reports: assigned, on_site, rectified, rejected, closed
        (engine.dispatch; AlertNotFound, IllegalTransition). `also` writes in the same transaction as the
        transition: the inbound message's receipt, so a repeat finds it exactly when the action is stored."""
        transition = self.engine.dispatch(alert_id, action, by, self.clock(), assignee=assignee, note=note,
                                          evidence=evidence, reason=reason)
        return self._human(transition, also)

    def _human(self, transition: Transition, also: TxHook | None = None) -> Transition:
        out = Output()
        out.transitions.append(transition)
        self.incidents.group(out)
        self._commit_human(out, also)
        return transition

    def _commit_human(self, out: Output, also: TxHook | None = None) -> None:
        """Commit one person's action (its alert and incident transitions) as one transaction."""
        if also is not None:
            self.store.hooks.append(also)
        incidents = self.incidents.take_changes()
        try:
            self.store.commit(out, self.engine.take_dirty(), {}, incidents=incidents.incidents,
                              members=incidents.members)
        except (sqlite3.OperationalError, OSError) as exc:
            self.incidents.give_back(incidents)
            raise AlertError(f"cannot store the action ({exc}); try again") from None
        finally:
            if also is not None:
                self.store.hooks.remove(also)
        self._published(out)

    def dispatch_incident(self, incident_id: str, action: str, by: str, *, assignee: str = "", note: str = "",
                          evidence: Iterable[str] = (), reason: str = "",
                          also: TxHook | None = None) -> IncidentDispatch:
        """Dispatch on a whole incident: the action (assigned, on_site, rectified, rejected, closed)
        goes to every member alert that can take it (resolved or closed members, and those where it
        is illegal, are skipped: `skipped` says why), the incident's status follows, and all of it is
        committed as one action (with `also`, like `dispatch`). Raises IncidentNotFound (404),
        IncidentConflict (409: closed, or no member could take it), BadIncidentAction (400); each
        carries `http_status`. See citywatch/loop/incidents.py."""
        result, out = dispatch_incident(self.incidents, self.engine, incident_id, action, by, self.clock(),
                                        stored=self.store.incident, assignee=assignee, note=note,
                                        evidence=evidence, reason=reason)
        self._commit_human(out, also)
        return result

    def stats(self) -> dict[str, Any]:
        c = self.collector
        health = self.health()
        return {
            "counters": dict(self.pipeline.counters),
            "devices": len(self.devices),
            "open_alerts": len(self.engine.by_id),
            "storage_error": self.storage_error,
            "health": health,
            "mqtt": {"connected": health["mqtt_connected"], "received": c.received if c else 0,
                     "connects": c.connects if c else 0,
                     "handoff_blocked_s": round(c.handoff.blocked_s, 3) if c else 0.0,
                     "collector_restarts": health["collector_restarts"],
                     "collector_last_gap_s": getattr(c, "last_gap_s", None),
                     "collector_down_since": getattr(c, "down_since", None),
                     "stale_acks": getattr(c, "stale_acks", 0)},
            "webhooks": self._webhook_stats(),
            "influx": self.influx.stats() if self.influx else None,
            "storage": self.retention.stats(),
        }

    def _webhook_stats(self) -> dict[str, int] | None:
        try:
            return self.delivery.stats()
        except sqlite3.Error:
            return None  # the store is failing: health() says so

    def health(self) -> dict[str, Any]:
        """The facts /health (liveness) and /ready (readiness) report, with short problem codes.

        live: no fatal error, and the consume loop task runs and turned within stale_after_s.
        ready: live, MQTT connected and subscribed, storage writable, the hand-off not full."""
        problems: list[str] = []
        consume = self.tasks.get("consume")
        alive = consume is not None and not consume.done()
        if self.fatal is not None:
            problems.append("fatal")
        if not alive:
            problems.append("consume_loop_dead")
        elif time.monotonic() - self.last_loop_mono > self.stale_after_s:
            problems.append("consume_loop_stalled")
        live = not problems
        c = self.collector
        subscribed = getattr(c, "subscribed", None)
        connected = bool(c is not None and c.connected.is_set() and (subscribed is None or subscribed.is_set()))
        behind_s = self.sight.lag_s(self.clock())
        if behind_s > OFFLINE_CHECKS_BEHIND_S:
            problems.append("offline_checks_behind")
        if getattr(c, "down_since", None) is not None:
            problems.append("collector_down")
        if not connected:
            problems.append("mqtt_disconnected")
        storage_error = self.storage_error
        if storage_error is None and self.wal.failing_since is not None:
            # commits may still fit in the log's reused space, but the database file cannot take them
            storage_error = f"WAL checkpoint of {self.wal.path} failing: {self.wal.last_error}"
        if storage_error is None and self.value_writer.failing_since is not None:
            storage_error = f"devices' checkpointed values cannot be written: {self.value_writer.last_error}"
        if storage_error is not None:
            problems.append("storage_error")
        handoff = self.handoff
        full = handoff is not None and handoff.full()
        if full:
            problems.append("backlog_full")
        try:
            pending: int | None = self.delivery.pending_count()
        except sqlite3.Error:
            pending = None  # the store is failing: the problems above say so
        return {
            "live": live,
            "ready": not problems,
            "problems": problems,
            "consume_loop_alive": alive,
            "last_loop_at": self.last_loop_at,
            "last_batch_at": self.last_batch_at,
            "mqtt_connected": connected,
            "collector_restarts": getattr(c, "restarts", 0),
            "storage_error": storage_error,
            "fatal": self.fatal,
            "backlog": {"handoff": len(handoff) if handoff is not None else 0,
                        "handoff_bytes": handoff.nbytes if handoff is not None else 0,
                        "handoff_full": full, "unacked": self.unacked},
            "webhooks_pending": pending,
            # offline detection judges silence as of the last moment the backlog was empty (sight.py)
            "offline_checks_behind_s": round(behind_s, 1),
        }


async def start_embedded_broker(url: str) -> Any:
    """An in-process amqtt broker on the host/port of mqtt.url (no install needed; slower than Mosquitto)."""
    from amqtt.broker import Broker

    address = parse_url(url)
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{address.host}:{address.port}"}},
        "sys_interval": 0,
        "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
        "topic-check": {"enabled": False},
    }
    broker = Broker(config)
    await broker.start()
    return broker
