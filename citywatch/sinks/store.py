"""The alert store: SQLite under data_dir holding alerts, their transitions, dead letters,
each device's stored value (its record and alert streaks: streams/device_value.py) and the webhook
outbox, so one transaction commits all a batch produced.

The runner acknowledges MQTT messages only after `commit` returns: at-least-once end to end.
Dead letters are counted per reason in `counters` (kept forever) and stored only as a sample
(sampling.py); retention.py deletes old rows and archives resolved alerts.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from citywatch.config import RetentionSettings
from citywatch.loop.silences import SILENCES_SCHEMA
from citywatch.model import Alert, DeadLetter, Incident, IncidentTransition, KeyState, Output, Transition
from citywatch.sinks.database import open_database
from citywatch.sinks.sampling import DeadLetterSampler
from citywatch.streams.device_value import DeviceValue, decode_value, encode_value

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
CREATE INDEX IF NOT EXISTS alerts_closed ON alerts (status, updated_at);
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
    received_at REAL NOT NULL,
    field TEXT
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
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    severity TEXT NOT NULL,
    opened_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_status ON incidents (status);
CREATE TABLE IF NOT EXISTS incident_members (
    alert_id TEXT PRIMARY KEY,  -- every alert belongs to exactly one incident: a second row is refused
    incident_id TEXT NOT NULL,
    joined_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS incident_members_incident ON incident_members (incident_id);
CREATE TABLE IF NOT EXISTS incident_transitions (
    id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    transition TEXT NOT NULL,
    at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS incident_transitions_incident ON incident_transitions (incident_id);
CREATE TABLE IF NOT EXISTS archive_pending (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    file TEXT NOT NULL,
    size_before INTEGER NOT NULL,
    alert_ids TEXT NOT NULL
);
"""
SCHEMA += SILENCES_SCHEMA  # silences and maintenance windows (citywatch/loop/silences.py)
# Counter names (table `counters`): readings, statuses, dead_letters (all), dead_letter.<reason> (all of
# that reason), sampled_out.<reason> and dead_letters.sampled_out (counted, not stored), dead_letters.purged,
# dead_letters.stored_bytes (the size of the stored rows, as ROW_BYTES counts it: retention's size bound).
REASON_PREFIX = "dead_letter."
SAMPLED_PREFIX = "sampled_out."
STORED_BYTES = "dead_letters.stored_bytes"
ROW_BYTES = "length(payload) + length(topic) + length(detail)"
# PRAGMA user_version: 1 = per-reason dead-letter counters exist, 2 = and the stored size (older files
# are counted once from their rows), 3 = dead letters keep the field at fault (column added to older files),
# 4 = device_state holds each device's value (streams/device_value.py): its record and its alert streaks,
# which older files kept in a table alert_keys (folded in, and the table dropped, in one transaction).
SCHEMA_VERSION = 4

_encode_json = msgspec.json.Encoder().encode
_decode_alert = msgspec.json.Decoder(Alert).decode
_decode_key = msgspec.json.Decoder(KeyState).decode
_decode_incident = msgspec.json.Decoder(Incident).decode

TxHook = Callable[[sqlite3.Connection, Output], None]
StoredRecord = bytes | dict[str, Any]  # a device record in stored form (detectors/record.py; a dict: format 1)


def store_path(data_dir: Path) -> Path:
    return data_dir / "state.db"


def connect(path: Path, check: bool | Sequence[str] = True, wal_max_mb: int = 64) -> sqlite3.Connection:
    """Open state.db (mode 0600, quick integrity check): StorageError naming the file if unusable."""
    # 64 MiB cache: a million devices' state keeps its B-tree pages cached
    conn = open_database(path, SCHEMA, cache_kib=65536, check=check, wal_max_bytes=wal_max_mb * 1024 * 1024)
    _migrate(conn)
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """An older file: count its stored dead letters (and their size) once (before version 2), add the
    dead letters' `field` column (before version 3), fold the alert streaks into the device values
    (before version 4)."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < 1:
            conn.execute("INSERT INTO counters SELECT ? || reason, COUNT(*) FROM dead_letters GROUP BY reason"
                         " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value", (REASON_PREFIX,))
        if version < 2:
            conn.execute(f"INSERT OR REPLACE INTO counters SELECT ?, COALESCE(SUM({ROW_BYTES}), 0)"
                         " FROM dead_letters", (STORED_BYTES,))
        if "field" not in {row[1] for row in conn.execute("PRAGMA table_info(dead_letters)")}:
            conn.execute("ALTER TABLE dead_letters ADD COLUMN field TEXT")
        if version < 4:
            _fold_alert_keys(conn)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _fold_alert_keys(conn: sqlite3.Connection) -> None:
    """Version 4: each device_state row becomes the device's value: its record (the row as it was)
    with the streaks and flap history the table alert_keys held for it; then that table goes. Every
    row is rewritten, 10,000 at a time (a city's worth needs little memory), so all rows are values."""
    streaks: dict[str, dict[str, KeyState]] = {}
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alert_keys'").fetchone():
        for device_id, rule, body in conn.execute("SELECT device_id, rule, body FROM alert_keys"):
            streaks.setdefault(device_id, {})[rule] = _decode_key(body)
    last = ""
    while rows := conn.execute("SELECT device_id, body FROM device_state WHERE device_id > ? ORDER BY device_id"
                               " LIMIT 10000", (last,)).fetchall():
        conn.executemany("UPDATE device_state SET body = ? WHERE device_id = ?",
                         [(encode_value(DeviceValue(state=bytes(body), alerts=streaks.pop(device_id, {}))),
                           device_id) for device_id, body in rows])
        last = rows[-1][0]
    conn.executemany("INSERT INTO device_state VALUES (?, ?)",  # streaks of a device without a record
                     [(device_id, encode_value(DeviceValue(alerts=alerts))) for device_id, alerts in streaks.items()])
    conn.execute("DROP TABLE IF EXISTS alert_keys")


class AlertStore:
    """`retention` sets the dead-letter sampling (defaults when None: sampling is always on). `check`: a
    quick integrity check of the whole file at open (True), or only of the tables named (CLI reads)."""

    def __init__(self, path: Path, hooks: Iterable[TxHook] = (), retention: RetentionSettings | None = None,
                 check: bool | Sequence[str] = True) -> None:
        self.path = path
        retention = retention or RetentionSettings()
        self.conn = connect(path, check=check, wal_max_mb=retention.wal_max_mb)
        self.hooks = list(hooks)
        self.sampler = DeadLetterSampler(retention.dead_letters)

    def close(self) -> None:
        self.conn.close()

    # -- loading at start -----------------------------------------------------------------

    def open_alerts(self) -> list[Alert]:
        """Alerts not yet resolved or closed (model.TERMINAL_STATUSES), oldest first."""
        rows = self.conn.execute(
            "SELECT body FROM alerts WHERE status NOT IN ('resolved', 'closed') ORDER BY opened_at")
        return [_decode_alert(body) for (body,) in rows]

    def counters(self) -> dict[str, int]:
        """Messages committed since the store was created: readings, statuses, dead_letters (and per
        reason, sampled out, purged: see the names above)."""
        return dict(self.conn.execute("SELECT name, value FROM counters").fetchall())

    def device_values(self) -> dict[str, bytes]:
        """Each device's stored value (streams/device_value.py: its record and alert streaks), as
        committed: what the runner loads at start."""
        rows = self.conn.execute("SELECT device_id, body FROM device_state")
        return {device_id: bytes(body) for device_id, body in rows}

    def device_states(self) -> dict[str, StoredRecord]:
        """Each device's record in its stored form (detectors/record.py reads its header), for reports."""
        rows = self.conn.execute("SELECT device_id, body FROM device_state")
        return {device_id: state for device_id, body in rows if (state := decode_value(body).state)}

    def device_state(self, device_id: str) -> StoredRecord | None:
        row = self.conn.execute("SELECT body FROM device_state WHERE device_id = ?", (device_id,)).fetchone()
        return (decode_value(row[0]).state or None) if row is not None else None

    # -- the batch commit -----------------------------------------------------------------

    def commit(self, out: Output, alerts: Iterable[Alert], values: Mapping[str, bytes | None], *,
               incidents: Iterable[Incident] = (), members: Iterable[tuple[str, str, float]] = ()) -> None:
        """Write everything one batch produced in one transaction (hooks join it: the outbox).
        `values`: devices' stored values (streams/device_value.py: record and alert streaks; None deletes).
        `incidents` changed and `members` (alert id, incident id, joined at) new: the incident grouping
        (citywatch/loop/incidents.py); an alert already in an incident makes the commit fail."""
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
            kept, dropped = self.sampler.split(out.dead_letters) if out.dead_letters else ([], [])
            conn.executemany(
                "INSERT INTO dead_letters (topic, payload, size, reason, detail, received_at, field)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(d.topic, d.payload, d.size, d.reason, d.detail, d.received_at, d.field) for d in kept],
            )
            conn.executemany("INSERT OR REPLACE INTO device_state VALUES (?, ?)",
                             [item for item in values.items() if item[1] is not None])
            gone = [(device_id,) for device_id, value in values.items() if value is None]
            if gone:
                conn.executemany("DELETE FROM device_state WHERE device_id = ?", gone)
            counts = [(name, n) for name, n in (("readings", len(out.accepted)), ("statuses", len(out.statuses)),
                                                ("dead_letters", len(out.dead_letters)),
                                                ("dead_letters.sampled_out", len(dropped)),
                                                (STORED_BYTES, sum(len(d.payload) + len(d.topic) + len(d.detail)
                                                                   for d in kept))) if n]
            if out.dead_letters:
                counts += [(REASON_PREFIX + r, n) for r, n in Counter(d.reason for d in out.dead_letters).items()]
                counts += [(SAMPLED_PREFIX + r, n) for r, n in Counter(d.reason for d in dropped).items()]
            conn.executemany("INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + "
                             "excluded.value", counts)
            self._write_incidents(out.incident_transitions, incidents, members)
            for hook in self.hooks:
                hook(conn, out)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                conn.execute("ROLLBACK")
            raise

    def _write_incidents(self, transitions: list[IncidentTransition], incidents: Iterable[Incident],
                         members: Iterable[tuple[str, str, float]]) -> None:
        conn = self.conn
        conn.executemany("INSERT OR REPLACE INTO incidents VALUES (?, ?, ?, ?, ?, ?)",
                         [(i.id, i.status, i.severity, i.opened_at, i.updated_at, _encode_json(i)) for i in incidents])
        conn.executemany("INSERT INTO incident_members VALUES (?, ?, ?)", members)  # plain INSERT: never twice
        conn.executemany("INSERT OR IGNORE INTO incident_transitions VALUES (?, ?, ?, ?, ?)",
                         [(t.id, t.incident_id, t.transition, t.at, _encode_json(t)) for t in transitions])

    # -- incidents -------------------------------------------------------------------------

    def open_incidents(self) -> list[Incident]:
        """Incidents not closed, oldest first (the grouping resumes from them at start)."""
        rows = self.conn.execute("SELECT body FROM incidents WHERE status != 'closed' ORDER BY opened_at, id")
        return [_decode_incident(body) for (body,) in rows]

    def incidents(self, open_only: bool = True, limit: int | None = None) -> list[Incident]:
        """Open incidents (or all), newest first."""
        sql = "SELECT body FROM incidents" + (" WHERE status != 'closed'" if open_only else "")
        sql += " ORDER BY opened_at DESC, id" + (" LIMIT ?" if limit is not None else "")
        rows = self.conn.execute(sql, (limit,) if limit is not None else ())
        return [_decode_incident(body) for (body,) in rows]

    def incident(self, incident_id: str) -> Incident | None:
        row = self.conn.execute("SELECT body FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        return _decode_incident(row[0]) if row else None

    def incident_of(self, alert_id: str) -> str | None:
        """The incident an alert belongs to (None: in none yet)."""
        row = self.conn.execute("SELECT incident_id FROM incident_members WHERE alert_id = ?", (alert_id,)).fetchone()
        return row[0] if row else None

    def alerts_without_incident(self) -> list[Alert]:
        """Open alerts in no incident (stored before incidents existed), oldest first."""
        rows = self.conn.execute(
            "SELECT body FROM alerts WHERE status NOT IN ('resolved', 'closed')"
            " AND id NOT IN (SELECT alert_id FROM incident_members) ORDER BY opened_at, id")
        return [_decode_alert(body) for (body,) in rows]

    def alert_statuses(self, alert_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """(status, severity) of the alerts named that are still in the store (archived ones are not)."""
        ids = list(alert_ids)
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(f"SELECT id, status, severity FROM alerts WHERE id IN ({marks})", chunk)
            found.update((alert_id, (status, severity)) for alert_id, status, severity in rows)
        return found

    def incident_transitions(self, incident_id: str) -> list[IncidentTransition]:
        decode = msgspec.json.Decoder(IncidentTransition).decode
        rows = self.conn.execute("SELECT body FROM incident_transitions WHERE incident_id = ? ORDER BY at, id",
                                 (incident_id,))
        return [decode(body) for (body,) in rows]

    # -- queries for the CLI and API ------------------------------------------------------

    def alerts(self, status: str | None = "open") -> list[Alert]:
        if status == "open":
            rows = self.conn.execute(
                "SELECT body FROM alerts WHERE status NOT IN ('resolved', 'closed') ORDER BY opened_at DESC")
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
        sql = "SELECT topic, payload, reason, detail, received_at, size, field FROM dead_letters"
        args: tuple[Any, ...] = ()
        if reason:
            sql += " WHERE reason = ?"
            args = (reason,)
        sql += " ORDER BY seq DESC LIMIT ?"
        rows = self.conn.execute(sql, (*args, limit))
        return [DeadLetter(*row) for row in rows]

    def dead_letter_counts(self) -> dict[str, int]:
        """Every dead letter ever committed, by reason (most first): exact, whatever was sampled or purged."""
        return self._prefixed(REASON_PREFIX)

    def sampled_out_counts(self) -> dict[str, int]:
        """Dead letters counted but not stored (rate limited per source), by reason."""
        return self._prefixed(SAMPLED_PREFIX)

    def _prefixed(self, prefix: str) -> dict[str, int]:
        rows = self.conn.execute("SELECT substr(name, ?), value FROM counters WHERE name >= ? AND name < ?"
                                 " AND value > 0 ORDER BY value DESC, name",
                                 (len(prefix) + 1, prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)))
        return dict(rows.fetchall())

    def summary(self) -> dict[str, Any]:
        """What the live store holds (row counts) and the dead-letter counters, for `citywatch storage`."""
        conn = self.conn
        closed = dict(conn.execute(
            "SELECT status IN ('resolved', 'closed'), COUNT(*) FROM alerts GROUP BY 1").fetchall())
        has_outbox = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'webhook_outbox'").fetchone()
        outbox = dict(conn.execute("SELECT status, COUNT(*) FROM webhook_outbox GROUP BY status").fetchall()
                      if has_outbox else [])
        counters = self.counters()
        return {
            "alerts": {"open": closed.get(0, 0), "resolved": closed.get(1, 0)},  # resolved: resolved or closed
            "transitions": conn.execute("SELECT COUNT(*) FROM transitions").fetchone()[0],
            "device_states": conn.execute("SELECT COUNT(*) FROM device_state").fetchone()[0],
            "outbox": outbox,
            "dead_letters": {"stored": conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0],
                             "counted": counters.get("dead_letters", 0),
                             "sampled_out": counters.get("dead_letters.sampled_out", 0),
                             "purged": counters.get("dead_letters.purged", 0),
                             "by_reason": self.dead_letter_counts()},
            "alerts_archived": counters.get("alerts.archived", 0),
        }
