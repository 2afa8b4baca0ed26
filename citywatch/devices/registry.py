"""The device registry: SQLite under data_dir, written by the CLI, read live by the runner.

The runner keeps an in-memory copy (`RegistryCache`) and reloads it when another process
commits (SQLite's `PRAGMA data_version` changes), so registry edits apply without a restart.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec

from citywatch.errors import DeviceError
from citywatch.ingest.topics import DEVICE_ID_PATTERN, valid_device_id
from citywatch.model import KINDS, Device

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    attrs TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    password_hash TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""
_ATTRS = ("district", "grid", "address", "lat", "lon", "zone_class", "interval_s", "tenants",
          "max_stay_min", "no_parking", "thresholds")


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


def registry_path(data_dir: Path) -> Path:
    return data_dir / "registry.db"


def validate_device(device: Device) -> None:
    """Raise DeviceError naming the bad attribute."""
    if not valid_device_id(device.id):
        raise DeviceError(f"id {device.id!r}: must match {DEVICE_ID_PATTERN}")
    if device.kind not in KINDS:
        raise DeviceError(f"kind {device.kind!r}: must be one of {', '.join(KINDS)}")
    if (device.lat is None) != (device.lon is None):
        raise DeviceError("lat and lon: give both or neither")
    if device.lat is not None and not (math.isfinite(device.lat) and -90 <= device.lat <= 90):
        raise DeviceError(f"lat {device.lat}: must be within -90..90")
    if device.lon is not None and not (math.isfinite(device.lon) and -180 <= device.lon <= 180):
        raise DeviceError(f"lon {device.lon}: must be within -180..180")
    if not (math.isfinite(device.interval_s) and 1 <= device.interval_s <= 7 * 86400):
        raise DeviceError(f"interval_s {device.interval_s}: must be within 1..604800 seconds")
    if device.tenants is not None and device.tenants < 0:
        raise DeviceError(f"tenants {device.tenants}: must be >= 0")
    if device.max_stay_min is not None and device.max_stay_min <= 0:
        raise DeviceError(f"max_stay_min {device.max_stay_min}: must be > 0")


def _row_to_device(row: tuple[Any, ...]) -> Device:
    device_id, kind, attrs, enabled, created_at = row
    return Device(id=device_id, kind=kind, enabled=bool(enabled), created_at=created_at, **json.loads(attrs))


def _attrs(device: Device) -> str:
    return json.dumps({name: getattr(device, name) for name in _ATTRS})


class Registry:
    """CRUD on the registry file. One instance per process; cheap to open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = connect(path)

    def close(self) -> None:
        self.conn.close()

    def add(self, device: Device, password_hash: str | None = None) -> Device:
        validate_device(device)
        now = time.time()
        try:
            self.conn.execute(
                "INSERT INTO devices (id, kind, attrs, enabled, password_hash, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (device.id, device.kind, _attrs(device), int(device.enabled), password_hash, now, now),
            )
        except sqlite3.IntegrityError:
            raise DeviceError(f"device {device.id} already exists") from None
        return msgspec.structs.replace(device, created_at=now)

    def get(self, device_id: str) -> Device | None:
        row = self.conn.execute(
            "SELECT id, kind, attrs, enabled, created_at FROM devices WHERE id = ?", (device_id,)
        ).fetchone()
        return _row_to_device(row) if row else None

    def all(self) -> list[Device]:
        rows = self.conn.execute("SELECT id, kind, attrs, enabled, created_at FROM devices ORDER BY id")
        return [_row_to_device(row) for row in rows]

    def set_enabled(self, device_id: str, enabled: bool) -> None:
        cur = self.conn.execute("UPDATE devices SET enabled = ?, updated_at = ? WHERE id = ?",
                                (int(enabled), time.time(), device_id))
        if cur.rowcount == 0:
            raise DeviceError(f"no device {device_id}")

    def data_version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])


class RegistryCache:
    """Read-only, in-memory view for the hot path; `refresh()` reloads after outside commits."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._devices: dict[str, Device] = {}
        self._version = -1
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> bool:
        version = self.registry.data_version()
        if not force and version == self._version:
            return False
        self._version = version
        self._devices = {d.id: d for d in self.registry.all()}
        return True

    def get(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def __len__(self) -> int:
        return len(self._devices)
