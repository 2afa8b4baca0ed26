"""WAL checkpoints run in their own thread (sinks/walcheckpoint.py), not inside the consume loop's
commits; if that thread cannot do its job, the writer takes checkpointing back (the log never grows
without bound). Real SQLite files."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from citywatch.sinks import walcheckpoint
from citywatch.sinks.walcheckpoint import WalCheckpointer
from tests.conftest import wait_until


def writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB)")
    return conn


def write_pages(conn: sqlite3.Connection, pages: int) -> None:
    """About `pages` 4 KiB pages of new rows, 100 rows a commit (as the runner commits batches)."""
    body = os.urandom(3000)
    start = conn.execute("SELECT COALESCE(MAX(k), 0) FROM t").fetchone()[0]
    for i in range(start, start + pages, 100):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(k, body) for k in range(i + 1, i + 101)])
        conn.execute("COMMIT")


def test_the_thread_checkpoints_and_the_writer_does_not(tmp_path: Path) -> None:
    # control: with checkpointing taken off the writer and no thread, the database file never grows
    control = writer(tmp_path / "control.db")
    control.execute("PRAGMA wal_autocheckpoint=0")
    before = os.path.getsize(tmp_path / "control.db")
    write_pages(control, 3000)
    assert os.path.getsize(tmp_path / "control.db") == before  # every page still only in the log
    control.close()

    conn = writer(tmp_path / "state.db")
    before = os.path.getsize(tmp_path / "state.db")
    wal = WalCheckpointer(tmp_path / "state.db", interval_s=0.05)
    wal.start(conn)
    try:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == walcheckpoint.WRITER_AUTOCHECKPOINT
        write_pages(conn, 3000)
        # the thread copied the pages back into the database file (the writer would not before
        # WRITER_AUTOCHECKPOINT pages), and counted it: the file grows during the checkpoint, the
        # count after it returns, so both are waited for
        wait_until(lambda: os.path.getsize(tmp_path / "state.db") > before + 3000 * 3000 and wal.checkpoints >= 1, 20)
        assert wal.failing_since is None
        wal.check(conn)
        assert not wal.handed_back
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == walcheckpoint.WRITER_AUTOCHECKPOINT
    finally:
        wal.stop()
        conn.close()


def test_checkpoints_failing_hand_checkpointing_back_to_the_writer(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(walcheckpoint, "FAILING_AFTER_S", 0.2)
    conn = writer(tmp_path / "state.db")
    wal = WalCheckpointer(tmp_path / "gone" / "state.db", interval_s=0.05)  # cannot be opened
    wal.start(conn)
    try:
        wait_until(lambda: wal.failing_since is not None, 10)
        wal.check(conn)
        assert not wal.handed_back  # not failing long enough yet
        wait_until(lambda: (wal.check(conn), wal.handed_back)[1], 10)
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
        assert "unable to open" in wal.last_error
    finally:
        wal.stop()
        conn.close()


def test_a_dead_thread_hands_checkpointing_back(tmp_path: Path) -> None:
    conn = writer(tmp_path / "state.db")
    wal = WalCheckpointer(tmp_path / "state.db", interval_s=0.05)
    wal._run = lambda: None  # type: ignore[method-assign]  # the thread ends at once, as if it crashed
    wal.start(conn)
    try:
        assert wal._thread is not None
        wal._thread.join(5)
        wal.check(conn)
        assert wal.handed_back and conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    finally:
        wal.stop()
        conn.close()
