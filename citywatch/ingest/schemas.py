"""Per-kind payload schemas and the decoder that turns bytes into a validated Reading.

msgspec validates types and physical ranges in C while decoding, which keeps the hot path
at a few microseconds per message. Every failure becomes an InvalidMessage with a reason code.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from citywatch.errors import DeadLetterReason, InvalidMessage
from citywatch.kinds import specs
from citywatch.kindspec import KindSpec, PayloadField
from citywatch.model import Reading

# The default of ingest.min_timestamp. Older readings are dead-lettered (bad_timestamp): InfluxDB's
# nanosecond timestamps start in 1677, and one reading stamped year 1 made it refuse a whole batch.
DEFAULT_MIN_TIMESTAMP = 946684800.0  # 2000-01-01T00:00:00Z

# Bounds are checked after decoding (parse_telemetry), against the configured floor and clock skew.
Timestamp = Annotated[
    Annotated[datetime, Meta(tz=True)] | float,
    Meta(description="event time: RFC 3339 with offset, or epoch seconds, or epoch milliseconds; not before "
                     "ingest.min_timestamp (default 2000-01-01T00:00:00Z) nor more than "
                     "ingest.max_future_skew_s (default 300 s) ahead of the collector's clock"),
]
Percent = Annotated[float, Meta(ge=0, le=100)]


class Payload(msgspec.Struct, kw_only=True):
    """Fields every kind shares. Unknown extra fields are ignored."""

    ts: Timestamp
    seq: Annotated[int, Meta(ge=0, le=2**63 - 1, description="increasing per device")] | None = None
    battery: Annotated[Percent, Meta(description="battery charge, %")] | None = None
    rssi: Annotated[float, Meta(ge=-200, le=20, description="signal strength, dBm")] | None = None
    device_id: Annotated[str, Meta(description="if present, must equal the topic's device id")] | None = None
    kind: Annotated[str, Meta(description="if present, must equal the topic's kind")] | None = None


def _annotated(field: PayloadField) -> Any:
    """A kind's payload field as the msgspec type that validates it while decoding."""
    bounds: dict[str, Any] = {"ge": field.ge, "le": field.le, "max_length": field.max_length}
    meta = Meta(description=field.description or None, **{k: v for k, v in bounds.items() if v is not None})
    return Annotated[field.type, meta]


def _payload_type(kind: KindSpec) -> type[Payload]:
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        (f.name, _annotated(f)) if f.required else (f.name, _annotated(f) | None, None) for f in kind.payload]
    made: type[Payload] = msgspec.defstruct(  # type: ignore[assignment]
        f"{kind.name.capitalize()}Payload", fields, bases=(Payload,), kw_only=True, module=__name__)
    return made


# Built from each kind's declaration (citywatch/kinds/<kind>.py).
PAYLOAD_TYPES: dict[str, type[Payload]] = {name: _payload_type(kind) for name, kind in specs().items()}
KIND_FIELDS: dict[str, tuple[str, ...]] = {name: kind.fields for name, kind in specs().items()}
# One decoder per kind; the compiled pipeline decodes with them too (pipeline.read_telemetry).
DECODERS: dict[str, msgspec.json.Decoder[Payload]] = {kind: msgspec.json.Decoder(t)
                                                     for kind, t in PAYLOAD_TYPES.items()}
_COMMON = {"ts", "seq", "battery", "rssi", "device_id", "kind"}


def _schema_error_reason(message: str) -> tuple[DeadLetterReason, str | None]:
    field = None
    if "`$." in message:
        field = message.rsplit("`$.", 1)[1].rstrip("`").split("[", 1)[0]
    elif "missing required field" in message:
        field = message.rsplit("`", 2)[-2]
    if "missing required field" in message:
        return "missing_field", field
    if "timezone" in message or "RFC3339" in message:
        return "bad_timestamp", field
    if ">=" in message or "<=" in message or "length" in message or "out of range" in message:
        return "out_of_range", field
    if "Expected `object`" in message and field is None:
        return "not_an_object", None
    if "Invalid enum value" in message:
        return "bad_value", field
    return "wrong_type", field


def epoch_seconds(ts: datetime | float) -> float:
    if isinstance(ts, datetime):
        return ts.timestamp()
    return ts / 1000.0 if ts > 1e11 else float(ts)


def decode_payload(kind: str, payload: bytes) -> Payload:
    """Decode and validate the JSON of one telemetry message (size is checked by the caller)."""
    try:
        return DECODERS[kind].decode(payload)
    except msgspec.ValidationError as exc:
        reason, field = _schema_error_reason(str(exc))
        raise InvalidMessage(reason, str(exc), field) from None
    except RecursionError:
        raise InvalidMessage("too_deep", "JSON nested too deeply") from None
    except msgspec.DecodeError as exc:
        if b"NaN" in payload or b"Infinity" in payload:
            raise InvalidMessage("not_finite", "NaN and Infinity are not allowed") from None
        raise InvalidMessage("malformed_json", str(exc)) from None


@lru_cache(maxsize=8)
def _utc_text(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_telemetry(kind: str, device_id: str, payload: bytes, received_at: float,
                    max_future_skew_s: float = 300.0, min_ts: float = DEFAULT_MIN_TIMESTAMP) -> Reading:
    """Bytes of a telemetry message to a validated Reading, or InvalidMessage. `min_ts` is the
    floor (ingest.min_timestamp, epoch s): an older `ts` is a dead letter `bad_timestamp`."""
    decoded = decode_payload(kind, payload)
    if decoded.device_id is not None and decoded.device_id != device_id:
        raise InvalidMessage("topic_mismatch", "payload device_id differs from the topic", "device_id")
    if decoded.kind is not None and decoded.kind != kind:
        raise InvalidMessage("topic_mismatch", "payload kind differs from the topic", "kind")
    ts = epoch_seconds(decoded.ts)
    if not math.isfinite(ts):
        raise InvalidMessage("not_finite", "ts is not finite", "ts")
    if ts < min_ts:
        raise InvalidMessage("bad_timestamp", f"ts {ts:.10g} (epoch s) is before {_utc_text(min_ts)}, "
                             "the earliest accepted (ingest.min_timestamp)", "ts")
    if ts > received_at + max_future_skew_s:
        raise InvalidMessage("future_timestamp",
                             f"ts is {ts - received_at:.0f} s ahead of the collector clock", "ts")
    values: dict[str, Any] = {}
    for name in KIND_FIELDS[kind]:
        value = getattr(decoded, name)
        if value is not None:
            values[name] = value
    return Reading(device_id, kind, ts, received_at, values, decoded.seq, decoded.battery, decoded.rssi)


def parse_status(payload: bytes) -> str:
    """`online`/`offline`, plain or as a JSON string or {"status": ...}."""
    text = payload.strip()
    if text.startswith((b"{", b'"')):
        try:
            value = msgspec.json.decode(text)
        except msgspec.DecodeError:
            raise InvalidMessage("bad_status", "status must be online or offline") from None
        found = value.get("status") if isinstance(value, dict) else value
        text = found.encode() if isinstance(found, str) else b""
    if text in (b"online", b"offline"):
        return text.decode()
    raise InvalidMessage("bad_status", "status must be online or offline")


def json_schema() -> dict[str, Any]:
    """The device contract as JSON Schema, one definition per kind."""
    _, components = msgspec.json.schema_components(list(PAYLOAD_TYPES.values()),
                                                   ref_template="#/$defs/{name}")
    for definition in components.values():  # the default floor, which the decoder checks after decoding
        for branch in definition["properties"]["ts"]["anyOf"]:
            if branch.get("type") == "number":
                branch["minimum"] = DEFAULT_MIN_TIMESTAMP
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "citywatch device telemetry",
        "description": "Publish to citywatch/<kind>/<device_id>/telemetry; status (online|offline, retained, "
                       "also the MQTT last will) to citywatch/<kind>/<device_id>/status.",
        "$defs": components,
        "properties": {k: {"$ref": f"#/$defs/{t.__name__}"} for k, t in PAYLOAD_TYPES.items()},
    }
