"""WAL checkpoints in a thread of their own, off the consume loop.

SQLite's default runs a checkpoint inside the commit that pushes the write-ahead log past 1,000
pages: that commit then copies pages back into the database file and syncs it. On a 1.4 GB state.db
with a million devices' values written at random, that made an average row write cost 143 µs of wall
time on the consume loop (58 µs of CPU, the rest waiting for the disk) against 26 µs without
(measured on the 1M-device run's own file). With this, a thread with its own connection runs a
PASSIVE checkpoint every `interval_s` (it never blocks the writer; SQLite releases the GIL meanwhile,
so it runs on the other core), and the runner's connection checkpoints only past WRITER_AUTOCHECKPOINT
pages, to restart the log.

Fail loudly, never silently grow the log: if the thread's checkpoints keep failing, `check()` (called
by the consume loop) hands checkpointing back to the writer connection and logs an error.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

FAILING_AFTER_S = 30.0  # checkpoints failing this long: the writer checkpoints again itself
SQLITE_DEFAULT_AUTOCHECKPOINT = 1000
# The writer still checkpoints itself past this many log pages (40 MiB). A PASSIVE checkpoint from
# another connection copies frames but cannot restart the log while the writer keeps appending, so
# under a steady write load the log would grow (the 1M-device run saw it reach about 1 GB); the
# writer's own checkpoint then finds nearly every frame copied already and restarts the log cheaply.
WRITER_AUTOCHECKPOINT = 10_000


class WalCheckpointer:
    def __init__(self, path: Path, interval_s: float = 1.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self.checkpoints = 0
        self.failing_since: float | None = None
        self.last_error = ""
        self.handed_back = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, writer: sqlite3.Connection) -> None:
        """Take checkpointing off `writer` (the consume loop's connection) and start the thread."""
        writer.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT}")
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self._stop.wait(self.interval_s):
            try:
                if conn is None:
                    conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self.checkpoints += 1
                self.failing_since = None
            except sqlite3.Error as exc:
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                    log.warning("WAL checkpoint of %s failed (%s); retrying", self.path, exc)
                self.last_error = str(exc)
        if conn is not None:
            conn.close()

    def check(self, writer: sqlite3.Connection) -> None:
        """From the writer's thread: if the thread died or keeps failing, the writer checkpoints again
        (SQLite's default), so the log never grows without bound."""
        if self.handed_back or self._thread is None:
            return
        dead = not self._thread.is_alive() and not self._stop.is_set()
        failing = self.failing_since is not None and time.monotonic() - self.failing_since > FAILING_AFTER_S
        if dead or failing:
            try:
                writer.execute(f"PRAGMA wal_autocheckpoint={SQLITE_DEFAULT_AUTOCHECKPOINT}")
            except sqlite3.Error:
                return  # the store itself is failing: the consume loop says so; try again next tick
            self.handed_back = True
            log.error("WAL checkpoints of %s %s: the consume loop checkpoints again itself (slower at a "
                      "million devices)", self.path, "stopped" if dead else f"failing ({self.last_error})")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
