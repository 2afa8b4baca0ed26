"""The worker's bulk paths (citywatch/streams/kafka_bulk.py) without a broker: a batch of device records
lands in its partition's RocksDB database and in the changelog partition Faust's recovery reads for it,
the store's persisted offset follows the broker's acknowledgement (not the send), and a batch's
telemetry offsets are acknowledged in Faust's bookkeeping so its commit covers them, never below a
committed offset. The live paths run in tests/test_faust_integration.py (a worker killed mid-batch)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.record.memory_records import MemoryRecords
from faust.types import TP

from citywatch.streams.bridge import KafkaSettings, partition_for
from citywatch.streams.faust_app import FaustCity
from citywatch.streams.kafka_bulk import BulkConsumer, ChangelogWriter
from tests.helpers import T0
from tests.test_faust_agents import DEVICES, P, settings
from tests.test_faust_store import assign_all


class FakeBroker:
    """send_batch of an unstarted aiokafka producer's batches: keeps them, acknowledges on demand."""

    def __init__(self) -> None:
        self.real = AIOKafkaProducer()  # create_batch only: never started
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes | None]]]] = []
        self.acks: list[tuple[asyncio.Future[Any], int]] = []
        self.offsets: dict[int, int] = defaultdict(int)

    def create_batch(self) -> Any:
        return self.real.create_batch()

    async def send_batch(self, builder: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        batch = MemoryRecords(bytes(builder._build())).next_batch()
        records = [(r.key, r.value) for r in batch]
        self.sent.append((topic, partition, records))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks.append((future, self.offsets[partition]))
        self.offsets[partition] += len(records)
        return future

    def acknowledge(self) -> None:
        for future, offset in self.acks:
            future.set_result(SimpleNamespace(offset=offset))
        self.acks.clear()


def test_a_batch_of_records_goes_to_each_partitions_database_and_changelog(tmp_path: Path) -> None:
    kafka = KafkaSettings(partitions=P, table_store="rocksdict")
    city = FaustCity(settings(tmp_path), kafka, role="process", worker_id="w1", devices=DEVICES, clock=lambda: T0)
    try:
        assign_all(city)
        store = city.table.data
        keys = [f"dev-{i}".encode() for i in range(40)]
        assert len({partition_for(k, P) for k in keys}) == P
        writer = ChangelogWriter(city.table, P)
        topic = city.table.changelog_topic.get_topic_name()

        async def go() -> FakeBroker:
            broker = FakeBroker()
            city.app.producer._ensure_producer = lambda: broker  # type: ignore[method-assign]
            written = await writer.write([(k, b"record-" + k) for k in keys] + [(b"gone", None)])
            for partition, db in store._dbs.items():  # the store is written at once, each key in its partition
                mine = {k for k in keys if partition_for(k, P) == partition}
                assert {k for k in keys if db.get(k) is not None} == mine
            assert all(store.persisted_offset(TP(topic, p)) is None for p in range(P))  # nothing acknowledged yet
            broker.acknowledge()
            await written
            written = await writer.write([(keys[0], b"newer")])  # a second batch
            broker.acknowledge()
            await written
            return broker

        broker = asyncio.run(go())
        assert {topic} == {t for t, _, _ in broker.sent}
        for _, partition, records in broker.sent:
            assert all(partition_for(key, P) == partition for key, _ in records)
        sent = [(key, value) for _, _, records in broker.sent for key, value in records]
        assert sorted(sent[:len(keys) + 1], key=lambda kv: kv[0]) == sorted(
            [(k, b"record-" + k) for k in keys] + [(b"gone", None)], key=lambda kv: kv[0])
        assert sent[-1] == (keys[0], b"newer")
        for partition in range(P):  # the last offset acknowledged in each partition
            assert store.persisted_offset(TP(topic, partition)) == broker.offsets[partition] - 1
        assert store[keys[0]] == b"newer"
    finally:
        city.close()


def fake_consumer(committed: dict[TP, int | None]) -> Any:
    return SimpleNamespace(_committed_offset=defaultdict(lambda: None, committed), _acked_index=defaultdict(set),
                           _acked=defaultdict(list), _n_acked=0)


def test_a_batch_is_acknowledged_in_fausts_bookkeeping_from_the_committed_offset_on() -> None:
    tp = TP("telemetry", 1)
    consumer = fake_consumer({tp: 103})
    BulkConsumer.ack_records(consumer, tp, [100, 101, 102, 103, 104])
    BulkConsumer.ack_records(consumer, tp, [104, 105])  # redelivered: counted once
    assert consumer._acked[tp] == [103, 104, 105] and consumer._acked_index[tp] == {103, 104, 105}
    assert consumer._n_acked == 3
