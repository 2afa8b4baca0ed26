"""The Faust runner: the pipeline core as Faust agents over Kafka (`citywatch worker`).

Topics (created by `ensure_topics`, `kafka.partitions` each, keyed by device id):
- telemetry: what the bridge forwards (value = raw payload; headers `topic`, `received_at`), plus
  people's ack/resolve requests (header `citywatch-action`), so they reach the partition's owner.
- transitions: every alert transition as JSON (`model.Transition`).
- deadletters: messages the core rejected (`DeadLetter`, msgpack).

Roles: `process` workers run the `process` agent and the tick timer; scale them up to
`kafka.partitions`. One `sink` (its own consumer group `<app_id>-sink`) writes transitions and
dead letters to the SQLite alert store + webhook outbox, delivers webhooks, writes transition
points to InfluxDB and serves the ack/resolve API (faust_sink.py). `all` is both in one process.

State: one Table (`devices`, changelog-backed; `kafka.table_store`: RocksDB on the worker's disk, so a
restart replays only the changelog's tail, or memory) holds one value per device: its
record and its alert-engine state (open alert, hold/clear streaks, flap history), so a successor
never gets one without the other (streams/device_value.py: the bytes the embedded runner stores,
there without the alert). Records are written under the device's own partition
(`DeviceTable.partition_for_key` uses Kafka's default partitioner, as the bridge does), also from
the timer. A worker keeps a working set (a Pipeline and AlertEngine over dicts, exactly as the
embedded runner) for the partitions it owns, rebuilt from the Table after every rebalance.

Guarantees: at-least-once. Per event: transitions are produced and acknowledged (acks=all) before
the device's record is written, and the record before the offset is committed (Faust flushes its
producer before committing). A worker killed at any point leaves either nothing, the transitions
only (the successor replays the event and produces the same transitions: ids are deterministic,
alert id = blake2b(device|rule|opened_at), transition id = <alert id>.<n>), or transitions and
state (the replayed readings are dropped as `duplicate` by seq). The sink ignores transition ids
it has stored (and the outbox has UNIQUE(webhook_id, endpoint)), so webhooks go out once. Not
exactly-once: dead letters and InfluxDB points may repeat (InfluxDB overwrites identical points),
and readings without `seq` that are replayed are applied twice.

With `ingest.state_checkpoint_s` > 0 (as the embedded runner), a device whose alerts or streaks
changed is still written with its batch, a quiet device's record at most every N s; the offsets of a
batch whose records wait are not committed until they are written (kafka_bulk.Holds), so a crash
replays up to N s of telemetry into the records last written: as it ran the first time (same
transitions, same ids), nothing lost, learning included. A revocation or a stop writes them all first.

Offline detection judges device silence only as far as the bridges have forwarded what they received:
their watermark records in the telemetry partitions (streams/watermark.py), never the worker's wall
clock, so consumer lag, a Kafka outage or a dead bridge opens no offline storm. Until every owned
partition has had a watermark (at start, after a rebalance, with bridges of an earlier release), no
device is declared offline; the heartbeat (`offline_checks`), /health with role all, the log and
`citywatch_offline_checks_behind_seconds` say so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import faust
import msgspec
from aiohttp import web
from faust.stores.rocksdb import Store as RocksStore
from faust.types import TP
from prometheus_client.core import Metric

from citywatch.config import KafkaSettings, Settings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.detectors.registry import build_rules
from citywatch.devices.registry import Registry, RegistryCache, registry_path
from citywatch.devices.registry_topic import TopicRegistry
from citywatch.errors import AlertError, ConfigError
from citywatch.logs import faust_logging
from citywatch.metrics import (
    AlertSource,
    Exporter,
    InfluxSource,
    PipelineSource,
    Source,
    StoreSource,
    TransitionTally,
    batch_histogram,
    counter,
    gauge,
    serve_metrics,
)
from citywatch.model import DeadLetter, Output, Transition
from citywatch.ratelog import LogLimiter
from citywatch.sinks.influx import InfluxBackpressure, InfluxSink, lines_for
from citywatch.streams.bridge import (
    ACTION_HEADER,
    bootstrap_servers,
    ensure_topics,
    partition_for,
)
from citywatch.streams.checkpoint import Checkpoint
from citywatch.streams.device_value import DeviceValues
from citywatch.streams.faust_sink import TransitionSink
from citywatch.streams.kafka_auth import client_options, faust_credentials
from citywatch.streams.kafka_bulk import (
    BulkConsumer,
    ChangelogWriter,
    Hold,
    Holds,
    Records,
    Write,
    recover_in_bulk,
)
from citywatch.streams.pipeline import DeviceLookup, Pipeline
from citywatch.streams.sink_api import start_sink_api
from citywatch.streams.watermark import UNJUDGED, WATERMARK_HEADER, PartitionSight

log = logging.getLogger(__name__)

ROLES = ("all", "process", "sink")
SINK_BATCH = 500
OFFLINE_CHECKS_BEHIND_S = 60.0  # offline judgement this far behind: a problem in /ready (as the embedded runner's)
UNJUDGED_WARN_S = 30.0  # no offline judgement this long (no watermark on a partition): a warning, once a minute


encode_transition = msgspec.json.Encoder().encode
decode_transition = msgspec.json.Decoder(Transition).decode
encode_dead_letter = msgspec.msgpack.Encoder().encode
decode_dead_letter = msgspec.msgpack.Decoder(DeadLetter).decode


class DeviceTable(faust.Table):  # type: ignore[type-arg]
    """A Table keyed by device id (bytes) whose changelog partition is the device's telemetry
    partition, computed from the key, so it can be written outside an event (the tick timer)."""

    def partition_for_key(self, key: Any) -> int | None:
        return partition_for(key, self.partitions or self.app.conf.topic_partitions)

    def _new_store_by_url(self, url: Any) -> Any:
        if str(url).startswith("rocksdb:"):
            return DeviceStore(url, self.app, self, table_name=self.name, key_type=self.key_type,
                               key_serializer=self.key_serializer, value_serializer=self.value_serializer,
                               value_type=self.value_type, loop=self.loop,
                               options=dict(self.options or {}))  # a copy: faust's Store pops from it
        return super()._new_store_by_url(url)


class DeviceStore(RocksStore):
    """Faust's RocksDB store (one database per partition under the worker's data dir, with the last
    changelog offset applied, so a restart reads only the changelog's tail), addressed by the key's
    partition like DeviceTable's changelog. Faust's own store takes the partition of the current
    event: wrong in a batch that spans partitions and impossible in the tick timer (no event)."""

    def _partition(self, key: bytes) -> int:
        return partition_for(key, self.table.partitions or self.app.conf.topic_partitions)

    def _set(self, key: bytes, value: bytes | None) -> None:
        partition = self._partition(key)
        self._key_index[key] = partition
        self._db_for_partition(partition).put(key, value)

    def _get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db_for_partition(self._partition(key)).get(key)
        return value

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None

    def _del(self, key: bytes) -> None:
        self._db_for_partition(self._partition(key)).delete(key)

    def close(self) -> None:
        """Close the open databases (their locks go with them): a successor in this process can open them."""
        for db in self._dbs.values():
            db.close()
        self._dbs.clear()

    def items_of(self, partitions: Iterable[int]) -> Iterator[tuple[bytes, bytes]]:
        """The records of these partitions only (a rebuild reads its own, not the standby copies)."""
        for partition in sorted(partitions):
            db = self._dbs.get(partition)
            if db is not None:
                yield from self._visible_items(db)

    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        """Every open partition (actives and standbys: WorkerCore keeps what it owns), also under
        test_context, which assigns nothing."""
        for db in list(self._dbs.values()):
            yield from self._visible_items(db)



# -- the core over owned partitions ------------------------------------------------------------------

class WorkerCore:
    """Pipeline + AlertEngine for the partitions this worker owns, persisted in a DeviceTable."""

    def __init__(self, settings: Settings, devices: DeviceLookup, table: Any, partitions: int,
                 clock: Callable[[], float] = time.time, watermark_s: float = 1.0) -> None:
        self.settings = settings
        self.devices = devices
        self.table = table
        self.partitions = partitions
        self.clock = clock
        self.rules = build_rules(settings)
        self.owned: set[int] | None = None  # None: every partition (tests; a lone worker)
        self.stale = True
        self.rebuilds = 0
        self.rebuild: dict[str, float] = {}  # the last rebuild: when it ended, seconds, devices (heartbeat)
        self.counters: Counter[str] = Counter()
        self.tally = TransitionTally()  # transitions by kind, open offline alerts (metrics.py)
        self._pipeline: Pipeline | None = None
        self._values = DeviceValues(keep_alert=True)  # which rules of a device hold engine state
        # ingest.state_checkpoint_s: quiet devices' values written later (checkpoint.py), their
        # telemetry offsets held back until then (kafka_bulk.Holds)
        ingest = settings.ingest
        self.checkpoint = Checkpoint(ingest.state_checkpoint_s, max(64, settings.kafka.batch_size // 4))
        self.holds = Holds()
        # how far the bridges have forwarded, per owned partition: silence is judged only that far
        self.sight = PartitionSight(partitions, watermark_s, clock())

    def assign(self, owned: set[int] | None) -> None:
        """The partitions changed: rebuild from the Table before the next event or tick (records not
        written by then are not written: their offsets were not committed, the owner redoes them)."""
        self.owned = owned
        self.stale = True
        self.checkpoint.unsaved.clear()
        self.holds.clear()
        self.sight.assign(owned, self.clock())

    @property
    def pipeline(self) -> Pipeline:
        if self.stale or self._pipeline is None:
            self._rebuild()
        assert self._pipeline is not None
        return self._pipeline

    @property
    def engine(self) -> AlertEngine:
        return self.pipeline.alerts

    def owns(self, key: bytes) -> bool:
        return self.owned is None or partition_for(key, self.partitions) in self.owned

    def _rebuild(self) -> None:
        started = time.perf_counter()
        engine = AlertEngine(self.settings.alerts, track_keys=True)
        values = DeviceValues(keep_alert=True)
        store = getattr(self.table, "data", None)
        if isinstance(store, DeviceStore) and self.owned is not None:
            items: Iterable[tuple[bytes, bytes]] = store.items_of(self.owned)  # a database per partition
        else:
            items = [(key, raw) for key, raw in list(self.table.items()) if self.owns(key)]
        # not standby copies, nor partitions that moved away
        states = values.load(((key.decode(), raw) for key, raw in items), engine)  # device -> stored record
        old = self._pipeline
        self._pipeline = Pipeline(self.settings, self.devices, engine, states, started_at=self.clock(),
                                  rules=self.rules)
        if old is not None:
            self._pipeline.counters = old.counters
        self._values = values
        self.tally.reseed(engine.by_id.values())
        self.stale = False
        self.rebuilds += 1
        self.rebuild = {"at": time.time(), "seconds": time.perf_counter() - started, "devices": len(states)}
        log.info("worker: state of %d devices, %d open alerts for partitions %s", len(states),
                 len(engine.by_id), "all" if self.owned is None else sorted(self.owned))

    # -- what metrics read between events (never rebuilding) -------------------------------------

    def counts(self) -> Counter[str]:
        return self._pipeline.counters if self._pipeline is not None else Counter()

    def online(self) -> int:
        return len(self._pipeline.deadman) if self._pipeline is not None else 0

    def open_alerts(self) -> int:
        return len(self._pipeline.alerts.by_id) if self._pipeline is not None else 0

    # -- work ------------------------------------------------------------------------------------

    def process(self, topic: str, payload: bytes, received_at: float, out: Output) -> None:
        self.pipeline.process(topic, payload, received_at, out)

    def act(self, action: str, body: bytes, out: Output) -> None:
        """A person's ack or resolve, applied by the owner of the alert's device."""
        try:
            request = json.loads(body)
            alert_id, by, at = str(request["alert_id"]), str(request.get("by", "api")), float(request["at"])
        except (ValueError, KeyError, TypeError):
            self.counters["actions_malformed"] += 1
            return
        engine = self.engine
        try:
            if action == "ack":
                out.transitions.append(engine.acknowledge(alert_id, by, at))
            elif action == "resolve":
                out.transitions.append(engine.resolve(alert_id, by, at))
            else:
                self.counters["actions_malformed"] += 1
        except AlertError as exc:
            self.counters["actions_rejected"] += 1
            log.info("worker: %s %s rejected: %s", action, alert_id, exc)

    def watermark(self, value: bytes) -> None:
        """A bridge's watermark read from an owned partition: not telemetry (no reading, no dead letter)."""
        self.sight.observe(value)

    def tick(self, now: float, out: Output) -> None:
        """Deadlines at `now`; silence only as of the lowest watermark over the owned partitions (none
        declared while a partition has none), offline timers restarted where sight was lost upstream."""
        pipeline = self.pipeline
        sight = self.sight
        as_of = sight.as_of()
        deadman = pipeline.deadman
        deadman.grace_from = max(deadman.grace_from, sight.grace_from)
        pipeline.tick(now, out, silence_as_of=UNJUDGED if as_of is None else as_of)

    def offline_checks(self, now: float) -> dict[str, Any]:
        """How far offline judgement is behind (health, heartbeat): None as_of while not judging."""
        sight = self.sight
        return {"behind_s": round(sight.behind_s(now), 1), "as_of": sight.as_of(), "unjudged": sight.unjudged(),
                "watermarks_seen": sight.ever}

    def commit(self) -> int:
        """Write the record of every device whose state changed into the Table; returns how many."""
        writes = self.take_writes()
        for key, value in writes:
            if value is not None:
                self.table[key] = value
            elif key in self.table:
                del self.table[key]
        return len(writes)

    def take_writes(self, firsts: Mapping[TP, int] | None = None, flush: bool = False) -> list[Write]:
        """The values to write now (None: delete it): of every device whose state changed, those the
        checkpoint says are due (all of them without one, or on `flush`). `firsts`: the batch's first
        telemetry offset per partition; without them (a tick, no offsets) every change is written now,
        with them a quiet device's may wait, the batch's offsets held back until then (`holds`)."""
        pipeline = self.pipeline
        engine = pipeline.alerts
        engine.take_dirty()  # the sink stores alerts from the transitions themselves
        dirty = pipeline.take_dirty()
        urgent = self._values.touched(engine)
        checkpoint = self.checkpoint
        if checkpoint.every_s <= 0:
            due = list(dirty | urgent)
        else:
            if not firsts:
                urgent |= dirty
            due = checkpoint.due(dirty | urgent, urgent, self.clock(), flush)
            self.holds.written(due)
            if firsts:
                unsaved = checkpoint.unsaved
                self.holds.note([device_id for device_id in dirty if device_id in unsaved], firsts)
        return [(device_id.encode(), self._values.encode(device_id, pipeline)) for device_id in due]


# -- the Faust app -----------------------------------------------------------------------------------

def _headers(raw: Any) -> dict[str, bytes]:
    if not raw:
        return {}
    items = raw.items() if isinstance(raw, Mapping) else raw
    return {str(k): bytes(v) if v is not None else b"" for k, v in items}


Publisher = Callable[[Output], Awaitable[None]]
TelemetryEvent = tuple[bytes | None, bytes | None, dict[str, bytes], float | None]  # key, value, headers, ts


class FaustCity:
    """Builds the Faust app for a role: topics, the `devices` Table, agents, timer and hooks."""

    def __init__(self, settings: Settings, kafka: KafkaSettings, role: str = "all",
                 worker_id: str | None = None, devices: DeviceLookup | None = None,
                 clock: Callable[[], float] = time.time, loglevel: str | None = None, bulk: bool = False) -> None:
        """`bulk`: telemetry a fetch at a time and the changelog a batch at a time (kafka_bulk.py), as
        `run_worker` runs it; without it, Faust's per-event stream and per-key Table writes, which
        `test_context()` drives without a broker (the core's work is the same)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        self.settings, self.kafka, self.role, self.clock = settings, kafka, role, clock
        self.worker_id = worker_id or socket.gethostname()
        self.workdir = settings.data_dir / "workers" / self.worker_id
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.heartbeat = settings.data_dir / "heartbeats" / f"worker-{self.worker_id}.json"
        self.lock = asyncio.Lock()
        self.assigned = False  # a rebalance told us our partitions (never, under test_context)
        self.assigned_at: float | None = None  # when the last one did (heartbeat: recovery time)
        self.registry: Registry | None = None
        self.registry_feed: TopicRegistry | None = None  # kafka.registry: topic (run_worker starts it)
        if devices is None and role != "sink" and kafka.registry == "topic":
            status = settings.data_dir / "heartbeats" / f"registry-{self.worker_id}.json"
            devices = self.registry_feed = TopicRegistry(kafka, status)
        elif devices is None and role != "sink":
            self.registry = Registry(registry_path(settings.data_dir))
            devices = RegistryCache(self.registry)
        self.devices = devices
        self.influx = InfluxSink(settings.influx, self.workdir) if settings.influx.url else None
        self.publish: Publisher = self._publish_kafka  # tests swap in a recorder
        self.bulk = bulk
        # queues a batch's records (store + changelog); returns what completes once the changelog acknowledged them
        self.write_records: Callable[[list[Write]], Awaitable[Awaitable[None]]] = self._write_table
        self.loglevel = loglevel
        self.on_sink_batch: Callable[[float], None] | None = None  # seconds per stored batch (metrics.py)
        self.unjudged_log = LogLimiter(60.0)
        self.app = self._make_app()
        app, k = self.app, kafka
        self.telemetry, self.transitions, self.deadletters = (
            app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                      partitions=k.partitions)
            for name in (k.telemetry_topic, k.transitions_topic, k.deadletters_topic))
        self.core: WorkerCore | None = None
        self.sink: TransitionSink | None = None
        if role in ("all", "process"):
            self._process_role()
        if role in ("all", "sink"):
            self._sink_role()
        self._metrics_role()

    def _make_app(self) -> faust.App:
        k = self.kafka
        app_id = k.app_id + ("-sink" if self.role == "sink" else "")
        return faust.App(
            app_id, broker=[f"kafka://{s}" for s in bootstrap_servers(k)],
            store="memory://" if k.table_store == "memory" else "rocksdb://",  # DeviceStore: see DeviceTable
            topic_partitions=k.partitions, topic_replication_factor=k.replication,
            datadir=str(self.workdir / "faust"), web_enabled=False, autodiscover=False,
            broker_session_timeout=k.session_timeout_s, broker_heartbeat_interval=k.heartbeat_s,
            broker_rebalance_timeout=max(k.session_timeout_s, 10.0),
            broker_commit_interval=k.commit_interval_s, table_standby_replicas=k.standby_replicas,
            producer_acks=-1, producer_linger_ms=k.linger_ms, consumer_auto_offset_reset="earliest",
            # record batches of up to 512 KiB (Faust's default, 16 KiB, holds ~15 device records): the
            # changelog goes out a batch per partition (kafka_bulk.py); under Kafka's 1 MB message.max.bytes
            producer_max_batch_size=512 * 1024,
            consumer_max_fetch_size=k.fetch_partition_bytes,  # fewer waits for the next fetch
            broker_credentials=faust_credentials(k),  # kafka.security_protocol: SASL, TLS (kafka_auth.py)
            recovery_consistency_check=k.exact_high_watermark,  # see read_changelog_tail
            **faust_logging(self.settings, self.loglevel),  # our handler (format, masking), not mode's colour logger
        )

    # -- process role ------------------------------------------------------------------------------

    def _process_role(self) -> None:
        app = self.app
        if self.kafka.table_store == "rocksdict":
            try:
                import rocksdict  # noqa: F401  (Faust's rocksdb store picks it up by this name)
            except ImportError:
                raise ConfigError("kafka.table_store: rocksdict needs `pip install rocksdict` "
                                  "(or table_store: memory)") from None
        table = app.tables.add(DeviceTable(
            app, name="devices", beacon=app.tables.beacon, partitions=self.kafka.partitions,
            key_type=bytes, value_type=bytes, help="per device: detector state and alert-engine state",
            options=None if self.kafka.table_store == "memory" else {"driver": self.kafka.table_store}))
        self.table = table
        assert self.devices is not None
        self.core = WorkerCore(self.settings, self.devices, table, self.kafka.partitions, self.clock,
                               self.kafka.watermark_s)
        if self.bulk:
            self.write_records = ChangelogWriter(table, self.kafka.partitions).write
            city = self

            class Consumer(BulkConsumer):
                bulk_topic = self.kafka.telemetry_topic
                bulk_size = self.kafka.batch_size

                async def on_bulk(self, records: Records) -> tuple[Awaitable[None], Hold]:
                    return await city.handle_records(records)

                async def flush(self) -> None:
                    await city.flush_records()
                    self.release({})

                def recover(self, tp: TP, records: Sequence[Any]) -> bool:
                    return recover_in_bulk(self.app, table, tp, records)

            # before the app creates its consumer (at start); an instance attribute over the class's
            app.transport.Consumer = Consumer  # type: ignore[misc]

        async def process(stream: Any) -> Any:
            # Batches, not events: the core runs over the batch, each touched device's record is written
            # once, the batch's transitions are published, then Faust acks (commits) the batch's offsets.
            async for events in stream.take_events(self.kafka.batch_size, within=self.kafka.batch_within_s):
                yield await self.handle_batch([(e.key, e.value, _headers(e.headers), e.message.timestamp)
                                               for e in events])

        self.process_agent = app.agent(self.telemetry, name="process")(process)

        async def tick() -> None:
            await self.tick()

        app.timer(self.settings.alerts.tick_s, name="tick")(tick)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_rebalance_complete.connect(self._on_recovered)

    async def _on_recovered(self, sender: Any, /, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        await self.read_changelog_tail()

    async def read_changelog_tail(self) -> int:
        """After Faust's recovery, before the streams resume: read each owned changelog partition on from
        where recovery stopped until a fetch comes back empty, into the Table's store. Faust stops at
        the high watermark the broker reported when recovery began; tansu (the tests' broker) reports
        the last record batch's base offset + 1, one batch short, and the worker would then run without
        its newest records (their events committed: never redone). On a correct broker this costs two
        empty fetches (about a second) per rebalance. Returns the records it applied."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from faust.types import TP

        topic = self.table.changelog_topic.get_topic_name()
        tps = [tp for tp in self.app.assignor.assigned_actives() if tp.topic == topic]
        if not tps:
            return 0
        applied = cast(Any, self.app.tables).recovery.active_offsets
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers(self.kafka), enable_auto_commit=False,
                                    auto_offset_reset="latest", **client_options(self.kafka))
        await consumer.start()
        found = 0
        store = cast(Any, self.table).data
        try:
            positions = {TopicPartition(tp.topic, tp.partition): max(applied.get(tp, -1), -1) + 1 for tp in tps}
            consumer.assign(list(positions))
            for tp, offset in positions.items():
                consumer.seek(tp, offset)
            empty = 0
            while empty < 2:  # two empty fetches in a row: a slow fetch on a busy host is not the end
                records = await consumer.getmany(timeout_ms=500)
                empty = 0 if records else empty + 1
                for tp, messages in records.items():
                    for m in messages:
                        if m.value is None:
                            store.pop(m.key, None)
                        else:
                            store[m.key] = m.value
                    found += len(messages)
                    store.set_persisted_offset(TP(tp.topic, tp.partition), messages[-1].offset)
        finally:
            await consumer.stop()
        if found:
            log.warning("worker: %d changelog records beyond the broker's high watermark read after recovery", found)
            assert self.core is not None
            self.core.stale = True
        return found

    def _owned_now(self) -> set[int]:
        topic = self.kafka.telemetry_topic
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    async def _on_revoked(self, sender: Any, /, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        assert self.core is not None
        async with self.lock:  # a batch under way finishes (records written, then acknowledged) first
            self.assigned = True
            self.core.assign(set())

    async def _on_assigned(self, sender: Any, /, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        assert self.core is not None
        async with self.lock:
            self.assigned = True
            self.assigned_at = time.time()
            self.core.assign(self._owned_now())

    async def handle(self, key: bytes | None, value: bytes | None, headers: dict[str, bytes],
                     timestamp: float | None = None) -> Output:
        """One telemetry-topic event through the core (a batch of one); returns what it produced."""
        return await self.handle_batch([(key, value, headers, timestamp)])

    async def handle_records(self, records: Records) -> tuple[Awaitable[None], Hold]:
        """A batch of telemetry records from BulkConsumer (aiokafka ConsumerRecords); returns what completes
        when the batch's records are in the changelog (the consumer then acknowledges the batch's offsets)
        and the offsets to hold back (records the checkpoint left for later)."""
        _, written = await self.run_batch([
            (r.key, r.value, dict(r.headers), r.timestamp / 1000.0 if r.timestamp and r.timestamp > 0 else None)
            for batch in records.values() for r in batch], {tp: batch[0].offset for tp, batch in records.items()})
        assert self.core is not None
        return written, self.core.holds.lowest()

    async def flush_records(self) -> None:
        """Write every record the checkpoint holds back, acknowledged (before a revocation's commit)."""
        assert self.core is not None
        if not self.core.checkpoint.unsaved:
            return
        async with self.lock:
            await (await self.write_records(self.core.take_writes(flush=True)))

    async def _write_table(self, writes: list[Write]) -> Awaitable[None]:
        """Through Faust's Table: a store write and a buffered changelog produce per key (Faust's commit
        flushes them before it commits the offsets)."""
        assert self.core is not None
        table = self.core.table
        for key, value in writes:
            if value is not None:
                table[key] = value
            elif key in table:
                del table[key]
        return _done()

    async def handle_batch(self, events: list[TelemetryEvent]) -> Output:
        """Telemetry-topic events, in order, through the core: one Output, one publish, one Table write
        per touched device, acknowledged by the changelog. Returns what they produced."""
        out, written = await self.run_batch(events)
        await written
        return out

    async def run_batch(self, events: list[TelemetryEvent],
                        firsts: Mapping[TP, int] | None = None) -> tuple[Output, Awaitable[None]]:
        """handle_batch without waiting for the changelog's acknowledgement: returns what completes then.
        The batch's transitions are acknowledged before its records are written (a record never gets
        ahead of a transition it implies). `firsts`: the batch's first offset per partition (records
        the checkpoint leaves for later hold them back)."""
        core = self.core
        assert core is not None
        out = Output()
        async with self.lock:
            process = core.pipeline.process  # once per batch (a rebuild waits for the lock)
            for key, value, headers, timestamp in events:
                payload = value or b""
                if WATERMARK_HEADER in headers:
                    core.watermark(payload)
                    continue
                action = headers.get(ACTION_HEADER)
                if action is not None:
                    core.act(action.decode("utf-8", "replace"), payload, out)
                    continue
                topic = headers.get("topic") or key or b""
                try:
                    received_at = float(headers["received_at"])
                except (KeyError, ValueError):
                    received_at = timestamp or self.clock()
                process(topic.decode("utf-8", "replace"), payload, received_at, out)
            if out.transitions:
                core.tally.observe(out)
            await self.publish(out)
            written = await self.write_records(core.take_writes(firsts))
        await self._to_influx(out, readings=True)
        return out, written

    async def tick(self, now: float | None = None) -> Output:
        """Deadlines and silent devices of the owned partitions (not while partitions move)."""
        assert self.core is not None
        out = Output()
        if self.assigned and self.app.rebalancing:
            return out
        if self.registry is not None and isinstance(self.devices, RegistryCache):
            self.devices.refresh()
        async with self.lock:
            self.core.tick(self.clock() if now is None else now, out)
            self._warn_unjudged()
            if out.transitions:
                self.core.tally.observe(out)
            await self.publish(out)
            await (await self.write_records(self.core.take_writes()))
            if self.bulk and self.core.checkpoint.every_s > 0:  # records due written: their offsets may go
                cast(BulkConsumer, self.app.consumer).release(self.core.holds.lowest())
        await self._to_influx(out, readings=True)
        self._beat()
        return out

    async def _publish_kafka(self, out: Output) -> None:
        """Transitions first, each acknowledged by Kafka (the Table write comes after);
        dead letters ride with the event's offset commit."""
        if out.transitions:
            futures = [await self.transitions.send(key=t.alert.device_id.encode(), value=encode_transition(t),
                                                   force=True) for t in out.transitions]
            await asyncio.gather(*futures)
        for d in out.dead_letters:
            await self.deadletters.send(key=d.topic.encode(), value=encode_dead_letter(d))

    async def _to_influx(self, out: Output, readings: bool) -> None:
        if self.influx is None:
            return
        part = Output()
        if readings:
            part.accepted, part.statuses = out.accepted, out.statuses
        else:
            part.transitions = out.transitions
        lines = lines_for(part)
        if not lines:
            return
        try:
            self.influx.add(lines, timeout=0)
        except InfluxBackpressure:
            await asyncio.to_thread(self.influx.add, lines)

    async def request_action(self, device_id: str, action: str, body: bytes) -> None:
        """Put a person's ack/resolve into the device's telemetry partition; wait for Kafka's ack."""
        fut = await self.telemetry.send(key=device_id.encode(), value=body,
                                        headers=[(ACTION_HEADER, action.encode())], force=True)
        await fut

    def _consuming(self) -> bool:
        """Partitions assigned and no rebalance under way: what `ready` means for a consumer (a running
        timer, hence a heartbeat, is not: the group's join can take tens of seconds)."""
        try:
            return bool(self.app.consumer.assignment()) and not self.app.rebalancing
        except Exception:  # the consumer is not started yet
            return False

    def _warn_unjudged(self) -> None:
        """Loudly, once a minute: no offline judgement for long (a partition without a watermark)."""
        assert self.core is not None
        sight = self.core.sight
        now = self.clock()
        if sight.as_of() is not None or not sight.owned or now - sight.unjudged_since < UNJUDGED_WARN_S:
            return
        if not self.unjudged_log.allow("unjudged")[0]:
            return
        if not sight.ever:
            log.warning("worker: no bridge watermark read in %.0f s: no device is declared offline. Bridges of "
                        "an earlier release send none; upgrade them (kafka.watermark_s)", now - sight.unjudged_since)
        else:
            log.warning("worker: partitions %s have had no bridge watermark for %.0f s: no device is declared "
                        "offline until they do (bridges down, or Kafka behind)", sight.unjudged(),
                        now - sight.unjudged_since)

    def health(self) -> dict[str, Any]:
        """The process role's part of /health and the heartbeat: how far behind offline judgement is."""
        if self.core is None:
            return {"problems": []}
        checks = self.core.offline_checks(self.clock())
        problems = []
        if checks["behind_s"] > OFFLINE_CHECKS_BEHIND_S:
            problems.append("offline_checks_behind")
        if not checks["watermarks_seen"] and self.clock() - self.core.sight.started_at >= UNJUDGED_WARN_S:
            problems.append("no_watermarks")  # bridges of an earlier release (or none running)
        return {"problems": problems, "offline_checks_behind_s": checks["behind_s"], "offline_checks": checks}

    def _beat(self) -> None:
        core = self.core
        state = {"at": time.time(), "worker_id": self.worker_id, "role": self.role, **self.health(),
                 "owned": None if core is None or core.owned is None else sorted(core.owned),
                 "rebuilds": core.rebuilds if core else 0, "assigned_at": self.assigned_at,
                 "rebuild": core.rebuild if core else {},
                 "counters": dict(core.pipeline.counters) if core and core._pipeline else {}}
        write_heartbeat(self.heartbeat, state)

    # -- sink role ---------------------------------------------------------------------------------

    def _sink_role(self) -> None:
        app = self.app
        self.sink = sink = TransitionSink(self.settings)

        async def deliver(stream: Any) -> Any:
            async for values in stream.take(SINK_BATCH, within=0.2):
                started = time.perf_counter()
                out = sink.write([decode_transition(v) for v in values])
                await self._to_influx(out, readings=False)
                if self.on_sink_batch is not None:
                    self.on_sink_batch(time.perf_counter() - started)
                yield len(out.transitions)

        async def deadletters(stream: Any) -> Any:
            async for values in stream.take(SINK_BATCH, within=0.5):
                sink.write([], [decode_dead_letter(v) for v in values])
                yield len(values)

        self.deliver_agent = app.agent(self.transitions, name="deliver")(deliver)
        self.deadletters_agent = app.agent(self.deadletters, name="deadletters")(deadletters)

        async def webhooks() -> None:
            await sink.delivery.run(asyncio.Event())  # cancelled at shutdown: pending rows stay pending

        app.task(webhooks)

        async def silences() -> None:  # silences whose end passed release their held webhooks
            sink.silences.tick(time.time())

        app.timer(self.settings.alerts.tick_s, name="silences")(silences)

        async def api() -> None:
            if not self.settings.api.enabled:
                return
            runner = await self.start_sink_api()
            try:
                await asyncio.Event().wait()  # until the worker stops (cancelled)
            finally:
                await runner.cleanup()

        app.task(api)

        if self.role == "sink":
            async def beat() -> None:
                state = {"at": time.time(), "worker_id": self.worker_id, "role": "sink", **sink.counters,
                         "webhooks": sink.delivery.stats(), "consuming": self._consuming()}
                write_heartbeat(self.heartbeat, state)

            app.timer(1.0, name="beat")(beat)

    async def start_sink_api(self) -> web.AppRunner:
        """The sink's HTTP API (citywatch/streams/sink_api.py), with this worker's metrics."""
        assert self.sink is not None
        return await start_sink_api(self.sink, self.settings, self.role, self.clock, self.request_action,
                                    worker_exporter(self), self.health if self.core is not None else None)

    # -- lifecycle ---------------------------------------------------------------------------------

    def _metrics_role(self) -> None:
        """GET /metrics on metrics.port for a worker that serves no API (the sink's API serves it otherwise)."""
        if self.role != "process" and self.settings.api.enabled:
            return

        async def metrics() -> None:
            served = await serve_metrics(worker_exporter(self), self.settings)
            if served is None:
                return
            try:
                await asyncio.Event().wait()  # until the worker stops (cancelled)
            finally:
                await served[0].cleanup()

        self.app.task(metrics)

    def close(self) -> None:
        store = getattr(self.table, "data", None) if self.core is not None else None
        if isinstance(store, DeviceStore):
            store.close()
        if self.influx is not None:
            self.influx.close()
        if self.sink is not None:
            self.sink.close()
        if self.registry is not None:
            self.registry.close()


async def _done() -> None:
    """Nothing left to wait for."""


def write_heartbeat(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


# -- its metrics ---------------------------------------------------------------------------------------

class SinkSource(Source):
    """The sink: transitions and dead letters stored, redeliveries dropped."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterable[Metric]:
        counts = self.counts()
        yield counter("citywatch_sink_transitions", "Alert transitions stored by the sink (each once).",
                      counts.get("transitions", 0))
        yield counter("citywatch_sink_dead_letters", "Dead letters stored by the sink.", counts.get("dead_letters", 0))
        yield counter("citywatch_sink_duplicates", "Transitions Kafka delivered again, dropped by the sink.",
                      counts.get("duplicates", 0))


class OfflineChecksSource(Source):
    """How far behind the clock the worker judges device silence (the bridges' watermarks)."""

    def __init__(self, core: WorkerCore, clock: Callable[[], float]) -> None:
        self.core, self.clock = core, clock

    def collect(self) -> Iterable[Metric]:
        sight = self.core.sight
        yield gauge("citywatch_offline_checks_behind_seconds",
                    "How far behind the clock offline detection judges (bridge watermarks; grows while a "
                    "partition has none).", sight.behind_s(self.clock()))
        yield gauge("citywatch_offline_unjudged_partitions",
                    "Owned partitions without a bridge watermark yet: no device is declared offline meanwhile.",
                    len(sight.unjudged()))


def worker_exporter(city: FaustCity) -> Exporter:
    """A Faust worker's metrics by its role: the pipeline over its partitions (process), the store,
    outbox and webhooks (sink), InfluxDB (both)."""
    exporter = Exporter()
    core = city.core
    if core is not None:
        exporter.add(PipelineSource(core.counts), AlertSource(core.tally, core.online, core.open_alerts),
                     OfflineChecksSource(core, city.clock))
    if city.sink is not None:
        sink = city.sink
        exporter.add(SinkSource(lambda: sink.counters), StoreSource(city.settings.data_dir))
        city.on_sink_batch = batch_histogram(
            exporter.registry, "citywatch_batch_duration_seconds",
            "Per batch of transitions: stored with the outbox (SQLite) and handed to InfluxDB.").observe
    exporter.add(InfluxSource(city.influx))
    return exporter


def run_worker(settings: Settings, kafka: KafkaSettings, role: str = "all", worker_id: str | None = None,
               loglevel: str = "info") -> None:
    """Create the topics if needed, then run a Faust worker until SIGINT/SIGTERM."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(kafka))
    city = FaustCity(settings, kafka, role, worker_id, loglevel=loglevel, bulk=True)
    try:
        if city.registry_feed is not None:  # the whole registry before any telemetry, then follow it
            loop.run_until_complete(city.registry_feed.start())
            city.app.task(city.registry_feed.follow)
        worker = faust.Worker(city.app, loop=loop, loglevel=loglevel, quiet=True)
        # No progress spinner: at loglevel warning or above Faust's would set the root logger to DEBUG for
        # itself, and every library's debug call would build a record (profiled: 3% of a busy worker).
        worker.spinner = None
        worker.execute_from_commandline()
    finally:
        city.close()
