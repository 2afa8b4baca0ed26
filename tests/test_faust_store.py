"""The `devices` Table on the worker's disk (kafka.table_store, citywatch/streams/faust_app.py DeviceStore):
each record in the RocksDB database of its device's partition, and a worker restarted with the same id
and data dir continues from its own state (no changelog runs under test_context: the state can only
come from the disk). `python -m benchmarks.faust_recovery` measures recovery times on a real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import rocksdb  # faust-streaming-rocksdb: table_store python-rocksdb
import rocksdict
from faust.types import TP

from citywatch.streams.bridge import KafkaSettings, partition_for
from citywatch.streams.faust_app import DeviceStore, FaustCity
from tests.helpers import T0
from tests.test_faust_agents import DEVICES, GAS, LOCK, P, Recorder, feed, settings, telemetry


def city_for(tmp_path: Path, store: str) -> tuple[FaustCity, Recorder]:
    kafka = KafkaSettings(partitions=P, batch_within_s=0.001, table_store=store)
    city = FaustCity(settings(tmp_path), kafka, role="process", worker_id="w1", devices=DEVICES, clock=lambda: T0)
    recorder = Recorder()
    city.publish = recorder
    return city, recorder


def assign_all(city: FaustCity) -> None:
    """What a rebalance does for the store: open the databases of the assigned partitions."""
    topic = city.table.changelog_topic_name
    asyncio.run(city.table.data.on_rebalance({TP(topic, p) for p in range(P)}, set(),
                                             {TP(topic, p) for p in range(P)}))


@pytest.mark.parametrize("store", ["rocksdict", "python-rocksdb"])
def test_records_live_in_their_partitions_database_and_a_restart_continues_from_them(
        tmp_path: Path, store: str) -> None:
    gas, lock = GAS.id.encode(), LOCK.id.encode()
    assert partition_for(gas, P) != partition_for(lock, P)
    first, rec = city_for(tmp_path, store)
    try:
        data = first.table.data
        assert isinstance(data, DeviceStore) and data.use_rocksdict == (store == "rocksdict")
        feed(first, [telemetry(GAS, T0, 1, lel_pct=30.0), telemetry(LOCK, T0, 1, event="forced_open")])
        opened = {t.alert.device_id: t.alert_id for t in rec.transitions if t.transition == "opened"}
        assert set(opened) == {GAS.id, LOCK.id}
        driver = rocksdict.Rdict if store == "rocksdict" else rocksdb.DB
        assert data._dbs and all(isinstance(db, driver) for db in data._dbs.values())
        for key in (gas, lock):  # one batch spanning two partitions: each record in its own partition's database
            for partition, db in data._dbs.items():
                assert (db.get(key) is not None) == (partition == partition_for(key, P)), (key, partition)
    finally:
        first.close()

    second, rec2 = city_for(tmp_path, store)  # same worker id and data dir: a restart
    try:
        assign_all(second)
        assert {k for k, _ in second.table.data.items()} == {gas, lock}
        feed(second, [telemetry(GAS, T0 + 60, 2, lel_pct=1.0)])
        assert [(t.transition, t.alert_id) for t in rec2.transitions] == [("resolved", opened[GAS.id])]
    finally:
        second.close()


def test_the_memory_store_starts_empty(tmp_path: Path) -> None:
    first, rec = city_for(tmp_path, "memory")
    try:
        assert not isinstance(first.table.data, DeviceStore)
        feed(first, [telemetry(GAS, T0, 1, lel_pct=30.0)])
        assert [t.transition for t in rec.transitions] == ["opened"]
    finally:
        first.close()
    second, rec2 = city_for(tmp_path, "memory")
    try:
        feed(second, [telemetry(GAS, T0 + 60, 2, lel_pct=1.0)])
        assert rec2.transitions == []  # without the changelog, nothing to resolve
    finally:
        second.close()


def test_a_rebuild_reads_the_databases_of_the_owned_partitions_only(tmp_path: Path) -> None:
    """Standby copies and partitions moved away stay on disk, unread: a rebuild reads its own."""
    gas, lock = GAS.id.encode(), LOCK.id.encode()
    first, _ = city_for(tmp_path, "rocksdict")
    try:
        assign_all(first)
        feed(first, [telemetry(GAS, T0, 1, lel_pct=30.0), telemetry(LOCK, T0, 1, event="forced_open")])
        assert first.core is not None

        def every_partition() -> Any:
            raise AssertionError("a rebuild read every open database")

        first.table.data._iteritems = every_partition
        first.core.assign({partition_for(gas, P)})
        assert set(first.core.pipeline.stored) == {GAS.id} and first.core.rebuild["devices"] == 1
        assert set(first.core.engine.by_key) == {(GAS.id, "gas_level")}
        first.core.assign({partition_for(lock, P)})
        assert set(first.core.pipeline.stored) == {LOCK.id}
    finally:
        first.close()
