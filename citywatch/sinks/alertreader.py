"""Read-only lookups of the alert store for the HTTP API, on their own SQLite connection.

The runner writes its batches through its own connection on the event loop thread. API reads run
in a worker thread (`asyncio.to_thread`), so a lookup never stalls ingestion, and they use this
separate read-only connection, so the writer's connection is never shared across threads. WAL
mode lets these reads run beside the writer. Lookups go by primary key: one row, never a scan.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import msgspec

from citywatch.model import Alert

ALERT_BY_ID = "SELECT body FROM alerts WHERE id = ?"  # the primary key's index: one row

_decode_alert = msgspec.json.Decoder(Alert).decode


class ReadOnlyStore:
    """One read-only connection to a store, opened on first use, used by one thread at a time:
    the base of every reader that serves HTTP or metrics from a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        """The connection (call with the lock held)."""
        if self._conn is None:
            uri = self.path.resolve().as_uri() + "?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, timeout=5, check_same_thread=False)
        return self._conn

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._connection().execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class AlertReader(ReadOnlyStore):
    """Alerts by id for the API."""

    def alert(self, alert_id: str) -> Alert | None:
        """The alert as last committed (open or closed), or None if there is no such id."""
        rows = self._rows(ALERT_BY_ID, (alert_id,))
        return _decode_alert(rows[0][0]) if rows else None
