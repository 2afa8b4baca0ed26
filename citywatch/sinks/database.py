"""Opening citywatch's SQLite files: private file modes, a quick integrity check, incremental
auto-vacuum, and one clear StorageError naming the file instead of a traceback.

state.db holds alerts and device state, registry.db password hashes: both, and the -wal/-shm
files SQLite creates beside them (it gives those the database file's mode), are 0600.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
from collections.abc import Sequence
from pathlib import Path

from citywatch.errors import StorageError

log = logging.getLogger(__name__)

PRIVATE_MODE = 0o600
SIDE_FILES = ("-wal", "-shm", "-journal")
BUSY_TIMEOUT_S = 30.0


def make_private(path: Path) -> None:
    """Drop group and other permissions of an existing file (missing files are fine; a file we may
    use but not chmod, owned by another user, is left as it is, with a warning)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        try:
            os.chmod(path, mode & 0o700)
        except PermissionError:
            log.warning("%s is mode %o and holds secrets; its owner should make it 0600", path, mode)


def create_private(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists (SQLite takes an empty file as a new database)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def _read_only_reason(path: Path) -> str | None:
    """Why `path` cannot be written, if the file system or the permissions say so."""
    with contextlib.suppress(OSError):
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return "the file system is mounted read-only"
    for candidate in (path, *(path.with_name(path.name + s) for s in SIDE_FILES)):
        if candidate.exists() and not os.access(candidate, os.W_OK):
            return f"{candidate.name} is not writable by this user"
    if path.parent.exists() and not os.access(path.parent, os.W_OK):
        return f"the directory {path.parent} is not writable by this user"
    return None


def explain(path: Path, exc: BaseException) -> str:
    """One line for a person: which file, what is wrong, what to do."""
    text = str(exc)
    lowered = text.lower()
    read_only = _read_only_reason(path) if not isinstance(exc, sqlite3.DatabaseError) or isinstance(
        exc, sqlite3.OperationalError) else None
    if read_only is not None:
        return (f"{path}: cannot write the database: {read_only} ({text}). citywatch needs to write its data "
                "directory: fix the permissions or the mount, or point data_dir elsewhere.")
    if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in lowered or "not a database" in lowered
                                                    or "corrupt" in lowered):
        return (f"{path}: the database is corrupt ({text}). Stop citywatch, move the file aside and restore the "
                "last backup (`citywatch restore FILE`), or salvage it with `sqlite3 FILE .recover`.")
    if "readonly" in lowered or "read-only" in lowered or isinstance(exc, PermissionError):
        return (f"{path}: cannot write the database ({text}). Check that the file, its -wal/-shm files and "
                "their directory are writable by this user and that the file system is not mounted read-only.")
    if "unable to open" in lowered or isinstance(exc, OSError):
        return (f"{path}: cannot open the database ({text}). Check that the directory exists, is writable "
                "and is on a mounted file system.")
    return f"{path}: the database cannot be used ({text})."


def check_database(conn: sqlite3.Connection, path: Path, tables: Sequence[str] = ()) -> None:
    """PRAGMA quick_check (every page and index entry, without cross-checking contents) of the whole
    file, or only of `tables` (and their indexes: cheap for a CLI command that reads a small table of
    a big file). Raises StorageError naming the file when it reports anything but ok."""
    try:
        if not tables:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        else:
            present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            problems = [row[0] for table in tables if table in present
                        for row in conn.execute(f'PRAGMA quick_check("{table}")')]
            problems = [p for p in problems if p != "ok"] or ["ok"]
    except sqlite3.DatabaseError as exc:
        raise StorageError(explain(path, exc)) from None
    if problems != ["ok"]:
        found = "; ".join(" ".join(p.split()) for p in problems)
        raise StorageError(explain(path, sqlite3.DatabaseError(f"database disk image is malformed: {found[:300]}")))


def _incremental_vacuum_on(conn: sqlite3.Connection, path: Path) -> None:
    """Switch auto_vacuum to INCREMENTAL so deleted pages can be handed back to the file system. A new
    file takes it at once; an existing one needs one VACUUM (a full rewrite: logged, and skipped with
    a warning when it fails, e.g. for lack of space; the next open tries again)."""
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    size_mb = os.path.getsize(path) / 1e6
    log.warning("%s: switching on incremental auto-vacuum (one-time VACUUM of %.1f MB)", path, size_mb)
    try:
        conn.execute("VACUUM")
    except sqlite3.OperationalError as exc:
        log.warning("%s: VACUUM failed (%s); space freed by retention is reused but not returned", path, exc)


def open_database(path: Path, schema: str, *, cache_kib: int | None = None, check: bool | Sequence[str] = True,
                  wal_max_bytes: int = 64 * 1024 * 1024) -> sqlite3.Connection:
    """Open (creating if needed, mode 0600) a WAL-mode database and apply `schema`.

    `check` runs PRAGMA quick_check first: True of the whole file (about 1.5 s per GB when cached), or
    of the tables named. Any failure is a StorageError naming the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        create_private(path)
        for name in (path, *(path.with_name(path.name + s) for s in SIDE_FILES)):
            make_private(name)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(explain(path, exc)) from None
    try:
        if check:
            check_database(conn, path, () if check is True else check)
        new = os.path.getsize(path) == 0
        if new:  # takes effect when the schema creates the first table (before any write: see below)
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("BEGIN IMMEDIATE")  # can we write at all? (read-only file or file system)
        conn.execute("ROLLBACK")
        if not new:
            _incremental_vacuum_on(conn, path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA journal_size_limit={int(wal_max_bytes)}")
        if cache_kib:
            conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        conn.executescript(schema)
    except StorageError:
        conn.close()
        raise
    except (OSError, sqlite3.Error) as exc:
        conn.close()
        raise StorageError(explain(path, exc)) from None
    return conn
