"""The embedded runner: one asyncio process runs collector, pipeline, stores, sinks and the API.

Per batch: process every message, commit alerts + transitions + dead letters + detector state +
webhook outbox in one SQLite transaction, then acknowledge the MQTT messages. A crash before
the commit means the broker redelivers; after it, nothing is lost. Sinks run beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from citywatch.config import Settings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.devices.registry import Registry, RegistryCache, registry_path
from citywatch.errors import AlertError
from citywatch.ingest.collector import Collector, Message, parse_url
from citywatch.ingest.collector_process import ProcessCollector
from citywatch.ingest.handoff import Handoff
from citywatch.model import KeyState, Transition
from citywatch.sinks.influx import InfluxBackpressure, InfluxSink, lines_for
from citywatch.sinks.store import AlertStore, store_path
from citywatch.sinks.webhooks import Outbox, WebhookDelivery
from citywatch.streams.gcpolicy import FreezeAfterFullCollections
from citywatch.streams.pipeline import Output, Pipeline

log = logging.getLogger(__name__)

Listener = Callable[[Output], None]
STORAGE_RETRY_MAX_S = 5.0


class EmbeddedRunner:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.listeners: list[Listener] = []
        self.ready = asyncio.Event()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(registry_path(settings.data_dir))
        self.devices = RegistryCache(self.registry)
        self.outbox = Outbox(settings.webhooks)
        self.store = AlertStore(store_path(settings.data_dir), hooks=[self.outbox.enqueue])
        self.engine = AlertEngine(settings.alerts, self.store.open_alerts(), track_keys=True)
        for key, key_state in self.store.alert_keys().items():  # hold/clear streaks, flap history
            self.engine.restore_key(key, key_state)
        self.pipeline = Pipeline(settings, self.devices, self.engine, self.store.device_states(),
                                 started_at=clock())
        self.delivery = WebhookDelivery(store_path(settings.data_dir), settings.webhooks)
        self.influx = InfluxSink(settings.influx, settings.data_dir) if settings.influx.url else None
        self.collector: Collector | ProcessCollector | None = None
        self.broker: Any = None
        self.batches = 0
        self.api_port: int | None = None
        self.storage_error: str | None = None
        # device id -> when its state first changed without being written (ingest.state_checkpoint_s > 0)
        self.unsaved: dict[str, float] = {}

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        protocol = mqtt.MQTTv5
        if self.settings.mqtt.embedded:
            self.broker = await start_embedded_broker(self.settings.mqtt.url)
            protocol = mqtt.MQTTv311  # amqtt speaks MQTT 3.1.1
        handoff: Handoff[Message] = Handoff(self.settings.mqtt.queue_size, loop)
        collector_class = ProcessCollector if self.settings.mqtt.collector_process else Collector
        self.collector = collector_class(self.settings.mqtt, handoff, protocol)
        self.collector.start()
        delivery_task = asyncio.create_task(self.delivery.run(stop), name="webhooks")
        api_runner = await self._start_api()
        try:
            await self._consume(handoff, stop)
        finally:
            self.collector.stop()
            await self._drain(handoff, stop)
            if self.unsaved and self.storage_error is None:
                await self._store_until_written(Output(), stop, flush_states=True)
            with contextlib.suppress(asyncio.CancelledError):
                await delivery_task
            self.delivery.close()
            if api_runner is not None:
                await api_runner.cleanup()
            if self.influx is not None:
                await asyncio.to_thread(self.influx.close)
            self.store.close()
            self.registry.close()
            if self.broker is not None:
                await self.broker.shutdown()

    async def _start_api(self) -> Any:
        if not self.settings.api.enabled:
            return None
        from citywatch.api import start_api

        return await start_api(self, self.settings.api)

    async def _consume(self, handoff: Handoff[Message], stop: asyncio.Event) -> None:
        tick_s = self.settings.alerts.tick_s
        batch_size = self.settings.ingest.batch_size
        gc_policy = FreezeAfterFullCollections()
        last_tick = 0.0
        connect_timeout = 10.0
        assert self.collector is not None
        if not await asyncio.to_thread(self.collector.wait_connected, connect_timeout):
            log.warning("not connected to %s yet; retrying in the background", self.settings.mqtt.url)
        self.ready.set()
        while not stop.is_set():
            batch = await handoff.get_batch(batch_size, timeout=min(tick_s, 0.2))
            now = self.clock()
            self.devices.refresh()  # one cheap query; reloads only after another process committed
            tick = now - last_tick >= tick_s
            if tick:
                last_tick = now
            if batch or tick:
                await self._handle(batch, now, tick, stop)
            gc_policy.check()
            await asyncio.sleep(0)  # with a backlog every await above returns at once: let the API answer

    async def _handle(self, batch: list[Message], now: float, tick: bool, stop: asyncio.Event) -> None:
        """Process a batch, store what it produced, then acknowledge it to the broker."""
        out = Output()
        process = self.pipeline.process
        for m in batch:
            process(m.topic, m.payload, m.received_at, out)
        if tick:
            self.pipeline.tick(now, out)
        if not await self._store_until_written(out, stop):
            return  # stopping while storage fails: unacknowledged, so the broker redelivers
        self._published(out)
        if not await self._to_influx(out, stop):
            return
        if batch and self.collector is not None:
            self.collector.ack(batch)
        self.batches += 1

    async def _store_until_written(self, out: Output, stop: asyncio.Event, flush_states: bool = False) -> bool:
        """Commit, retrying with backoff while the data directory is full or unwritable. Meanwhile
        nothing is acknowledged and no new batch is taken: the broker holds the backlog."""
        alerts, keys = self.engine.take_dirty(), self._touched_keys()
        states = self._states_to_write(keys, self.clock(), flush_states)
        delay = 0.2
        while True:
            try:
                self.store.commit(out, alerts, states, keys)
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

    def _states_to_write(self, keys: dict[tuple[str, str], KeyState | None], now: float,
                         flush: bool) -> dict[str, dict[str, Any]]:
        """Device states to commit with this batch. With ingest.state_checkpoint_s = 0, every one that
        changed. Otherwise those of devices whose alert streaks or alerts changed (detector and engine
        state stay consistent across a crash), and the others once they have waited that long: each
        device is written at most once per checkpoint interval, oldest first, in a steady trickle of
        at most a quarter of a batch's size per batch (devices first seen together, as at start-up,
        are spread out rather than written in one burst)."""
        dirty = self.pipeline.take_dirty_states()
        every_s = self.settings.ingest.state_checkpoint_s
        if every_s <= 0:
            return dirty
        alerting = {device_id for device_id, _ in keys}
        now_states: dict[str, dict[str, Any]] = {}
        for device_id, state in dirty.items():
            if device_id in alerting:
                now_states[device_id] = state
                self.unsaved.pop(device_id, None)
            elif device_id not in self.unsaved:
                self.unsaved[device_id] = now
        due = list(self.unsaved) if flush else []
        if not flush:
            budget = max(64, self.settings.ingest.batch_size // 4)
            for device_id, since in self.unsaved.items():  # oldest first
                if now - since < every_s or len(due) >= budget:
                    break
                due.append(device_id)
        states = self.pipeline.states
        for device_id in due:
            del self.unsaved[device_id]
            if device_id in states:
                now_states[device_id] = states[device_id]
        return now_states

    def _touched_keys(self) -> dict[tuple[str, str], KeyState | None]:
        """Streaks and flap history that changed, without the alert itself (stored in `alerts`)."""
        keys: dict[tuple[str, str], KeyState | None] = {}
        for key in self.engine.take_touched():
            state = self.engine.export_key(key)
            if state is not None:
                state = KeyState(pending=state.pending, clearing=state.clearing, cycles=state.cycles)
            keys[key] = state if state is not None and (state.pending or state.clearing or state.cycles) else None
        return keys

    def _published(self, out: Output) -> None:
        if out.transitions:
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
                try:
                    await asyncio.to_thread(self.influx.add, lines, 1.0)
                    break
                except InfluxBackpressure:
                    if stop.is_set():
                        return False
        while not await asyncio.to_thread(self.influx.flush, 1.0):
            if stop.is_set():
                return False
        return True

    async def _drain(self, handoff: Handoff[Message], stop: asyncio.Event) -> None:
        """Process what is already in the hand-off before stopping (unacked: redelivered anyway)."""
        while len(handoff) and self.storage_error is None:
            await self._handle(await handoff.get_batch(self.settings.ingest.batch_size, 0.0), self.clock(), False,
                               stop)

    # -- people's actions (API, CLI) --------------------------------------------------------

    def acknowledge(self, alert_id: str, by: str) -> Transition:
        return self._human(self.engine.acknowledge(alert_id, by, self.clock()))

    def resolve(self, alert_id: str, by: str) -> Transition:
        return self._human(self.engine.resolve(alert_id, by, self.clock()))

    def _human(self, transition: Transition) -> Transition:
        out = Output()
        out.transitions.append(transition)
        try:
            self.store.commit(out, self.engine.take_dirty(), {})
        except (sqlite3.OperationalError, OSError) as exc:
            raise AlertError(f"cannot store the action ({exc}); try again") from None
        self._published(out)
        return transition

    def stats(self) -> dict[str, Any]:
        c = self.collector
        return {
            "counters": dict(self.pipeline.counters),
            "devices": len(self.devices),
            "open_alerts": len(self.engine.by_id),
            "storage_error": self.storage_error,
            "mqtt": {"connected": bool(c and c.connected.is_set()), "received": c.received if c else 0,
                     "connects": c.connects if c else 0,
                     "handoff_blocked_s": round(c.handoff.blocked_s, 3) if c else 0.0},
            "webhooks": self.delivery.stats(),
            "influx": self.influx.stats() if self.influx else None,
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
