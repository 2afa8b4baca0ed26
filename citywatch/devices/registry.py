"""The device registry: SQLite under data_dir, written by the CLI, read live by the runner.

The runner keeps an in-memory copy (`RegistryCache`) and reloads it when another process
commits (SQLite's `PRAGMA data_version` changes), so registry edits apply without a restart.
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from citywatch.errors import DeviceError
from citywatch.ingest.topics import DEVICE_ID_PATTERN, valid_device_id
from citywatch.kinds import specs
from citywatch.model import KINDS, Device
from citywatch.sinks.database import open_database

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
# Attributes live in the JSON `attrs` column, so a new one needs no schema change: a row written
# before it existed reads with the default (e.g. community and city, added for the grid hierarchy).
_ATTRS = ("district", "grid", "community", "city", "address", "lat", "lon", "zone_class", "interval_s", "tenants",
          "max_stay_min", "no_parking", "thresholds")
_KNOWN = frozenset(_ATTRS)


def connect(path: Path, check: bool = True) -> sqlite3.Connection:
    """Open registry.db (password hashes: mode 0600, quick integrity check); StorageError names the
    file when it is corrupt or cannot be written."""
    return open_database(path, SCHEMA, check=check)


def registry_path(data_dir: Path) -> Path:
    return data_dir / "registry.db"


# Per-device overrides the rules read with `threshold(device, key, default)` (citywatch/detectors).
# Each kind declares its own (KindSpec.thresholds); battery.low_pct applies to every kind.
THRESHOLD_KEYS: frozenset[str] = frozenset(
    {"battery.low_pct"} | {t.key for kind in specs().values() for t in kind.thresholds})


def validate_thresholds(kind: str, thresholds: dict[str, Any]) -> None:
    """Known keys for this kind (or `battery.*`, which every kind has) with finite numeric values."""
    for key, value in thresholds.items():
        if key not in THRESHOLD_KEYS:
            raise DeviceError(f"threshold {key!r}: unknown; known: {', '.join(sorted(THRESHOLD_KEYS))}")
        if key.split(".", 1)[0] not in (kind, "battery"):
            raise DeviceError(f"threshold {key!r}: does not apply to a {kind} device")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise DeviceError(f"threshold {key}={value!r}: must be a finite number")


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
    if device.max_stay_min is not None and not (math.isfinite(device.max_stay_min) and device.max_stay_min > 0):
        raise DeviceError(f"max_stay_min {device.max_stay_min}: must be > 0")
    validate_thresholds(device.kind, device.thresholds)


# Attributes that mean something for one kind only; an installer setting one on another kind made a mistake.
KIND_ATTRS: dict[str, str] = {attr: name for name, kind in specs().items() for attr in kind.device_attributes}


def validate_installation(device: Device, zone_classes: Collection[str]) -> None:
    """The stricter checks for what installers enter: the base checks, kind-specific attributes
    only on their kind, and a zone class the noise rules know (`rules.noise.limits`)."""
    validate_device(device)
    for name, kind in KIND_ATTRS.items():
        if device.kind != kind and getattr(device, name) not in (None, False, ""):
            raise DeviceError(f"{name}: applies to {kind} devices only")
    if device.zone_class and device.zone_class not in zone_classes:
        raise DeviceError(f"zone_class {device.zone_class!r}: must be one of {', '.join(zone_classes)}")


_SHARED = frozenset({"district", "grid", "community", "city", "zone_class", "interval_s", "max_stay_min",
                     "tenants"})  # few values, many devices
_NO_THRESHOLDS: dict[str, float] = {}  # shared by every device without overrides; never mutated
_NUMBERS: dict[tuple[type, float], float] = {}  # one object per distinct interval, stay, tenants count


def _shared(value: Any) -> Any:
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and len(_NUMBERS) < 10_000:
        return _NUMBERS.setdefault((type(value), value), value)  # 2 and 2.0 stay apart
    return value


def _row_to_device(row: tuple[Any, ...]) -> Device:
    """Attributes this version does not know (written by a newer one sharing the file) are ignored.
    Places and zones are interned: a million devices share a few thousand of them (RegistryCache)."""
    device_id, kind, attrs, enabled, created_at = row
    known: dict[str, Any] = {k: _shared(v) if k in _SHARED else v for k, v in json.loads(attrs).items() if k in _KNOWN}
    known.setdefault("thresholds", _NO_THRESHOLDS)
    return Device(id=device_id, kind=sys.intern(kind), enabled=bool(enabled), created_at=created_at, **known)


def _attrs(device: Device) -> str:
    return json.dumps({name: getattr(device, name) for name in _ATTRS})


class Credential(NamedTuple):
    """What the broker's password and ACL files need about one device."""

    id: str
    kind: str
    password_hash: str | None
    enabled: bool


# (connection, verb: add|update|enable|disable|rotate|remove, device id, before, after), called inside the
# change's transaction: the audit trail (citywatch/people/audit.py) records it atomically with the change.
ChangeHook = Callable[[sqlite3.Connection, str, str, dict[str, Any] | None, dict[str, Any] | None], None]


def _public(device: Device | None) -> dict[str, Any] | None:
    """A device as the audit records it (never its password hash)."""
    return None if device is None else msgspec.to_builtins(device)


class Registry:
    """CRUD on the registry file. One instance per process; cheap to open. `on_change`: see ChangeHook."""

    def __init__(self, path: Path, on_change: ChangeHook | None = None) -> None:
        self.path = path
        self.conn = connect(path)
        self.on_change = on_change

    def _changed(self, verb: str, device_id: str, before: Device | None, after: Device | None) -> None:
        if self.on_change is not None:
            self.on_change(self.conn, verb, device_id, _public(before), _public(after))

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it commits or none of it does."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def add(self, device: Device, password_hash: str | None = None) -> Device:
        return self.add_many([(device, password_hash)])[0]

    def add_many(self, items: list[tuple[Device, str | None]]) -> list[Device]:
        """Insert all devices in one transaction; a duplicate id rolls back every row."""
        return self.import_many(items, [])

    def import_many(self, added: list[tuple[Device, str | None]], updated: list[Device],
                    on_each: Callable[[], None] | None = None) -> list[Device]:
        """Insert `added` and give the registered devices in `updated` those attributes (their kind,
        status, password and registration time stay), all in one transaction: every row or none
        (`devices import [--update]`). `on_each()` after each row (a progress bar). Returns `added`
        as stored."""
        for device, _ in added:
            validate_device(device)
        for device in updated:
            validate_device(device)
        now = time.time()
        with self._transaction() as conn:
            for device, password_hash in added:
                try:
                    conn.execute(
                        "INSERT INTO devices (id, kind, attrs, enabled, password_hash, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (device.id, device.kind, _attrs(device), int(device.enabled), password_hash, now, now),
                    )
                except sqlite3.IntegrityError:
                    raise DeviceError(f"device {device.id} already exists") from None
                self._changed("add", device.id, None, msgspec.structs.replace(device, created_at=now))
                if on_each is not None:
                    on_each()
            for device in updated:
                before = self.require(device.id)
                if before.kind != device.kind:
                    raise DeviceError(f"device {device.id} is a {before.kind} device, not {device.kind}")
                after = msgspec.structs.replace(device, enabled=before.enabled, created_at=before.created_at)
                conn.execute("UPDATE devices SET attrs = ?, updated_at = ? WHERE id = ?",
                             (_attrs(after), now, device.id))
                self._changed("update", device.id, before, after)
                if on_each is not None:
                    on_each()
        return [msgspec.structs.replace(device, created_at=now) for device, _ in added]

    def get(self, device_id: str) -> Device | None:
        row = self.conn.execute(
            "SELECT id, kind, attrs, enabled, created_at FROM devices WHERE id = ?", (device_id,)
        ).fetchone()
        return _row_to_device(row) if row else None

    def require(self, device_id: str) -> Device:
        device = self.get(device_id)
        if device is None:
            raise DeviceError(f"no device {device_id}")
        return device

    def all(self) -> list[Device]:
        rows = self.conn.execute("SELECT id, kind, attrs, enabled, created_at FROM devices ORDER BY id")
        return [_row_to_device(row) for row in rows]

    def find(self, kind: str | None = None, district: str | None = None, grid: str | None = None,
             enabled: bool | None = None, community: str | None = None, city: str | None = None) -> list[Device]:
        """Devices matching every filter given (None matches all)."""
        return [d for d in self.all()
                if (kind is None or d.kind == kind) and (district is None or d.district == district)
                and (grid is None or d.grid == grid) and (enabled is None or d.enabled == enabled)
                and (community is None or d.community == community) and (city is None or d.city == city)]

    def update(self, device_id: str, changes: dict[str, Any]) -> Device:
        """Change attributes (not id, kind or status); validated as a whole before writing."""
        unknown = set(changes) - set(_ATTRS)
        if unknown:
            raise DeviceError(f"cannot update {', '.join(sorted(unknown))}")
        with self._transaction() as conn:
            before = self.require(device_id)
            device = msgspec.structs.replace(before, **changes)
            validate_device(device)
            conn.execute("UPDATE devices SET attrs = ?, updated_at = ? WHERE id = ?",
                         (_attrs(device), time.time(), device_id))
            self._changed("update", device_id, before, device)
        return device

    def _set(self, device_id: str, column: str, value: Any, verb: str) -> None:
        with self._transaction() as conn:
            before = self.get(device_id)
            cur = conn.execute(f"UPDATE devices SET {column} = ?, updated_at = ? WHERE id = ?",
                               (value, time.time(), device_id))
            if cur.rowcount == 0:
                raise DeviceError(f"no device {device_id}")
            self._changed(verb, device_id, before, self.get(device_id))

    def set_enabled(self, device_id: str, enabled: bool) -> None:
        self._set(device_id, "enabled", int(enabled), "enable" if enabled else "disable")

    def set_password_hash(self, device_id: str, password_hash: str) -> None:
        self._set(device_id, "password_hash", password_hash, "rotate")

    def remove(self, device_id: str) -> None:
        with self._transaction() as conn:
            before = self.get(device_id)
            if conn.execute("DELETE FROM devices WHERE id = ?", (device_id,)).rowcount == 0:
                raise DeviceError(f"no device {device_id}")
            self._changed("remove", device_id, before, None)

    def has_password(self, device_id: str) -> bool:
        row = self.conn.execute("SELECT password_hash FROM devices WHERE id = ?", (device_id,)).fetchone()
        return bool(row and row[0])

    def credentials(self) -> list[Credential]:
        rows = self.conn.execute("SELECT id, kind, password_hash, enabled FROM devices ORDER BY id")
        return [Credential(i, k, h, bool(e)) for i, k, h, e in rows]

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
        """A miss re-checks the registry (one cheap PRAGMA, only on the bad-input path), so a
        device registered a moment ago is processed from its very next message."""
        device = self._devices.get(device_id)
        if device is None and self.refresh():
            device = self._devices.get(device_id)
        return device

    def __len__(self) -> int:
        return len(self._devices)

    def snapshot(self) -> list[Device]:
        """Every device as of the last refresh (a list copy: the console's map reads it off the loop)."""
        return list(self._devices.values())
