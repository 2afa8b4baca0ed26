"""The alert store: SQLite under data_dir holding alerts, their transitions, dead letters,
detector state and the webhook outbox, so one transaction commits all a batch produced.

The runner acknowledges MQTT messages only after `commit` returns: at-least-once end to end.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from citywatch.detectors.baseline import plain_hook
from citywatch.model import Alert, DeadLetter, KeyState, Transition
from citywatch.streams.pipeline import Output

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    opened_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_status ON alerts (status);
CREATE TABLE IF NOT EXISTS transitions (
    id TEXT PRIMARY KEY,
    alert_id TEXT NOT NULL,
    transition TEXT NOT NULL,
    at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_alert ON transitions (alert_id);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_reason ON dead_letters (reason);
CREATE TABLE IF NOT EXISTS device_state (
    device_id TEXT PRIMARY KEY,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_keys (
    device_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (device_id, rule)
);
"""

_encode_json = msgspec.json.Encoder().encode
_encode_state = msgspec.msgpack.Encoder(enc_hook=plain_hook).encode
_decode_state = msgspec.msgpack.Decoder(dict[str, Any]).decode
_decode_alert = msgspec.json.Decoder(Alert).decode
_decode_key = msgspec.json.Decoder(KeyState).decode

TxHook = Callable[[sqlite3.Connection, Output], None]


def store_path(data_dir: Path) -> Path:
    return data_dir / "state.db"


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: a million devices' state keeps its B-tree pages cached
    conn.executescript(SCHEMA)
    return conn


class AlertStore:
    def __init__(self, path: Path, hooks: Iterable[TxHook] = ()) -> None:
        self.path = path
        self.conn = connect(path)
        self.hooks = list(hooks)

    def close(self) -> None:
        self.conn.close()

    # -- loading at start -----------------------------------------------------------------

    def open_alerts(self) -> list[Alert]:
        rows = self.conn.execute("SELECT body FROM alerts WHERE status != 'resolved' ORDER BY opened_at")
        return [_decode_alert(body) for (body,) in rows]

    def alert_keys(self) -> dict[tuple[str, str], KeyState]:
        """The alert engine's streaks and flap history per (device, rule), as last committed."""
        rows = self.conn.execute("SELECT device_id, rule, body FROM alert_keys")
        return {(device_id, rule): _decode_key(body) for device_id, rule, body in rows}

    def counters(self) -> dict[str, int]:
        """Messages committed since the store was created: readings, statuses, dead_letters."""
        return dict(self.conn.execute("SELECT name, value FROM counters").fetchall())

    def device_states(self) -> dict[str, dict[str, Any]]:
        rows = self.conn.execute("SELECT device_id, body FROM device_state")
        return {device_id: _decode_state(body) for device_id, body in rows}

    # -- the batch commit -----------------------------------------------------------------

    def commit(self, out: Output, alerts: Iterable[Alert], states: dict[str, dict[str, Any]],
               keys: dict[tuple[str, str], KeyState | None] | None = None) -> None:
        """Write everything one batch produced in one transaction (hooks join it: the outbox).
        `keys`: the alert engine's per-(device, rule) streaks and flap history (None deletes)."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(a.id, a.device_id, a.kind, a.rule, a.severity, a.status, a.opened_at, a.updated_at,
                  _encode_json(a)) for a in alerts],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO transitions VALUES (?, ?, ?, ?, ?)",
                [(t.id, t.alert_id, t.transition, t.at, _encode_json(t)) for t in out.transitions],
            )
            conn.executemany(
                "INSERT INTO dead_letters (topic, payload, size, reason, detail, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(d.topic, d.payload, d.size, d.reason, d.detail, d.received_at) for d in out.dead_letters],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO device_state VALUES (?, ?)",
                [(device_id, _encode_state(state)) for device_id, state in states.items()],
            )
            counts = [(name, n) for name, n in (("readings", len(out.accepted)), ("statuses", len(out.statuses)),
                                                ("dead_letters", len(out.dead_letters))) if n]
            conn.executemany("INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + "
                             "excluded.value", counts)
            if keys:
                conn.executemany("INSERT OR REPLACE INTO alert_keys VALUES (?, ?, ?)",
                                 [(d, r, _encode_json(k)) for (d, r), k in keys.items() if k is not None])
                conn.executemany("DELETE FROM alert_keys WHERE device_id = ? AND rule = ?",
                                 [key for key, k in keys.items() if k is None])
            for hook in self.hooks:
                hook(conn, out)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                conn.execute("ROLLBACK")
            raise

    # -- queries for the CLI and API ------------------------------------------------------

    def alerts(self, status: str | None = "open") -> list[Alert]:
        if status == "open":
            rows = self.conn.execute(
                "SELECT body FROM alerts WHERE status != 'resolved' ORDER BY opened_at DESC")
        elif status is None:
            rows = self.conn.execute("SELECT body FROM alerts ORDER BY opened_at DESC")
        else:
            rows = self.conn.execute("SELECT body FROM alerts WHERE status = ? ORDER BY opened_at DESC",
                                     (status,))
        return [_decode_alert(body) for (body,) in rows]

    def transitions(self, alert_id: str | None = None) -> list[Transition]:
        decode = msgspec.json.Decoder(Transition).decode
        if alert_id is None:
            rows = self.conn.execute("SELECT body FROM transitions ORDER BY at, id")
        else:
            rows = self.conn.execute("SELECT body FROM transitions WHERE alert_id = ? ORDER BY at, id",
                                     (alert_id,))
        return [decode(body) for (body,) in rows]

    def dead_letters(self, limit: int = 100, reason: str | None = None) -> list[DeadLetter]:
        sql = "SELECT topic, payload, reason, detail, received_at, size FROM dead_letters"
        args: tuple[Any, ...] = ()
        if reason:
            sql += " WHERE reason = ?"
            args = (reason,)
        sql += " ORDER BY seq DESC LIMIT ?"
        rows = self.conn.execute(sql, (*args, limit))
        return [DeadLetter(*row) for row in rows]

    def dead_letter_counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason ORDER BY 2 DESC")
        return dict(rows.fetchall())
