"""Small builders shared by tests: devices, payloads, a pipeline over an in-memory registry."""

from __future__ import annotations

import json
import sys
from typing import Any

from citywatch.config import Settings, load_settings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.detectors.record import DeviceRecord, RuleState
from citywatch.model import Device, Output
from citywatch.streams.pipeline import Pipeline

RECORD_FIELDS = ("ts", "seq", "seqmask", "count", "seen", "timeout", "online_at", "states")  # not `kind`: shared
T0 = 1_795_000_000.0  # 2026-11-18T11:06:40Z, 19:06 in Asia/Shanghai: daytime; T0 + 8 h is night


class DictDevices(dict[str, Device]):
    def get(self, device_id: str, default: Any = None) -> Device | None:  # type: ignore[override]
        return super().get(device_id, default)


def settings(**overrides: Any) -> Settings:
    return load_settings(None, overrides)


def make_pipeline(*devices: Device, started_at: float = T0, **overrides: Any) -> Pipeline:
    s = settings(**overrides)
    registry = DictDevices({d.id: d for d in devices})
    return Pipeline(s, registry, AlertEngine(s.alerts), started_at=started_at)


def stored(pipeline: Pipeline) -> dict[str, bytes]:
    """Every device record in its stored form, as a store would hand it to a restarted pipeline."""
    return {device_id: encoded for device_id in {*pipeline.records, *pipeline.stored}
            if (encoded := pipeline.encode(device_id)) is not None}


def rule_state(pipeline: Pipeline, device_id: str, rule: str) -> Any:
    """The state one rule keeps in a device's record."""
    record = pipeline.records[device_id]
    names = [r.name for r in pipeline.rules[record.kind]]
    return record.states[names.index(rule)]


def payload(ts: float, **fields: Any) -> bytes:
    return json.dumps({"ts": ts, **fields}).encode()


def feed(pipeline: Pipeline, device: Device, ts: float, **fields: Any) -> Output:
    """One telemetry message through the whole core; received at event time."""
    out = Output()
    topic = f"citywatch/{device.kind}/{device.id}/telemetry"
    pipeline.process(topic, payload(ts, **fields), ts, out)
    return out


def deep_size(value: object, seen: set[int] | None = None) -> int:
    """Bytes held by a state: containers, packed arrays and the scalars in them, each object once
    (keys are string literals shared by every device, and small ints are cached: not counted)."""
    seen = set() if seen is None else seen
    if id(value) in seen or (type(value) is int and -5 <= value <= 256):
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, RuleState | DeviceRecord):  # attributes (boxed numbers counted: an upper bound)
        names = value.FIELDS if isinstance(value, RuleState) else RECORD_FIELDS
        size += sum(deep_size(getattr(value, name), seen) for name in names)
    elif isinstance(value, dict):
        size += sum(deep_size(v, seen) for v in value.values())
    elif isinstance(value, (list, tuple)):
        size += sum(deep_size(v, seen) for v in value)
    return size
