"""The value writer (sinks/value_writer.py): quiet devices' checkpointed values written by a thread,
never an older value after a newer one, failures kept and reported, memory bounded. Real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from citywatch.sinks.value_writer import ValueWriter
from tests.conftest import wait_until


def make_db(path: Path, table: bool = True) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    if table:
        conn.execute("CREATE TABLE device_state (device_id TEXT PRIMARY KEY, body BLOB NOT NULL)")
    conn.close()


def stored(path: Path) -> dict[str, bytes]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT device_id, body FROM device_state").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    make_db(path)
    return path


def test_offered_values_are_written_by_the_thread(db: Path) -> None:
    writer = ValueWriter(db, chunk=7)
    writer.start()
    try:
        values = {f"gas-{i:03d}": bytes([i]) * 10 for i in range(100)}
        assert writer.offer(values) == {}
        wait_until(lambda: stored(db) == values, 10)
        assert writer.written == 100 and writer.failing_since is None
    finally:
        assert writer.stop(1.0) == 0


def test_without_the_thread_every_value_is_handed_back(db: Path) -> None:
    writer = ValueWriter(db)
    assert writer.offer({"gas-1": b"v"}) == {"gas-1": b"v"}  # not started: the batch writes it


def test_a_batch_value_is_never_overwritten_by_an_older_waiting_one(db: Path) -> None:
    writer = ValueWriter(db)
    writer.start()
    try:
        writer.chunk = 0  # the thread takes nothing meanwhile: both values wait
        writer.offer({"gas-1": b"old", "gas-2": b"quiet"})
        conn = sqlite3.connect(db, isolation_level=None)
        with writer.ordered(["gas-1"]):  # the batch's commit of gas-1's newer value
            conn.execute("INSERT OR REPLACE INTO device_state VALUES ('gas-1', x'6e6577')")  # b"new"
        conn.close()
        assert writer.pending == {"gas-2": b"quiet"}
        writer.chunk = 500
        wait_until(lambda: "gas-2" in stored(db), 10)
        assert writer.stop(1.0) == 0
        assert stored(db) == {"gas-1": b"new", "gas-2": b"quiet"}
    finally:
        writer.stop(0.0)


def test_a_newer_offer_replaces_the_waiting_value(db: Path) -> None:
    writer = ValueWriter(db)
    writer.start()
    try:
        with writer.ordered([]):
            writer.offer({"gas-1": b"v1"})
            writer.offer({"gas-1": b"v2"})
            assert writer.pending == {"gas-1": b"v2"}
        wait_until(lambda: stored(db) == {"gas-1": b"v2"}, 10)
    finally:
        writer.stop(0.0)


def test_waiting_values_are_bounded_and_the_rest_handed_back(db: Path) -> None:
    writer = ValueWriter(db, max_pending=3)
    writer.start()
    try:
        with writer.ordered([]):
            left = writer.offer({f"gas-{i}": b"v" for i in range(5)})
            assert len(writer.pending) == 3 and set(left) == {"gas-3", "gas-4"}
            assert writer.offer({"gas-0": b"w"}) == {}  # a device already waiting is replaced, not refused
    finally:
        writer.stop(1.0)


def test_a_failing_write_keeps_its_values_says_so_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    make_db(path, table=False)  # every write fails: no such table
    writer = ValueWriter(path)
    writer.start()
    try:
        writer.offer({"gas-1": b"v"})
        wait_until(lambda: writer.failing_since is not None, 10)
        assert "device_state" in writer.last_error and writer.pending == {"gas-1": b"v"}
        make_db(path)  # the store is writable again
        wait_until(lambda: stored(path) == {"gas-1": b"v"}, 20)
        assert writer.failing_since is None and writer.pending == {}
    finally:
        writer.stop(0.0)


def test_a_stop_hands_back_what_could_not_be_written(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    make_db(path, table=False)
    writer = ValueWriter(path)
    writer.start()
    writer.offer({"gas-1": b"v", "gas-2": b"w"})
    wait_until(lambda: writer.failing_since is not None, 10)
    assert writer.stop(5.0) == 2  # failing: it does not wait out the drain time
    assert not writer.running
    assert writer.take_pending() == {"gas-1": b"v", "gas-2": b"w"} and writer.pending == {}


def test_a_dead_thread_is_told_apart_and_its_values_taken_back(db: Path) -> None:
    """A thread that died (not stopped): `died`, and the consume loop takes what it held."""
    writer = ValueWriter(db)
    writer.start()
    writer.chunk = 0  # nothing is written meanwhile

    def explode(conn: sqlite3.Connection, chunk: list[tuple[str, bytes]]) -> None:
        raise RuntimeError("a bug")

    writer._write = explode  # type: ignore[method-assign]
    writer.offer({"gas-1": b"v"})
    writer.chunk = 500
    wait_until(lambda: writer.died, 10)
    assert not writer.running and writer.offer({"gas-2": b"w"}) == {"gas-2": b"w"}
    assert writer.take_pending() == {"gas-1": b"v"}
