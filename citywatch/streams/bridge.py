"""MQTT -> Kafka: the front door of the Faust runner (`citywatch bridge`).

An MQTT 5 shared subscription (`$share/<bridge_group>/<prefix>/#`, QoS 1, persistent session,
manual acks), so several bridges split the load. Each message goes to the telemetry topic as it
came: key = the device id from the topic (the raw topic when it does not parse, so the worker
still dead-letters it), value = the payload bytes, headers `topic` and `received_at`. A message
is acknowledged to the MQTT broker only after Kafka acknowledged the produce (acks=all, and
idempotence when the broker supports it): a crash in between means MQTT redelivers, and the
worker drops the copy as a `duplicate` when the device sends `seq`. At-least-once.

Every `kafka.watermark_s` while it can see (connected and subscribed), the bridge also produces a
watermark to every telemetry partition, after the telemetry it vouches for was acknowledged: how far
(its receive clock) it has forwarded everything it received, so workers judge device silence only
that far (streams/watermark.py).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2
from prometheus_client.core import Metric

from citywatch.config import KafkaSettings, Settings
from citywatch.errors import ConfigError, InvalidMessage
from citywatch.ingest.collector import Collector, Message, message_size, with_packet_limit
from citywatch.ingest.collector_process import ProcessCollector
from citywatch.ingest.handoff import Handoff
from citywatch.ingest.topics import parse_topic
from citywatch.metrics import Exporter, Source, batch_histogram, counter, gauge, serve_metrics
from citywatch.streams.kafka_auth import client_options
from citywatch.streams.sight import Sight
from citywatch.streams.watermark import WATERMARK_HEADER, Watermark, encode_watermark

log = logging.getLogger(__name__)

ACTION_HEADER = "citywatch-action"  # a person's ack/resolve travelling to the partition's owner
RETRY_MIN_S, RETRY_MAX_S = 0.5, 10.0
RESTART_AFTER = 3  # failed produce attempts of one batch before the bridge replaces its producer
BATCH_BYTES = 256 * 1024  # producer record batches (aiokafka's default, 16 KiB, holds ~80 telemetry records)
WAIT_S = 0.2  # the longest wait for messages in one turn of the loop
STALLED_WAIT_SLACK_S = 0.5  # a wait this much longer than asked was frozen or starved (as embedded.py's)


def bootstrap_servers(kafka: KafkaSettings) -> list[str]:
    return [s.strip() for s in kafka.bootstrap.split(",") if s.strip()]


@functools.lru_cache(maxsize=1 << 20)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as Java and aiokafka) picks for `key`.
    Cached: aiokafka's murmur2 is pure Python (about 10 us a key), and a worker or bridge sees the
    same device keys again and again."""
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


def message_key(topic: str, prefix: str) -> bytes:
    try:
        return parse_topic(topic, prefix).device_id.encode()
    except InvalidMessage:
        return topic.encode("utf-8", "replace")


# -- Kafka plumbing ----------------------------------------------------------------------------------

async def ensure_topics(kafka: KafkaSettings) -> None:
    """Create the three topics with `kafka.partitions` partitions; refuse to run on a telemetry topic
    with another count (the Tables' changelogs must be partitioned like it)."""
    wanted = [kafka.telemetry_topic, kafka.transitions_topic, kafka.deadletters_topic]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(kafka), **client_options(kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, kafka.partitions, kafka.replication) for t in wanted if t not in existing]
        if missing:
            try:
                response = await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                response = None  # another worker or bridge was faster
            for name, code, *_ in getattr(response, "topic_errors", ()):
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise ConfigError(f"kafka: cannot create topic {name} (error {code})")
        described = await admin.describe_topics([kafka.telemetry_topic])
    finally:
        await admin.close()
    for topic in described:
        count = len(topic.get("partitions", []))
        if count and count != kafka.partitions:
            raise ConfigError(f"kafka.partitions: {kafka.telemetry_topic} has {count} partitions, "
                              f"config says {kafka.partitions}; they must match")


async def start_producer(kafka: KafkaSettings, deadline_s: float | None = None, **extra: Any) -> AIOKafkaProducer:
    """acks=all, idempotent if the broker supports it. A broker that refuses idempotence (a non-retriable
    error on InitProducerId: tansu's memory storage answers UnknownError every time) gets a producer
    without it. A broker that is unreachable or answers with a retriable error (restarting, no leader
    yet, a timeout) is retried with backoff, logged each time, until it answers or `deadline_s` passes
    (None: until then), so a transient error at start costs seconds, not the process."""
    options: dict[str, Any] = {"bootstrap_servers": bootstrap_servers(kafka), "acks": "all",
                               "linger_ms": kafka.linger_ms, **client_options(kafka), **extra}
    idempotent = kafka.idempotence
    delay = RETRY_MIN_S
    give_up = None if deadline_s is None else time.monotonic() + deadline_s
    while True:
        producer = AIOKafkaProducer(enable_idempotence=idempotent, **options)
        try:
            await producer.start()
            return producer
        except KafkaError as exc:
            await producer.stop()
            if idempotent and not exc.retriable:
                log.warning("kafka: idempotent producer refused (%s); acks=all without idempotence",
                            type(exc).__name__)
                idempotent = False
                continue
            if not exc.retriable or (give_up is not None and time.monotonic() + delay > give_up):
                raise
            log.warning("kafka: producer could not start (%s: %s); retrying in %.1f s",
                        type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


async def send_action(kafka: KafkaSettings, device_id: str, alert_id: str, action: str, by: str,
                      at: float | None = None) -> None:
    """Ask the worker that owns `device_id` to acknowledge or resolve one of its alerts: the request
    goes into the device's telemetry partition, so it is applied in order with its readings."""
    if action not in ("ack", "resolve"):
        raise ValueError(action)
    body = json.dumps({"alert_id": alert_id, "by": by, "at": time.time() if at is None else at}).encode()
    producer = await start_producer(kafka, deadline_s=15.0)  # a person waits: fail in seconds, not forever
    try:
        await producer.send_and_wait(kafka.telemetry_topic, body, key=device_id.encode(),
                                     headers=[(ACTION_HEADER, action.encode())])
    finally:
        await producer.stop()


# -- the bridge --------------------------------------------------------------------------------------

class Bridge:
    """Shared-subscription MQTT consumer that produces to Kafka and acks MQTT after Kafka acked."""

    def __init__(self, settings: Settings, kafka: KafkaSettings, client_id: str | None = None,
                 heartbeat: Path | None = None) -> None:
        self.settings = settings
        self.kafka = kafka
        self.client_id = client_id or f"{settings.mqtt.client_id}-bridge-{socket.gethostname()}"
        # The collector subscribes to `<topic_prefix>/#`: give it the shared-subscription filter.
        shared = f"$share/{kafka.bridge_group}/{settings.mqtt.topic_prefix}"
        # Maximum Packet Size announced: oversized publishes stay at the broker.
        mqtt_settings = with_packet_limit(settings.mqtt, settings.ingest.max_payload_bytes)
        self.mqtt_settings = mqtt_settings.model_copy(update={"topic_prefix": shared, "client_id": self.client_id})
        self.prefix = settings.mqtt.topic_prefix
        self.heartbeat = heartbeat
        self.counters: Counter[str] = Counter()
        self.collector: Collector | ProcessCollector | None = None
        self.ready = asyncio.Event()
        self.handoff: Handoff[Message] | None = None
        self.on_batch: Callable[[float], None] | None = None  # seconds per forwarded batch (metrics.py)
        # how far this bridge has forwarded all it received (its watermarks; streams/watermark.py)
        self.started_at = time.time()
        self.sight = Sight(self.started_at)
        self.sight_since = 0.0  # when sight last returned
        self.watermarked_until: float | None = None  # seen_until of the last watermark Kafka acknowledged

    async def run(self, stop: asyncio.Event) -> None:

        loop = asyncio.get_running_loop()
        await ensure_topics(self.kafka)
        producer = await start_producer(self.kafka, max_batch_size=BATCH_BYTES)
        metrics = await serve_metrics(bridge_exporter(self), self.settings)  # GET /metrics on metrics.port
        handoff: Handoff[Message] = Handoff(self.mqtt_settings.queue_size, loop, self.mqtt_settings.queue_bytes,
                                            message_size)
        self.handoff = handoff
        # paho decodes every packet in Python (profiled: about two thirds of the bridge's CPU): in a child
        # process (mqtt.collector_process, as the embedded runner) it runs on another core
        collector_class = ProcessCollector if self.mqtt_settings.collector_process else Collector
        self.collector = collector_class(self.mqtt_settings, handoff, mqtt.MQTTv5)
        self.collector.start()
        try:
            if not await asyncio.to_thread(self.collector.wait_connected, 10.0):
                log.warning("bridge: not connected to %s yet; retrying in the background", self.settings.mqtt.url)
            self.ready.set()
            batch_size = self.settings.ingest.batch_size
            last_beat = last_mark = 0.0
            while not stop.is_set():
                waited_from, waited_mono = time.time(), time.monotonic()
                batch = await handoff.get_batch(batch_size, timeout=WAIT_S)
                now, backlog = time.time(), len(handoff)
                stalled = time.monotonic() - waited_mono > WAIT_S + STALLED_WAIT_SLACK_S
                if batch:
                    producer = await self._forward(producer, batch, stop)
                    if stop.is_set():
                        break  # the batch may not have gone through: vouch for nothing more
                # after the batch is acknowledged: what the sight now vouches for is in Kafka
                regained = self.sight.observe(now, self._can_see(), backlog, batch[-1].received_at if batch else None,
                                              None if batch or stalled else waited_from)
                if regained is not None:
                    self.sight_since = regained
                if time.monotonic() - last_mark >= self.kafka.watermark_s:
                    last_mark = time.monotonic()
                    await self._watermark(producer)
                if self.heartbeat is not None and time.monotonic() - last_beat >= 1.0:
                    last_beat = time.monotonic()
                    self._beat()
        finally:
            self.collector.stop()  # what was not forwarded is not acked: MQTT redelivers it
            await producer.stop()
            if metrics is not None:
                await metrics[0].cleanup()

    async def _forward(self, producer: AIOKafkaProducer, batch: list[Message],
                       stop: asyncio.Event) -> AIOKafkaProducer:
        """Produce the batch, wait for every ack, then ack MQTT; on Kafka errors retry the batch
        (duplicates possible, loss not) with backoff until it goes through or we stop. After
        RESTART_AFTER failures in a row the producer is replaced: one whose sender died (a fatal
        error inside aiokafka) would fail every retry. Returns the producer to use next."""
        delay = RETRY_MIN_S
        failures = 0
        started = time.perf_counter()
        while True:
            try:
                await asyncio.gather(*await self._produce(producer, batch))
                break
            except KafkaError as exc:
                self.counters["produce_errors"] += 1
                failures += 1
                log.warning("bridge: produce failed (%s); retrying %d messages in %.1f s",
                            type(exc).__name__, len(batch), delay)
                if stop.is_set():
                    return producer
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                if failures % RESTART_AFTER == 0:
                    log.warning("bridge: %d failed attempts in a row; starting a new Kafka producer", failures)
                    await producer.stop()
                    producer = await start_producer(self.kafka, max_batch_size=BATCH_BYTES)
        assert self.collector is not None
        self.collector.ack(batch)
        self.counters["forwarded"] += len(batch)
        if self.on_batch is not None:
            self.on_batch(time.perf_counter() - started)
        return producer

    async def _produce(self, producer: AIOKafkaProducer, batch: list[Message]) -> list[asyncio.Future[Any]]:
        """The batch as one record batch per partition (the partition Kafka's default partitioner picks
        for the key, cached): one append per message instead of a send with its own future."""
        topic = self.kafka.telemetry_topic
        partitions = len(await producer.partitions_for(topic))
        prefix = self.prefix
        builders: dict[int, Any] = {}
        futures: list[asyncio.Future[Any]] = []
        for m in batch:
            key = message_key(m.topic, prefix)
            partition = partition_for(key, partitions)
            builder = builders.get(partition)
            if builder is None:
                builder = builders[partition] = producer.create_batch()
            headers = [("topic", m.topic.encode()), ("received_at", repr(m.received_at).encode())]
            if builder.append(key=key, value=m.payload, timestamp=None, headers=headers) is None:
                futures.append(await producer.send_batch(builder, topic, partition=partition))  # full
                builder = builders[partition] = producer.create_batch()
                if builder.append(key=key, value=m.payload, timestamp=None, headers=headers) is None:
                    raise ValueError(f"a message of {len(m.payload)} B exceeds the producer's batch size")
        for partition, builder in builders.items():
            futures.append(await producer.send_batch(builder, topic, partition=partition))
        return futures

    def _can_see(self) -> bool:
        """Connected and subscribed, the collector's process up: messages can reach us."""
        c = self.collector
        return bool(c is not None and c.connected.is_set() and subscribed(c) and getattr(c, "down_since", None) is None)

    async def _watermark(self, producer: AIOKafkaProducer) -> None:
        """One watermark record to every telemetry partition, acknowledged before the next batch goes out,
        so each comes after the telemetry it vouches for. None while blind: nothing new to vouch for (the
        workers stop judging, and restart offline timers when sight returns). A failure is not retried:
        the next period sends a newer one."""
        sight = self.sight
        if sight.blind_since is not None:
            return
        seen_until = sight.caught_up_at
        topic = self.kafka.telemetry_topic
        headers = [(WATERMARK_HEADER, b"1")]
        try:
            partitions = sorted(await producer.partitions_for(topic))
            futures = [await producer.send(topic, encode_watermark(Watermark(self.client_id, p, seen_until,
                                                                             self.sight_since)),
                                           partition=p, headers=headers) for p in partitions]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            self.counters["watermark_errors"] += 1
            log.warning("bridge: watermark not produced (%s); the next one follows in %.1f s",
                        type(exc).__name__, self.kafka.watermark_s)
            return
        self.counters["watermarks"] += 1
        self.watermarked_until = seen_until

    def _beat(self) -> None:
        assert self.heartbeat is not None
        c = self.collector
        state = {"at": time.time(), "client_id": self.client_id, "connected": bool(c and c.connected.is_set()),
                 "subscribed": subscribed(c), "watermarked_until": self.watermarked_until,
                 "blind_s": round(self.sight.blind_s, 1), **self.counters}
        self.heartbeat.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.heartbeat.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.heartbeat)


def subscribed(collector: Collector | ProcessCollector | None) -> bool:
    """A ProcessCollector reports connected only once its child is connected and subscribed."""
    if isinstance(collector, Collector):
        return collector.subscribed.is_set()
    return collector is not None and collector.connected.is_set()


# -- its metrics (GET /metrics on metrics.port) ------------------------------------------------------

class BridgeSource(Source):
    """MQTT -> Kafka: messages received and forwarded, produce errors, the connection, the hand-off."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def collect(self) -> Iterable[Metric]:
        b = self.bridge
        c = b.collector
        yield counter("citywatch_bridge_forwarded", "Messages produced to Kafka and acknowledged to MQTT.",
                      b.counters["forwarded"])
        yield counter("citywatch_bridge_produce_errors", "Failed produce attempts (the batch is retried).",
                      b.counters["produce_errors"])
        yield counter("citywatch_mqtt_received", "Messages the collector received from the broker.",
                      c.received if c else 0)
        yield gauge("citywatch_mqtt_connected", "1 while connected and subscribed to the broker.",
                    int(bool(c and c.connected.is_set() and subscribed(c))))
        yield gauge("citywatch_handoff_messages", "Messages waiting to be produced.",
                    len(b.handoff) if b.handoff is not None else 0)
        yield counter("citywatch_bridge_watermarks", "Watermark rounds produced to every telemetry partition.",
                      b.counters["watermarks"])
        yield gauge("citywatch_bridge_watermark_behind_seconds",
                    "How far behind the clock the last watermark vouches (workers judge silence only that far).",
                    max(0.0, time.time() - (b.started_at if b.watermarked_until is None else b.watermarked_until)))


def bridge_exporter(bridge: Bridge) -> Exporter:
    exporter = Exporter().add(BridgeSource(bridge))
    histogram = batch_histogram(exporter.registry, "citywatch_batch_duration_seconds",
                                "Per batch: produced to Kafka, acknowledged by it, acknowledged to MQTT.")
    bridge.on_batch = histogram.observe
    return exporter
