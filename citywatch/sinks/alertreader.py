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

import msgspec

from citywatch.model import Alert

ALERT_BY_ID = "SELECT body FROM alerts WHERE id = ?"  # the primary key's index: one row

_decode_alert = msgspec.json.Decoder(Alert).decode


class AlertReader:
    """One read-only connection, opened on first use, used by one thread at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            uri = self.path.resolve().as_uri() + "?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, timeout=5, check_same_thread=False)
        return self._conn

    def alert(self, alert_id: str) -> Alert | None:
        """The alert as last committed (open or closed), or None if there is no such id."""
        with self._lock:
            row = self._connection().execute(ALERT_BY_ID, (alert_id,)).fetchone()
        return _decode_alert(row[0]) if row else None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
