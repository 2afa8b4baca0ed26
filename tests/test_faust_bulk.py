"""The worker's bulk paths (citywatch/streams/kafka_bulk.py) without a broker: a batch of device records
lands in its partition's RocksDB database and in the changelog partition Faust's recovery reads for it,
the store's persisted offset follows the broker's acknowledgement (not the send), and a batch's
telemetry offsets are acknowledged in Faust's bookkeeping so its commit covers them, never below a
committed offset. The live paths run in tests/test_faust_integration.py (a worker killed mid-batch)."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.record.memory_records import MemoryRecords
from faust.types import TP

from citywatch.detectors.record import stored_header
from citywatch.streams.bridge import KafkaSettings, message_key, partition_for
from citywatch.streams.device_value import decode_value
from citywatch.streams.faust_app import FaustCity
from citywatch.streams.kafka_bulk import BulkConsumer, ChangelogWriter, Holds, offsets_of, recover_in_bulk
from tests.helpers import T0
from tests.test_faust_agents import DEVICES, GAS, LOCK, NOISE, P, Recorder, settings, telemetry
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


def test_holds_keep_each_partition_at_the_oldest_batch_with_a_record_not_written() -> None:
    a, b = TP("telemetry", 0), TP("telemetry", 1)
    holds = Holds()
    holds.note(["x", "y"], {a: 100, b: 200})
    holds.note(["x", "z"], {a: 150})  # x waits since the first batch: only z holds this one
    assert holds.lowest() == {a: 100, b: 200}
    holds.written(["x"])
    assert holds.lowest() == {a: 100, b: 200}  # y still waits
    holds.written(["y"])
    assert holds.lowest() == {a: 150}
    holds.written(["z", "never-held"])
    assert holds.lowest() == {}
    holds.note([], {a: 300})  # nothing left unwritten: no hold
    assert holds.lowest() == {}


def test_held_offsets_are_acknowledged_once_the_hold_rises_past_them() -> None:
    a, b = TP("telemetry", 0), TP("telemetry", 1)
    acked: list[tuple[TP, list[int]]] = []
    held: dict[TP, deque[Sequence[int]]] = {a: deque([range(100, 102), [102, 104]]), b: deque([range(200, 202)])}
    consumer = SimpleNamespace(_held_offsets=lambda: held, ack_records=lambda tp, offsets: acked.append((tp, offsets)))
    BulkConsumer.release(consumer, {a: 103, b: 200})
    assert acked == [(a, [100, 101, 102])] and held == {a: deque([[104]]), b: deque([range(200, 202)])}
    BulkConsumer.release(consumer, {b: 201})  # a: no hold left
    assert acked[1:] == [(a, [104]), (b, [200])] and held == {b: deque([range(201, 202)])}
    records = [SimpleNamespace(offset=o) for o in (5, 6, 7)]
    assert offsets_of(records) == range(5, 8) and offsets_of(records[::2]) == [5, 7]


def test_checkpoint_writes_alerting_devices_with_their_batch_and_quiet_ones_later_holding_their_offsets(
        tmp_path: Path) -> None:
    """ingest.state_checkpoint_s in a worker: the same rule as the embedded runner (checkpoint.py) for
    which records are written; the offsets of a batch whose records wait are held back until they are
    written, so a crash replays them into the records written (tests/test_faust_integration.py kills a
    worker with the checkpoint on)."""
    now = [T0]
    s = settings(tmp_path, ingest={"state_checkpoint_s": 30})
    city = FaustCity(s, KafkaSettings(partitions=P), role="process", worker_id="w1", devices=DEVICES,
                     clock=lambda: now[0])
    written: list[list[bytes]] = []

    async def write(writes: list[tuple[bytes, bytes | None]]) -> Any:
        written.append(sorted(key for key, _ in writes))
        return await city._write_table(writes)

    city.write_records = write
    city.publish = Recorder()
    t0, t1, t2 = (TP("telemetry", p) for p in range(3))

    def events(*messages: tuple[str, bytes, float]) -> list[Any]:
        return [(message_key(topic, "citywatch"), payload,
                 {"topic": topic.encode(), "received_at": repr(at).encode()}, None) for topic, payload, at in messages]

    gas, noise, lock = GAS.id.encode(), NOISE.id.encode(), LOCK.id.encode()
    try:
        assert city.core is not None
        core = city.core

        async def go() -> None:
            # gas opens an alert: written with its batch; noise is quiet: waits, and holds the batch
            out, done = await city.run_batch(events(telemetry(NOISE, T0, 1, laeq_db=50.0),
                                                    telemetry(GAS, T0, 1, lel_pct=30.0)), {t0: 100, t1: 200})
            await done
            assert [t.alert.device_id for t in out.transitions] == [GAS.id]
            assert written[-1] == [gas] and noise not in city.table
            assert core.holds.lowest() == {t0: 100, t1: 200}
            now[0] = T0 + 10  # noise again: still waiting since the first batch
            await (await city.run_batch(events(telemetry(NOISE, T0 + 10, 2, laeq_db=51.0)), {t0: 110}))[1]
            assert written[-1] == [] and core.holds.lowest() == {t0: 100, t1: 200}
            now[0] = T0 + 31  # noise's record is due (both readings in it); lock's waits
            await (await city.run_batch(events(telemetry(LOCK, T0 + 31, 1, event="unlock_ok", user="u1")),
                                        {t2: 300}))[1]
            assert written[-1] == [noise]
            assert stored_header(decode_value(city.table[noise]).state)["seq"] == 2
            assert core.holds.lowest() == {t2: 300}
            await city.tick()  # nothing due, nothing alerting: nothing written, lock still held
            assert lock not in city.table and core.holds.lowest() == {t2: 300}
            await city.flush_records()  # a revocation's or a stop's commit: everything, then no hold
            assert written[-1] == [lock] and core.holds.lowest() == {} and not core.checkpoint.unsaved
            # without offsets (a batch through Faust's per-event path) every change is written at once
            await city.handle_batch(events(telemetry(NOISE, T0 + 40, 3, laeq_db=50.0)))
            assert written[-1] == [noise] and core.holds.lowest() == {}

        asyncio.run(go())
    finally:
        city.close()


def test_changelog_records_under_recovery_go_into_the_store_a_fetch_at_a_time(tmp_path: Path) -> None:
    """recover_in_bulk does what Faust's recovery does per event: records past the applied offset into
    the partition's database, the store's persisted offset and recovery's offset to the last, and the
    end of recovery signalled once no active partition has records left; other partitions are Faust's."""
    kafka = KafkaSettings(partitions=P, table_store="rocksdict")
    city = FaustCity(settings(tmp_path), kafka, role="process", worker_id="w1", devices=DEVICES, clock=lambda: T0)
    try:
        assign_all(city)
        topic = city.table.changelog_topic.get_topic_name()
        active, standby, other = TP(topic, 0), TP(topic, 1), TP(topic, 2)
        highwater = 3
        ended: list[bool] = []
        recovery = SimpleNamespace(
            tp_to_table={active: city.table, standby: city.table}, active_tps={active}, standby_tps={standby},
            active_offsets={active: 0}, standby_offsets={}, in_recovery=True,
            need_recovery=lambda: recovery.active_offsets[active] < highwater,
            flush_buffers=lambda: None, _set_recovery_ended=lambda: ended.append(True),
            signal_recovery_end=asyncio.Event())
        app = SimpleNamespace(tables=SimpleNamespace(recovery=recovery))
        keys = [k for k in (f"dev-{i}".encode() for i in range(200)) if partition_for(k, P) == 0][:4]

        def records(*items: tuple[int, bytes, bytes | None]) -> list[Any]:
            return [SimpleNamespace(offset=o, key=k, value=v) for o, k, v in items]

        store = city.table.data
        # offset 0 was applied already (as recovery counts): not again
        assert recover_in_bulk(app, city.table, active, records((0, keys[0], b"old"), (1, keys[0], b"v1"),
                                                                (2, keys[1], b"v2")))
        assert store[keys[0]] == b"v1" and store[keys[1]] == b"v2"
        assert recovery.active_offsets[active] == 2 and store.persisted_offset(active) == 2 and not ended
        assert recover_in_bulk(app, city.table, active, records((3, keys[1], None), (4, keys[2], b"v4")))
        assert keys[1] not in store and store[keys[2]] == b"v4"
        assert ended == [True] and recovery.signal_recovery_end.is_set()
        standby_key = next(k for k in (f"dev-{i}".encode() for i in range(200)) if partition_for(k, P) == 1)
        assert recover_in_bulk(app, city.table, standby, records((7, standby_key, b"s")))
        assert recovery.standby_offsets[standby] == 7 and store[standby_key] == b"s"
        assert not recover_in_bulk(app, city.table, other, records((0, b"x", b"y")))
    finally:
        city.close()
