"""Retention of the audit trail: old records of state.db move to the archive, never silently dropped.

Like resolved alerts (citywatch/sinks/retention.py), records older than
`retention.audit.archive_after_days` are appended, as one gzip member of JSON lines (the stored
fields exactly, so their hashes can be checked again), to `archive/audit-YYYY-MM-DD.jsonl.gz` (the
UTC day of the first record of the batch); only then are they deleted, and in that same transaction
`audit_anchor` takes the seq and hash of the last one archived, so the chain stays verifiable across
the boundary: the first record left in the table must follow the anchor, and `citywatch audit verify`
walks the archive files and then the table.

Crash safe like the alert archive: the batch (last seq, file, its size before) is committed to
`audit_archive_pending` first; the file is rewritten atomically; a pass that finds a pending batch
whose file already grew only deletes the rows. The delete trigger admits exactly the pending batch.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from citywatch.people.audit import COLUMNS, ensure_schema
from citywatch.sinks.atomic import write_atomically

ARCHIVE_PREFIX = "audit-"


def archive_files(data_dir: Path) -> list[Path]:
    """The audit archive files, oldest first (names sort by day; records are in seq order within)."""
    folder = data_dir / "archive"
    return sorted(folder.glob(f"{ARCHIVE_PREFIX}*.jsonl.gz")) if folder.is_dir() else []


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def archive_old(conn: sqlite3.Connection, data_dir: Path, cutoff: float, limit: int) -> int:
    """Move up to `limit` records older than `cutoff` (epoch s) to the archive; returns how many.
    `conn` is a connection of its own to state.db (retention's), not in a transaction."""

    ensure_schema(conn)
    pending = conn.execute("SELECT file, size_before, last_seq FROM audit_archive_pending").fetchone()
    if pending is None:
        pending = _next_batch(conn, data_dir, cutoff, limit)
        if pending is None:
            return 0
    name, size_before, last_seq = pending
    path = data_dir / "archive" / name
    if _size(path) <= size_before:  # not appended yet (larger: appended before a crash)
        rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM audit WHERE seq <= ? ORDER BY seq",
                            (last_seq,)).fetchall()
        lines = b"".join(json.dumps(dict(zip(COLUMNS, row, strict=True)), ensure_ascii=False).encode() + b"\n"
                         for row in rows)
        write_atomically(path, path if size_before else None, gzip.compress(lines, compresslevel=6, mtime=0))
    conn.execute("BEGIN IMMEDIATE")
    try:
        last = conn.execute("SELECT seq, hash, at FROM audit WHERE seq = ?", (last_seq,)).fetchone()
        moved = conn.execute("DELETE FROM audit WHERE seq <= ?", (last_seq,)).rowcount
        if last is not None:
            conn.execute("INSERT OR REPLACE INTO audit_anchor (id, seq, hash, at) VALUES (1, ?, ?, ?)", last)
        conn.execute("DELETE FROM audit_archive_pending")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return int(moved)


def _next_batch(conn: sqlite3.Connection, data_dir: Path, cutoff: float, limit: int) -> tuple[str, int, int] | None:
    """The oldest records before `cutoff` (at most `limit`), recorded in audit_archive_pending."""
    rows = conn.execute("SELECT seq, at FROM audit WHERE at < ? ORDER BY seq LIMIT ?", (cutoff, limit)).fetchall()
    # the chain is in seq order: stop at the first record that is not old enough (a clock step back)
    first = conn.execute("SELECT seq FROM audit ORDER BY seq LIMIT 1").fetchone()
    if not rows or first is None or rows[0][0] != first[0]:
        return None
    last_seq = rows[0][0]
    for seq, _ in rows:
        if seq != last_seq and seq != last_seq + 1:
            break
        last_seq = seq
    day = datetime.fromtimestamp(rows[0][1], UTC).date().isoformat()
    existing = archive_files(data_dir)
    if existing and existing[-1].name > f"{ARCHIVE_PREFIX}{day}.jsonl.gz":  # the clock went back: keep file
        path = existing[-1]  # order = seq order by appending to the newest file
    else:
        path = data_dir / "archive" / f"{ARCHIVE_PREFIX}{day}.jsonl.gz"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    batch = (path.name, _size(path), int(last_seq))
    conn.execute("INSERT INTO audit_archive_pending (id, file, size_before, last_seq) VALUES (1, ?, ?, ?)", batch)
    return batch
