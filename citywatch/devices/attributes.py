"""What installers may enter for a device, beyond the registry's own checks (devices add/update/import).

Free text (district, grid, community, city, address) travels into webhooks, dispatch systems, CSV exports, the
situation report and operators' terminals: one line of printable text, no control characters.
A device id may not be the collector's MQTT username or client id (the broker would have one
account with two passwords, or the device would take over the collector's session). Per-device
thresholds may not contradict each other or the configured levels they sit between.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

from citywatch.config import RuleSettingsBase, Settings
from citywatch.devices.credentials import DEFAULT_COLLECTOR, check_username
from citywatch.devices.registry import validate_installation
from citywatch.errors import DeviceError
from citywatch.kinds import KINDS, spec
from citywatch.kinds.noise import NoiseRules
from citywatch.model import Device
from citywatch.terminal import for_terminal, is_plain

FREE_TEXT = ("district", "grid", "community", "city", "address")
MAX_TEXT = 200  # characters


class InstallRules(NamedTuple):
    """What a new or changed device is checked against, from the settings."""

    zone_classes: Collection[str]
    reserved_ids: frozenset[str] = frozenset()
    rules: RuleSettingsBase | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> InstallRules:
        reserved = {settings.mqtt.username or DEFAULT_COLLECTOR, settings.mqtt.client_id}
        return cls(list(settings.rules.section(NoiseRules).limits), frozenset(reserved), settings.rules)


def check_free_text(device: Device) -> None:
    for name in FREE_TEXT:
        value: str = getattr(device, name)
        if not is_plain(value):
            raise DeviceError(f"{name} {for_terminal(value)!r}: one line of text, without newlines, tabs or "
                              "other control characters")
        if len(value) > MAX_TEXT:
            raise DeviceError(f"{name}: {len(value)} characters, at most {MAX_TEXT}")


def check_not_reserved(device_id: str, reserved: Collection[str]) -> None:
    if device_id in reserved:
        raise DeviceError(f"id {device_id}: is the collector's MQTT username or client id (mqtt.username, "
                          "mqtt.client_id); give the device another id")


def _levels(device: Device, rules: RuleSettingsBase) -> list[tuple[str, float, str, float]]:
    """(lower key, value, higher key, value) pairs that must rise, per-device value or configured one."""
    t = device.thresholds

    def value(key: str, default: float) -> float:
        return t.get(key, default)

    pairs: list[tuple[str, float, str, float]] = []
    if device.kind in KINDS:
        kind = spec(device.kind)
        declared = {th.key: th for th in kind.thresholds}
        section = rules.section(kind.settings) if kind.settings is not None else None
        for th in kind.thresholds:
            if th.below is not None and section is not None:
                pairs.append((th.key, getattr(section, th.setting), th.below,
                              getattr(section, declared[th.below].setting)))
    pairs.append(("battery.low_pct", rules.health.battery_low_pct, "rules.health.battery_clear_pct",
                  rules.health.battery_clear_pct))
    return [(lo, value(lo, lo_default), hi, value(hi, hi_default)) for lo, lo_default, hi, hi_default in pairs
            if lo in t or hi in t]


def check_threshold_order(device: Device, rules: RuleSettingsBase) -> None:
    for low_key, low, high_key, high in _levels(device, rules):
        if not low < high:
            raise DeviceError(f"threshold {low_key} ({low:g}) must be below {high_key} ({high:g})")


def check_install(device: Device, install: InstallRules, new: bool = True) -> None:
    """Every check for what an installer enters; DeviceError names the attribute. `new`: the id is
    being chosen now (an update keeps the id it has)."""
    validate_installation(device, install.zone_classes)
    check_free_text(device)
    if new:
        check_username(device.id)
        check_not_reserved(device.id, install.reserved_ids)
    if install.rules is not None:
        check_threshold_order(device, install.rules)
