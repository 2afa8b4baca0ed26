"""The device registry over Kafka (`kafka.registry: topic`): workers on other hosts, no shared file.

The SQLite registry (registry.py) stays the source of truth, on the host where `citywatch devices`
runs. Each change is also published there, after the SQLite commit, to a compacted topic
(`kafka.registry_topic`): key = device id, value = the Device as JSON (a disabled device is a record
with enabled=false), a tombstone (no value) for a removed one. Compaction keeps the newest record per
device, so the topic is the whole registry and a worker can read it from the beginning.

`TopicRegistry` is the workers' copy, with RegistryCache's read interface (get, len, snapshot): read
from the beginning to the end offsets before the worker processes telemetry (a worker must not
dead-letter a registered device as unknown because it started early), then kept current by a
background consumer (`follow`). One partition: the registry in order, and every worker reads all of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from citywatch.config import KafkaSettings
from citywatch.errors import CitywatchError, ConfigError
from citywatch.model import Device
from citywatch.streams.bridge import bootstrap_servers, start_producer
from citywatch.streams.kafka_auth import client_options

log = logging.getLogger(__name__)

PARTITIONS = 1
PUBLISH_TIMEOUT_S = 30.0  # a person waits at the CLI: fail in seconds, not forever
TOPIC_CONFIG = {"cleanup.policy": "compact"}

encode_device = msgspec.json.Encoder().encode
_decode_device = msgspec.json.Decoder(Device).decode
Record = tuple[str, Device | None]  # device id, the device (None: removed)
_NO_THRESHOLDS: dict[str, float] = {}  # shared by every device without overrides; never mutated


class PublishError(CitywatchError):
    """The registry changed in SQLite but the topic did not get it: run `citywatch devices publish`."""


def decode_device(raw: bytes) -> Device:
    """A record's value; strings a million devices share (kind, places, zone) interned, as RegistryCache does."""
    d = _decode_device(raw)
    return msgspec.structs.replace(
        d, kind=sys.intern(d.kind), district=sys.intern(d.district), grid=sys.intern(d.grid),
        community=sys.intern(d.community), city=sys.intern(d.city),
        zone_class=None if d.zone_class is None else sys.intern(d.zone_class),
        thresholds=d.thresholds or _NO_THRESHOLDS)


async def ensure_registry_topic(kafka: KafkaSettings) -> list[int]:
    """Create the compacted registry topic if missing; returns its partitions."""
    topic = kafka.registry_topic
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(kafka), **client_options(kafka))
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            try:
                response = await admin.create_topics(
                    [NewTopic(topic, PARTITIONS, kafka.replication, topic_configs=TOPIC_CONFIG)])
            except TopicAlreadyExistsError:
                response = None  # another process was faster
            for name, code, *_ in getattr(response, "topic_errors", ()):
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise ConfigError(f"kafka: cannot create topic {name} (error {code})")
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = sorted(p["partition"] for t in described for p in t.get("partitions", []))
    return partitions or list(range(PARTITIONS))


async def publish_devices(kafka: KafkaSettings, records: Iterable[Record]) -> int:
    """Produce the records (acks=all) and wait for every acknowledgement; returns how many."""
    await ensure_registry_topic(kafka)
    producer = await start_producer(kafka, deadline_s=10.0)
    try:
        futures = [await producer.send(kafka.registry_topic, None if device is None else encode_device(device),
                                       key=device_id.encode()) for device_id, device in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(futures)


async def republish(kafka: KafkaSettings, devices: Sequence[Device]) -> tuple[int, int]:
    """The whole registry (`devices publish`: first start, after a restore): every device, and a tombstone
    for each id the topic has but the registry no longer does. Returns (devices, tombstones)."""
    topic = TopicRegistry(kafka)
    await topic.start()
    await topic.stop()
    registered = {d.id for d in devices}
    gone = sorted(set(topic.ids()) - registered)
    await publish_devices(kafka, [*((d.id, d) for d in devices), *((i, None) for i in gone)])
    return len(devices), len(gone)


def publish_timeout(records: int) -> float:
    """Seconds a CLI waits for Kafka: about 10k records/s is what tansu took here, so allow 1k/s on top."""
    return PUBLISH_TIMEOUT_S + records / 1000


def run_publish(kafka: KafkaSettings, work: Any, timeout_s: float = PUBLISH_TIMEOUT_S) -> Any:
    """Run a publishing coroutine from the CLI within `timeout_s`; any broker failure is a PublishError.
    aiokafka's own log lines are silenced meanwhile: the error says it."""
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return asyncio.run(asyncio.wait_for(work, timeout_s))
    except (KafkaError, OSError, TimeoutError, ConfigError) as exc:
        reason = f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError) else str(exc)
        raise PublishError(f"{reason or type(exc).__name__} (Kafka at {kafka.bootstrap}, "
                           f"topic {kafka.registry_topic})") from None
    finally:
        quiet.setLevel(level)


class TopicRegistry:
    """The registry as the topic has it, in memory: the workers' device lookup (see the module doc).
    `status`: a JSON file rewritten after each change (devices, offsets read), to see how current a worker is."""

    def __init__(self, kafka: KafkaSettings, status: Path | None = None) -> None:
        self.kafka = kafka
        self.status = status
        self._devices: dict[str, Device] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._positions: dict[int, int] = {}
        self.caught_up = False
        self.rejected = 0  # records that did not decode (kept the previous record of that device)

    # -- the read interface of RegistryCache -----------------------------------------------------

    def get(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def __len__(self) -> int:
        return len(self._devices)

    def snapshot(self) -> list[Device]:
        return list(self._devices.values())

    def ids(self) -> list[str]:
        return list(self._devices)

    # -- reading the topic -------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the topic from the beginning up to its end offsets (as they were when we asked)."""
        partitions = await ensure_registry_topic(self.kafka)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers(self.kafka), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    **client_options(self.kafka))
        await consumer.start()
        self._consumer = consumer
        try:
            tps = [TopicPartition(self.kafka.registry_topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            started, said = time.monotonic(), time.monotonic()
            # Reading a whole fetched batch: a broker reporting the last batch's base offset + 1 as the end
            # (tansu 0.6) still gives us that batch's every record once we read up to it.
            while behind := [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                self._apply(await consumer.getmany(*behind, timeout_ms=1000))
                if time.monotonic() - said > 10:
                    said = time.monotonic()
                    log.info("registry: %d devices read from %s so far", len(self._devices), self.kafka.registry_topic)
            for tp in tps:
                self._positions[tp.partition] = await consumer.position(tp)
        except BaseException:
            await self.stop()
            raise
        self.caught_up = True
        self._write_status()
        log.info("registry: %d devices from %s in %.1f s", len(self._devices), self.kafka.registry_topic,
                 time.monotonic() - started)

    async def follow(self) -> None:
        """Apply new records as they come, until cancelled (then the consumer stops)."""
        consumer = self._consumer
        assert consumer is not None, "start() first"
        try:
            while True:
                try:
                    records = await consumer.getmany(timeout_ms=1000)
                except KafkaError as exc:  # aiokafka reconnects by itself; say so and carry on
                    log.warning("registry: reading %s failed (%s); retrying", self.kafka.registry_topic, exc)
                    await asyncio.sleep(1.0)
                    continue
                if records:
                    self._apply(records)
                    self._write_status()
        finally:
            await self.stop()

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    def _apply(self, records: Mapping[TopicPartition, list[Any]]) -> None:
        for tp, messages in records.items():
            for m in messages:
                if m.key is None:
                    continue
                device_id = m.key.decode("utf-8", "replace")
                if m.value is None:
                    self._devices.pop(device_id, None)
                    continue
                try:
                    self._devices[device_id] = decode_device(m.value)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    self.rejected += 1
                    log.warning("registry: record of %s at offset %d does not decode (%s); kept the previous one",
                                device_id, m.offset, exc)
            if messages:
                self._positions[tp.partition] = messages[-1].offset + 1

    def _write_status(self) -> None:
        if self.status is None:
            return
        state = {"at": time.time(), "topic": self.kafka.registry_topic, "devices": len(self._devices),
                 "positions": {str(p): o for p, o in self._positions.items()}, "caught_up": self.caught_up,
                 "rejected": self.rejected}
        self.status.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.status)
