"""Quiet devices' checkpointed values written by a thread of its own, off the consume loop.

Why: with `ingest.state_checkpoint_s` N, each device's value (record and alert streaks, ~1.2 KB) is
written at most every N s: at a million devices and N = 300, 3,300 random row writes a second into a
file of over a gigabyte. On the consume loop that was the difference between keeping up with 16.7k
msg/s and a growing backlog. SQLite releases the GIL while it writes, so in a thread with its own
connection those writes run on the other core while the loop processes the next batch.

Only *quiet* values come here: a device whose alerts or streaks changed is still written in its
batch's transaction, with the alerts (detector and engine state stay consistent). Order is kept per
device: the batch's commit runs under `ordered()`, which first drops any older pending value of the
batch's devices and waits for a chunk being written, so an older value never lands after a newer one.
A value that waits here is what a crash may lose, as with any checkpoint (learning only; never a
message, an alert or a webhook). A failing write keeps its values and is reported (`failing_since`,
`last_error`: /ready's storage_error); past `max_pending` waiting values, `offer` hands the rest back
for the batch to write itself, so memory stays bounded and a full disk stops the loop as before.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 20  # values a statement, the loop waits for one at most (1M state.db: 0.36 ms, p90 0.55; 50: 0.8, p90 1.6)
MAX_PENDING = 20_000  # about 24 MB of values waiting; beyond, the batch writes them itself
RETRY_MAX_S = 5.0


@functools.cache  # one per chunk size: at most `chunk` of them
def _insert_rows(count: int) -> str:
    return "INSERT OR REPLACE INTO device_state VALUES " + ",".join(["(?, ?)"] * count)


class ValueWriter:
    def __init__(self, path: Path, chunk: int = CHUNK, max_pending: int = MAX_PENDING) -> None:
        self.path = path
        self.chunk = chunk
        self.max_pending = max_pending
        self.pending: dict[str, bytes] = {}  # device -> newest value not yet written, oldest first
        self.written = 0
        self.failing_since: float | None = None
        self.last_error = ""
        self._pending_lock = threading.Lock()  # guards `pending`
        self._write_lock = threading.Lock()  # one writer at a time: a chunk or the batch's commit
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="value-writer", daemon=True)
        self._thread.start()

    def offer(self, values: Mapping[str, bytes]) -> dict[str, bytes]:
        """Queue these values; returns those that did not fit (or all, when the thread is not
        running): the caller writes them with its batch."""
        if not values:
            return {}
        if not self.running:
            return dict(values)
        left: dict[str, bytes] = {}
        with self._pending_lock:
            pending = self.pending
            for device_id, value in values.items():
                if device_id in pending or len(pending) < self.max_pending:
                    pending[device_id] = value  # a newer value replaces the waiting one
                else:
                    left[device_id] = value
        self._wake.set()
        return left

    @contextlib.contextmanager
    def ordered(self, device_ids: Collection[str]) -> Iterator[None]:
        """Around the batch's commit of these devices' values: no older value of theirs lands after it."""
        with self._write_lock:
            if device_ids and self.pending:
                with self._pending_lock:
                    for device_id in device_ids:
                        self.pending.pop(device_id, None)
            yield

    @property
    def died(self) -> bool:
        """Started, then ended without being stopped: the consume loop writes its values again."""
        return self._thread is not None and not self._thread.is_alive() and not self._stop.is_set()

    def _run(self) -> None:
        try:
            self._write_until_stopped()
        except BaseException:
            log.exception("the thread writing devices' checkpointed values to %s died; the consume loop "
                          "writes them again itself", self.path)

    def _write_until_stopped(self) -> None:
        conn: sqlite3.Connection | None = None
        delay = 0.2
        while not self._stop.is_set():
            if not self.pending:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            with self._write_lock:
                with self._pending_lock:
                    chunk = list(itertools.islice(self.pending.items(), self.chunk))
                    for device_id, _ in chunk:
                        del self.pending[device_id]
                try:
                    if conn is None:
                        conn = self._connect()
                    self._write(conn, chunk)
                except BaseException as exc:
                    self._put_back(chunk)
                    if not isinstance(exc, sqlite3.Error):
                        raise
                    if self.failing_since is None:
                        self.failing_since = time.monotonic()
                        log.error("cannot write devices' checkpointed values to %s (%s): keeping %d and retrying",
                                  self.path, exc, len(self.pending))
                    self.last_error = str(exc)
                else:
                    self.written += len(chunk)
                    if self.failing_since is not None:
                        log.warning("devices' checkpointed values are written to %s again", self.path)
                    self.failing_since = None
                    delay = 0.2
            if self.failing_since is not None:
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            else:
                time.sleep(0.001)  # let a batch waiting for the write lock have it between chunks
        if conn is not None:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")  # per connection: as the runner's (no sync per commit in WAL)
        return conn

    @staticmethod
    def _write(conn: sqlite3.Connection, chunk: list[tuple[str, bytes]]) -> None:
        """One statement, its own transaction (autocommit): one step, so the GIL is released once for
        the whole chunk. `executemany` steps once per row, and each step's return had to win the GIL
        back from a busy consume loop: starved, the thread wrote 1,600-2,300 values a second."""
        conn.execute(_insert_rows(len(chunk)), list(itertools.chain.from_iterable(chunk)))

    def _put_back(self, chunk: list[tuple[str, bytes]]) -> None:
        with self._pending_lock:
            for device_id, value in chunk:
                self.pending.setdefault(device_id, value)  # unless a newer one came meanwhile

    def stop(self, drain_s: float) -> int:
        """Write what waits for at most `drain_s`, then stop the thread. Returns how many values were
        left unwritten (the caller says so: they resume from their previous checkpoint)."""
        deadline = time.monotonic() + drain_s
        while self.pending and self.running and self.failing_since is None and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.01)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10.0)
        return len(self.pending)

    def take_pending(self) -> dict[str, bytes]:
        """After stop: what is still waiting, for the caller to write itself."""
        with self._pending_lock:
            pending, self.pending = self.pending, {}
        return pending
