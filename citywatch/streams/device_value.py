"""One stored value per device, the same bytes in both runners: the device's record in its stored
form (detectors/record.py) and the alert engine's state for each of its rules that has any
(`KeyState`: hold streak, clear streak, flap history). Written whole, so a device's streaks are
stored with its record: in the same SQLite transaction (embedded runner, table `device_state`) or
the same Table write (Faust runner, the `devices` Table).

Encoding (msgpack): a map `{"state": <the record's stored form>, "alerts": {rule: KeyState}}`,
`encode_value` and `decode_value` here. The Faust runner also keeps the open alert in
`KeyState.alert` (its Table is its only state); the embedded runner leaves it out (None): its
alerts live in the store's `alerts` table. A decoder ignores keys it does not know and defaults
missing ones, so a key added later reads older values; the record inside carries its own format.
Older embedded stores (schema version < 4: streaks in a table `alert_keys`) are migrated by
sinks/store.py when opened.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from citywatch.model import KeyState

if TYPE_CHECKING:  # the store reads values without loading the pipeline
    from citywatch.detectors.lifecycle import AlertEngine
    from citywatch.streams.pipeline import Pipeline


class DeviceValue(msgspec.Struct, kw_only=True):
    """A device's stored value: its record (bytes; a dict in record format 1, as early Faust Tables
    held it; empty when it has none) and the engine's state per rule."""

    state: bytes | dict[str, Any] = b""
    alerts: dict[str, KeyState] = {}


encode_value = msgspec.msgpack.Encoder().encode
decode_value = msgspec.msgpack.Decoder(DeviceValue).decode


class DeviceValues:
    """Which rules of each device hold engine state, so a device's value is always written whole.
    `keep_alert`: store the open alert too (Faust) or only streaks and flap history (embedded)."""

    def __init__(self, keep_alert: bool) -> None:
        self.keep_alert = keep_alert
        self.rules_of: dict[str, set[str]] = {}

    def load(self, values: Iterable[tuple[str, bytes]], engine: AlertEngine) -> dict[str, Any]:
        """Put the stored engine state into `engine`; returns each device's record in stored form
        (for the Pipeline, which decodes it at the device's first message)."""
        records: dict[str, Any] = {}
        for device_id, raw in values:
            value = decode_value(raw)
            if value.state:
                records[device_id] = value.state
            for rule, key_state in value.alerts.items():
                engine.restore_key((device_id, rule), key_state)
            if value.alerts:
                self.rules_of[device_id] = set(value.alerts)
        return records

    def touched(self, engine: AlertEngine) -> set[str]:
        """Devices whose engine state changed since the last call (the engine tracks keys)."""
        changed: set[str] = set()
        for device_id, rule in engine.take_touched():
            self.rules_of.setdefault(device_id, set()).add(rule)
            changed.add(device_id)
        return changed

    def encode(self, device_id: str, pipeline: Pipeline) -> bytes | None:
        """The device's value as it stands (None: nothing to keep, its stored value goes)."""
        if device_id not in self.rules_of:  # most devices: no engine state
            state = pipeline.encode(device_id)
            return None if state is None else encode_value(DeviceValue(state=state))
        engine = pipeline.alerts
        alerts: dict[str, KeyState] = {}
        for rule in self.rules_of.get(device_id, ()):
            key_state = engine.export_key((device_id, rule))
            if key_state is None:
                continue
            if not self.keep_alert:
                if key_state.pending is None and key_state.clearing is None and not key_state.cycles:
                    continue  # only the alert: stored in its own table
                key_state.alert = None  # export_key built it: ours to change
            alerts[rule] = key_state
        if alerts:
            self.rules_of[device_id] = set(alerts)
        else:
            self.rules_of.pop(device_id, None)
        state = pipeline.encode(device_id)
        if state is None and not alerts:
            return None
        return encode_value(DeviceValue(state=state or b"", alerts=alerts))
