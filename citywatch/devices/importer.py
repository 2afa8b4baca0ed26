"""`devices import CSV`: installers register a street's devices from one spreadsheet.

The whole file is checked first and every problem is reported with its line number; only a
clean file is applied, in one SQLite transaction, so a bad row never leaves half a street
registered. The new passwords go to a secrets file (mode 0600, never overwritten) written
before the commit and removed if the commit fails, so no registered device lacks its password.

With `update` (`devices import --update`) a corrected sheet can be imported again: rows of registered
ids give those devices the row's attributes (an empty cell is the default, as for a new device; the
kind, the enabled status, the password and the registration time stay), new ids are added with
passwords, unchanged rows are left alone; still every row or none, each change audited.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from citywatch.devices.attributes import InstallRules, check_install
from citywatch.devices.credentials import device_broker_url, generate_password, hash_password
from citywatch.devices.registry import Registry
from citywatch.errors import DeviceError
from citywatch.ingest.topics import status_topic, telemetry_topic
from citywatch.model import KINDS, Device

COLUMNS = ("id", "kind", "district", "grid", "address", "lat", "lon", "interval_s", "zone_class", "tenants",
           "max_stay_min", "no_parking", "thresholds", "community", "city")
REQUIRED = ("id", "kind")
_TRUE = {"1", "true", "yes", "y"}
_FALSE = {"", "0", "false", "no", "n"}


class CsvImportError(DeviceError):
    """The CSV has problems; `errors` lists each as `line N: ...`. Nothing was written."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__(f"{len(errors)} problem(s), nothing imported:\n" + "\n".join(errors))


def parse_thresholds(items: list[str] | str) -> dict[str, float]:
    """`key=value` items (a CSV cell joins them with ';'); values must be finite numbers."""
    if isinstance(items, str):
        items = [i for i in items.split(";") if i.strip()]
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DeviceError(f"threshold {item!r}: expected key=value")
        out[key.strip()] = _number(f"threshold {key.strip()}", value)
    return out


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DeviceError(f"{name} {text.strip()!r}: not a number") from None
    if not math.isfinite(value):
        raise DeviceError(f"{name} {text.strip()!r}: must be finite")
    return value


def _integer(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DeviceError(f"{name} {text.strip()!r}: not a whole number") from None


def _flag(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value not in _TRUE | _FALSE:
        raise DeviceError(f"{name} {text.strip()!r}: expected true or false")
    return value in _TRUE


def _install(rules: Collection[str] | InstallRules) -> InstallRules:
    """The checks to apply: from the settings (InstallRules), or just the zone classes."""
    return rules if isinstance(rules, InstallRules) else InstallRules(rules)


def row_to_device(row: dict[str, str], zone_classes: Collection[str] | InstallRules, new: bool = True) -> Device:
    """One CSV row to a checked Device; empty cells take the defaults (`new`: the id is chosen now)."""
    cells = {k: (v or "").strip() for k, v in row.items() if k in COLUMNS}
    for name in REQUIRED:
        if not cells.get(name):
            raise DeviceError(f"{name}: missing")
    if cells["kind"] not in KINDS:
        raise DeviceError(f"kind {cells['kind']!r}: must be one of {', '.join(KINDS)}")
    attrs: dict[str, Any] = {k: cells[k] for k in ("district", "grid", "community", "city", "address") if cells.get(k)}
    for name in ("lat", "lon", "interval_s", "max_stay_min"):
        if cells.get(name):
            attrs[name] = _number(name, cells[name])
    if cells.get("tenants"):
        attrs["tenants"] = _integer("tenants", cells["tenants"])
    if cells.get("zone_class"):
        attrs["zone_class"] = cells["zone_class"]
    if cells.get("no_parking"):
        attrs["no_parking"] = _flag("no_parking", cells["no_parking"])
    if cells.get("thresholds"):
        attrs["thresholds"] = parse_thresholds(cells["thresholds"])
    device = Device(id=cells["id"], kind=cells["kind"], **attrs)
    check_install(device, _install(zone_classes), new=new)
    return device


def _lines(first: int, last: int) -> str:
    """Where a record is: a quoted cell may span lines."""
    return f"line {first}" if last <= first else f"line {first}-{last}"


def parse_csv(text: str, registered: Collection[str] | Mapping[str, str], zone_classes: Collection[str] | InstallRules,
              *, update: bool = False, on_row: Callable[[], None] | None = None) -> list[Device]:
    """Every row checked; raises CsvImportError listing all problems (duplicates included).
    `registered`: the ids in the registry (a mapping id -> kind checks that `update` keeps each kind);
    without `update` a registered id is a problem. `on_row()` after each record (a progress bar)."""
    install = _install(zone_classes)
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise CsvImportError([f"line 1: not a CSV header ({exc})"]) from None
    errors = [f"line 1: missing column {c!r}" for c in REQUIRED if c not in header]
    errors += [f"line 1: unknown column {c!r} (known: {', '.join(COLUMNS)})" for c in header if c not in COLUMNS]
    if errors:
        raise CsvImportError(errors)
    devices: list[Device] = []
    first_line: dict[str, int] = {}
    rows = iter(reader)
    while True:
        start = reader.line_num + 1
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a cell over the csv module's field limit: the rest cannot be read
            errors.append(f"{_lines(start, reader.line_num)}: {exc}; nothing after it was read")
            break
        line, where = reader.line_num, _lines(start, reader.line_num)
        if on_row is not None:
            on_row()
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        if None in row:
            errors.append(f"{where}: more cells than columns")
            continue
        known = update and (row.get("id") or "").strip() in registered
        try:
            device = row_to_device(row, install, new=not known)
        except DeviceError as exc:
            errors.append(f"{where}: {exc}")
            continue
        if device.id in first_line:
            errors.append(f"{where}: duplicate id {device.id} (first on line {first_line[device.id]})")
        elif device.id in registered and not update:
            errors.append(f"{where}: device {device.id} is already registered (--update changes registered "
                          "devices)")
        elif known and isinstance(registered, Mapping) and registered[device.id] != device.kind:
            errors.append(f"{where}: device {device.id} is registered as {registered[device.id]}, not "
                          f"{device.kind}: a kind cannot change (remove the device, then import it)")
        first_line.setdefault(device.id, line)
        devices.append(device)
    if errors:
        raise CsvImportError(errors)
    if not devices:
        raise CsvImportError(["no devices in the file"])
    return devices


def write_secrets(path: Path, issued: list[tuple[Device, str]], broker_url: str, prefix: str) -> None:
    """CSV of the new passwords for the installers' provisioning; mode 0600, refuses to overwrite."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DeviceError(f"{path} exists: give a new file (an old one may hold live passwords)") from None
    except OSError as exc:
        raise DeviceError(f"cannot create {path}: {exc.strerror}") from None
    broker_url = device_broker_url(broker_url)
    with os.fdopen(fd, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "kind", "username", "password", "broker_url", "telemetry_topic", "status_topic"])
        for d, password in issued:
            out.writerow([d.id, d.kind, d.id, password, broker_url, telemetry_topic(d.kind, d.id, prefix),
                          status_topic(d.kind, d.id, prefix)])


@dataclass
class ImportPlan:
    """What an import would do: devices to add, registered devices whose attributes change, rows
    that match the registry already."""

    added: list[Device] = field(default_factory=list)
    updated: list[Device] = field(default_factory=list)
    unchanged: list[Device] = field(default_factory=list)


def plan_import(registry: Registry, text: str, zone_classes: Collection[str] | InstallRules, update: bool = False,
                on_row: Callable[[], None] | None = None) -> ImportPlan:
    """Check the whole file against the registry; raises CsvImportError listing every problem."""
    current = {d.id: d for d in registry.all()}
    plan = ImportPlan()
    for device in parse_csv(text, {i: d.kind for i, d in current.items()}, zone_classes, update=update,
                            on_row=on_row):
        before = current.get(device.id)
        if before is None:
            plan.added.append(device)
        elif msgspec.structs.replace(device, enabled=before.enabled, created_at=before.created_at) == before:
            plan.unchanged.append(device)
        else:
            plan.updated.append(device)
    return plan


def apply_import(registry: Registry, plan: ImportPlan, secrets_out: Path | None, broker_url: str, prefix: str,
                 on_password: Callable[[], None] | None = None,
                 on_write: Callable[[], None] | None = None) -> list[tuple[Device, str]]:
    """Issue the new devices' passwords, write the secrets file, then add and update every row in one
    transaction (the secrets file is removed if that fails). Returns the new devices and passwords."""
    issued: list[tuple[Device, str]] = []
    for d in plan.added:
        issued.append((d, generate_password()))
    hashed: list[tuple[Device, str | None]] = []
    for d, p in issued:
        hashed.append((d, hash_password(p)))
        if on_password is not None:
            on_password()
    if secrets_out is not None and issued:
        write_secrets(secrets_out, issued, broker_url, prefix)
    try:
        added = registry.import_many(hashed, plan.updated, on_each=on_write)
    except BaseException:
        if secrets_out is not None and issued:
            secrets_out.unlink(missing_ok=True)
        raise
    return [(d, p) for d, (_, p) in zip(added, issued, strict=True)]


def import_csv(registry: Registry, text: str, zone_classes: Collection[str] | InstallRules, secrets_out: Path | None,
               broker_url: str, prefix: str, update: bool = False) -> list[tuple[Device, str]]:
    """Check, issue passwords, write the secrets file, then insert (and with `update`, update) all
    rows in one transaction."""
    plan = plan_import(registry, text, zone_classes, update)
    return apply_import(registry, plan, secrets_out, broker_url, prefix)
