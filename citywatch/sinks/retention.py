"""Bounded storage: what the live store keeps, and for how long (the `retention:` settings).

`Retention.run_once(now)` is one pass of bounded work (at most `batch_rows` rows per kind): stored
dead letters beyond their age, row count or size are deleted (their counters stay); delivered and
dead webhook outbox rows past their age are deleted; resolved alerts past their age move with their
transitions into `data_dir/archive/alerts-YYYY-MM-DD.jsonl.gz` (audit records into
`audit-YYYY-MM-DD.jsonl.gz`: citywatch/people/archive.py); free pages are handed back to the
file system and the WAL is checkpointed and truncated. Device state is never touched.

Archiving is crash safe and idempotent: the batch (alert ids, file, the file's size before) is
committed to `archive_pending` first; the file is rewritten atomically (temp file, fsync, rename,
fsync of the directory) with the batch appended as one more gzip member; only then are the rows
deleted. A pass that finds a pending batch whose file already grew only deletes the rows.

The runner calls it from its tick in a worker thread, with its own connection to state.db.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from citywatch.config import RetentionSettings
from citywatch.devices.registry import registry_path
from citywatch.sinks.atomic import write_atomically
from citywatch.sinks.outbox import ensure_schema as ensure_outbox_schema
from citywatch.sinks.store import ROW_BYTES, STORED_BYTES, store_path

log = logging.getLogger(__name__)

DAY_S = 86400.0
ARCHIVE_DIR = "archive"
ARCHIVE_BATCH_MAX = 2000  # alerts per archive batch (each one gzip member)
BUSY_TIMEOUT_S = 5.0
CHECKPOINT_WAIT_MS = 500
EXTRA_SCHEMA = (
    "CREATE INDEX IF NOT EXISTS dead_letters_received ON dead_letters (received_at)",
    "CREATE INDEX IF NOT EXISTS webhook_outbox_done ON webhook_outbox (status, delivered_at)",
)


@dataclass
class RetentionReport:
    """What one pass did; `more` is true when a limit was reached and work is left for the next."""

    at: float
    dead_letters_purged: int = 0
    outbox_purged: int = 0
    alerts_archived: int = 0
    audit_archived: int = 0
    pages_vacuumed: int = 0
    wal_bytes_after: int = 0
    seconds: float = 0.0
    more: bool = False
    errors: list[str] = field(default_factory=list)


def _counter(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


def archive_dir(data_dir: Path) -> Path:
    return data_dir / ARCHIVE_DIR


def archive_file(data_dir: Path, day: str) -> Path:
    return archive_dir(data_dir) / f"alerts-{day}.jsonl.gz"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _tree_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # removed while we walk
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def disk_usage(data_dir: Path) -> dict[str, Any]:
    """Bytes used by each part of the data directory, and the file system's free space."""
    state, registry = store_path(data_dir), registry_path(data_dir)
    out: dict[str, Any] = {
        "state_db": _file_size(state), "state_wal": _file_size(state.with_name(state.name + "-wal")),
        "registry_db": _file_size(registry), "registry_wal": _file_size(registry.with_name(registry.name + "-wal")),
        "archive": _tree_size(archive_dir(data_dir)), "influx_buffer": _tree_size(data_dir / "influx-buffer"),
        "influx_rejected": _tree_size(data_dir / "influx-rejected"),
    }
    out["data_dir_total"] = _tree_size(data_dir)
    try:
        fs = os.statvfs(data_dir)
        out["fs_free"], out["fs_size"] = fs.f_bavail * fs.f_frsize, fs.f_blocks * fs.f_frsize
    except OSError:
        out["fs_free"] = out["fs_size"] = None
    return out


def _log_failure(task: asyncio.Future[RetentionReport]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("retention pass failed", exc_info=task.exception())


class Retention:
    """One pass at a time: `run_once(now)` (blocking), or `start_if_due(now)` from the runner's tick,
    which runs the pass in a worker thread so neither the event loop nor the consume loop waits."""

    def __init__(self, settings: RetentionSettings, data_dir: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.path = store_path(data_dir)
        self.next_at = 0.0
        self.last: RetentionReport | None = None
        self.totals: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._task: asyncio.Future[RetentionReport] | None = None

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def start_if_due(self, now: float) -> None:
        """Start a pass in a worker thread when one is due and none is running."""
        if (self._task is not None and not self._task.done()) or not self.due(now):
            return
        self.next_at = now + self.settings.interval_s  # run_once sets it again when it ends
        self._task = asyncio.ensure_future(asyncio.to_thread(self.run_once, now))
        self._task.add_done_callback(_log_failure)

    async def stop(self) -> None:
        """Wait for a running pass to finish (before the runner closes the store)."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    def run_once(self, now: float) -> RetentionReport:
        """One bounded pass. A step that fails is reported in `errors` (and tried again next pass)."""
        with self._lock:
            started = time.monotonic()
            report = RetentionReport(at=now)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                for step in (self._schema, self._dead_letters, self._outbox, self._archive, self._audit, self._reclaim):
                    try:
                        step(conn, now, report)
                    except (sqlite3.Error, OSError) as exc:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        report.errors.append(f"{step.__name__.strip('_')}: {exc}")
            finally:
                conn.close()
            if report.errors:
                log.warning("retention pass: %s", "; ".join(report.errors))
            report.seconds = round(time.monotonic() - started, 4)
            self.next_at = now + (min(1.0, self.settings.interval_s) if report.more else self.settings.interval_s)
            self.last = report
            for name in ("dead_letters_purged", "outbox_purged", "alerts_archived", "audit_archived", "pages_vacuumed"):
                self.totals[name] += getattr(report, name)
            self.totals["passes"] += 1
            return report

    # -- the steps ------------------------------------------------------------------------------

    @staticmethod
    def _schema(conn: sqlite3.Connection, now: float, report: RetentionReport) -> None:
        ensure_outbox_schema(conn)
        for statement in EXTRA_SCHEMA:
            conn.execute(statement)

    def _delete(self, conn: sqlite3.Connection, table: str, where: str, args: tuple[Any, ...],
                order: str = "seq") -> int:
        limit = self.settings.batch_rows
        cur = conn.execute(f"DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} WHERE {where}"
                           f" ORDER BY {order} LIMIT ?)", (*args, limit))
        return cur.rowcount

    def _dead_letters(self, conn: sqlite3.Connection, now: float, report: RetentionReport) -> None:
        """Stored dead letters past their age, then the oldest beyond max_rows, then the oldest beyond
        max_mb (the store keeps their size in the counter `dead_letters.stored_bytes`): each step is
        O(rows deleted), so the write lock is held only briefly."""
        s = self.settings.dead_letters
        budget = self.settings.batch_rows
        conn.execute("BEGIN IMMEDIATE")
        n, freed = self._delete_dead(conn, "received_at < ?", (now - s.max_age_days * DAY_S,), "received_at",
                                     budget)
        (rows,) = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        if rows > s.max_rows and n < budget:
            deleted, size = self._delete_dead(conn, "1", (), "seq", min(rows - s.max_rows, budget - n))
            n, freed, rows = n + deleted, freed + size, rows - deleted
        stored = _counter(conn, STORED_BYTES) - freed
        limit = int(s.max_mb * 1e6)
        while stored > limit and rows and n < budget:  # oldest first, about as many as the excess needs
            need = min(budget - n, max(1, math.ceil((stored - limit) / (stored / rows))))
            deleted, size = self._delete_dead(conn, "1", (), "seq", need)
            if not deleted:
                break
            n, freed, rows, stored = n + deleted, freed + size, rows - deleted, stored - size
        if n:
            conn.executemany("INSERT INTO counters VALUES (?, ?) ON CONFLICT (name)"
                             " DO UPDATE SET value = value + excluded.value",
                             [("dead_letters.purged", n), (STORED_BYTES, -freed)])
        conn.execute("COMMIT")
        report.dead_letters_purged = n
        report.more |= n >= budget

    @staticmethod
    def _delete_dead(conn: sqlite3.Connection, where: str, args: tuple[Any, ...], order: str,
                     limit: int) -> tuple[int, int]:
        """Delete up to `limit` dead letters; returns (rows, their size as the store counts it)."""
        sizes = conn.execute(f"DELETE FROM dead_letters WHERE seq IN (SELECT seq FROM dead_letters WHERE {where}"
                             f" ORDER BY {order} LIMIT ?) RETURNING {ROW_BYTES}", (*args, limit)).fetchall()
        return len(sizes), sum(size for (size,) in sizes)

    def _outbox(self, conn: sqlite3.Connection, now: float, report: RetentionReport) -> None:
        s = self.settings.outbox
        conn.execute("BEGIN IMMEDIATE")
        n = self._delete(conn, "webhook_outbox", "status = 'delivered' AND delivered_at < ?",
                         (now - s.delivered_days * DAY_S,))
        n += self._delete(conn, "webhook_outbox", "status IN ('dead', 'suppressed')"  # suppressed: silenced, never sent
                          " AND COALESCE(last_attempt_at, created_at) < ?", (now - s.dead_days * DAY_S,))
        conn.execute("COMMIT")
        report.outbox_purged = n
        report.more |= n >= self.settings.batch_rows

    def _archive(self, conn: sqlite3.Connection, now: float, report: RetentionReport) -> None:
        """Resolved alerts past their age into their day's archive file, a batch at a time, then out of
        the store; at most `batch_rows` (and ARCHIVE_BATCH_MAX) alerts per pass."""
        budget = min(self.settings.batch_rows, ARCHIVE_BATCH_MAX)
        cutoff = now - self.settings.alerts.archive_after_days * DAY_S
        spent = 0  # alerts taken into batches this pass
        while spent < budget:
            pending = conn.execute("SELECT file, size_before, alert_ids FROM archive_pending").fetchone()
            if pending is None:
                pending = self._next_batch(conn, cutoff, budget - spent)
                if pending is None:
                    return
            name, size_before, ids_json = pending
            path = archive_dir(self.data_dir) / name
            if _file_size(path) <= size_before:  # not appended yet (larger: appended before a crash)
                write_atomically(path, path if size_before else None, self._member(conn, ids_json))
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM transitions WHERE alert_id IN (SELECT value FROM json_each(?))", (ids_json,))
            n = conn.execute("DELETE FROM alerts WHERE status IN ('resolved', 'closed') AND id IN"
                             " (SELECT value FROM json_each(?))", (ids_json,)).rowcount
            conn.execute("DELETE FROM archive_pending")
            conn.execute("INSERT INTO counters VALUES ('alerts.archived', ?) ON CONFLICT (name)"
                         " DO UPDATE SET value = value + excluded.value", (n,))
            conn.execute("COMMIT")
            report.alerts_archived += n
            spent += len(json.loads(ids_json))
        report.more = True

    def _next_batch(self, conn: sqlite3.Connection, cutoff: float, limit: int) -> tuple[str, int, str] | None:
        """The oldest resolved alerts of one UTC day (before `cutoff`), recorded in archive_pending."""
        first = conn.execute("SELECT updated_at FROM alerts WHERE status IN ('resolved', 'closed') AND updated_at < ?"
                             " ORDER BY updated_at LIMIT 1", (cutoff,)).fetchone()
        if first is None:
            return None
        day = datetime.fromtimestamp(first[0], UTC).date()
        start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        end = min(cutoff, (datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)).timestamp())
        ids = [row[0] for row in conn.execute(
            "SELECT id FROM alerts WHERE status IN ('resolved', 'closed') AND updated_at >= ? AND updated_at < ?"
            " ORDER BY updated_at, id LIMIT ?", (start, end, limit))]
        path = archive_file(self.data_dir, day.isoformat())
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        batch = (path.name, _file_size(path), json.dumps(ids))
        conn.execute("INSERT INTO archive_pending (id, file, size_before, alert_ids) VALUES (1, ?, ?, ?)", batch)
        return batch

    @staticmethod
    def _member(conn: sqlite3.Connection, ids_json: str) -> bytes:
        """One gzip member: a JSON line per alert, {"alert": ..., "transitions": [...]} (stored JSON as is)."""
        transitions: dict[str, list[bytes]] = {}
        for alert_id, body in conn.execute(
                "SELECT alert_id, body FROM transitions WHERE alert_id IN (SELECT value FROM json_each(?))"
                " ORDER BY at, id", (ids_json,)):
            transitions.setdefault(alert_id, []).append(bytes(body))
        lines = [b'{"alert":' + bytes(body) + b',"transitions":[' + b",".join(transitions.get(alert_id, ())) + b"]}\n"
                 for alert_id, body in conn.execute(
                     "SELECT id, body FROM alerts WHERE status IN ('resolved', 'closed')"
                     " AND id IN (SELECT value FROM json_each(?)) ORDER BY updated_at, id", (ids_json,))]
        return gzip.compress(b"".join(lines), compresslevel=6, mtime=0)

    def _audit(self, conn: sqlite3.Connection, now: float, report: RetentionReport) -> None:
        """Audit records past their age into archive/audit-YYYY-MM-DD.jsonl.gz, the chain kept
        verifiable across the boundary (citywatch/people/archive.py)."""
        from citywatch.people.archive import archive_old

        budget = min(self.settings.batch_rows, ARCHIVE_BATCH_MAX)
        report.audit_archived = archive_old(conn, self.data_dir, now - self.settings.audit.archive_after_days * DAY_S,
                                            budget)
        report.more |= report.audit_archived >= budget

    def _reclaim(self, conn: sqlite3.Connection, now: float, report: RetentionReport) -> None:
        """Hand free pages back to the file system (incremental vacuum) and truncate the WAL."""
        pages = self.settings.vacuum_pages
        if pages and conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if free:
                conn.executescript(f"PRAGMA incremental_vacuum({min(free, pages)})")
                report.pages_vacuumed = free - conn.execute("PRAGMA freelist_count").fetchone()[0]
                report.more |= report.pages_vacuumed >= pages
        # TRUNCATE waits for readers while holding off writers: wait briefly, else leave it to the next pass
        conn.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        report.wal_bytes_after = _file_size(self.path.with_name(self.path.name + "-wal"))

    # -- reporting ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """For the runner's /stats: the last pass, totals since start, and disk use."""
        return {"last_pass": asdict(self.last) if self.last else None, "totals": dict(self.totals),
                "disk": disk_usage(self.data_dir)}


def read_archive(path: Path) -> list[dict[str, Any]]:
    """Every alert line of an archive file (all gzip members), decoded."""
    with gzip.open(path, "rb") as f:
        return [json.loads(line) for line in f if line.strip()]
