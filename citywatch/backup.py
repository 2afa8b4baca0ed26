"""Backup and restore of a data directory's databases: registry.db (devices, password hashes) and
state.db (alerts, transitions, webhook outbox, device state, counters).

`backup` copies each with SQLite's online backup API (a consistent snapshot, safe while a runner
writes: WAL readers do not block it) into one tar.gz with a manifest (format, versions, time,
sizes, sha256, row counts), written 0600 and atomically. `restore` takes the data directory's lock
(datalock.py: refused while a runner holds it) and refuses one that is not empty (unless forced), checks every
file against the manifest and with PRAGMA integrity_check before it replaces anything, and
removes the old -wal/-shm files (a stale WAL replayed onto another database corrupts it).

A restore rolls the databases back to the backup: webhooks still pending then are sent again
after it, with the same webhook-id (receivers drop repeats); those delivered then are not.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from citywatch import __version__
from citywatch.datalock import LOCK_NAME, DataDirLock
from citywatch.errors import CitywatchError, StorageError
from citywatch.sinks.database import PRIVATE_MODE, SIDE_FILES, create_private

FORMAT = 1
DATABASES = ("registry.db", "state.db")
MANIFEST = "manifest.json"


class BackupError(CitywatchError):
    """A backup or restore cannot be done; the message says why and what to do."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def integrity_check(path: Path) -> None:
    """The full PRAGMA integrity_check; StorageError naming the file when it finds anything."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check(5)")]
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"{path}: not a usable database ({exc})") from None
    finally:
        conn.close()
    if problems != ["ok"]:
        raise StorageError(f"{path}: integrity check failed: {'; '.join(problems)}")


def _tables(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        return {name: conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in names}
    finally:
        conn.close()


def _snapshot(source: Path, target: Path) -> None:
    """Copy `source` into a new file `target` (0600) with the online backup API, as one
    self-contained file (rollback-journal mode: no -wal belongs to it)."""
    create_private(target)
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # all pages in one step: one read snapshot, writers keep going (WAL)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"{source}: cannot back it up ({exc})") from None
    finally:
        src.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup(data_dir: Path, out: Path) -> dict[str, Any]:
    """Write a backup of `data_dir`'s databases to `out` (tar.gz, mode 0600); returns the manifest."""
    present = [name for name in DATABASES if (data_dir / name).exists()]
    if not present:
        raise BackupError(f"{data_dir}: no registry.db or state.db to back up (wrong --data-dir?)")
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.with_name(f".{out.name}.{os.getpid()}.parts")
    work.mkdir(mode=0o700)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        files: dict[str, Any] = {}
        for name in present:
            copy = work / name
            _snapshot(data_dir / name, copy)
            integrity_check(copy)
            conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
            user_version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.close()
            files[name] = {"bytes": copy.stat().st_size, "sha256": _sha256(copy), "user_version": user_version,
                           "rows": _tables(copy)}
        manifest = {"format": FORMAT, "citywatch": __version__, "sqlite": sqlite3.sqlite_version,
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                    "source": str(data_dir.absolute()), "files": files}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                body = json.dumps(manifest, indent=2).encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mode, info.mtime = len(body), PRIVATE_MODE, int(time.time())
                tar.addfile(info, io.BytesIO(body))
                for name in present:
                    tar.add(work / name, arcname=name, filter=_private)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
        _fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)
        for part in work.iterdir():
            part.unlink()
        work.rmdir()
    return manifest


def _private(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mode, info.uid, info.gid, info.uname, info.gname = PRIVATE_MODE, 0, 0, "", ""
    return info


def read_manifest(archive: Path) -> dict[str, Any]:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.extractfile(MANIFEST)
            if member is None:
                raise KeyError(MANIFEST)
            manifest: dict[str, Any] = json.loads(member.read())
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise BackupError(f"{archive}: not a citywatch backup ({exc})") from None
    if manifest.get("format") != FORMAT or not set(manifest.get("files", {})) <= set(DATABASES):
        raise BackupError(f"{archive}: backup format {manifest.get('format')!r} is not one this citywatch reads")
    return manifest


def restore(archive: Path, data_dir: Path, force: bool = False) -> dict[str, Any]:
    """Put the backup's databases into `data_dir`; returns the manifest. Nothing is replaced unless
    every file matches the manifest and passes PRAGMA integrity_check."""
    manifest = read_manifest(archive)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with DataDirLock(data_dir, "citywatch restore"):  # DataDirBusy while a runner holds it
        found = sorted(p.name for p in data_dir.iterdir() if p.name != LOCK_NAME)
        if found and not force:
            raise BackupError(f"{data_dir} is not empty ({', '.join(found[:5])}{', ...' if len(found) > 5 else ''}):"
                              " restore into an empty directory, or add --force to replace its databases")
        staged: list[tuple[Path, Path]] = []
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for name, meta in manifest["files"].items():
                    member = tar.extractfile(name)
                    if member is None:
                        raise BackupError(f"{archive}: {name} is listed in the manifest but missing")
                    part = data_dir / f".{name}.restore"
                    part.unlink(missing_ok=True)
                    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
                    staged.append((part, data_dir / name))
                    with os.fdopen(fd, "wb") as f:
                        while chunk := member.read(1 << 20):
                            f.write(chunk)
                        f.flush()
                        os.fsync(f.fileno())
                    if _sha256(part) != meta["sha256"]:
                        raise BackupError(f"{archive}: {name} does not match its checksum (damaged backup)")
                    integrity_check(part)
            for part, target in staged:
                for suffix in SIDE_FILES:  # the old database's WAL must never be applied to this one
                    target.with_name(target.name + suffix).unlink(missing_ok=True)
                os.replace(part, target)
            _fsync_dir(data_dir)
        except tarfile.TarError as exc:
            raise BackupError(f"{archive}: cannot read the backup ({exc})") from None
        finally:
            for part, _ in staged:
                part.unlink(missing_ok=True)
    return manifest
