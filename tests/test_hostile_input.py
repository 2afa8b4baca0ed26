"""Property-based tests: no input, however hostile, crashes the parser or slips through unvalidated."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citywatch.config import load_settings
from citywatch.errors import ConfigError, InvalidMessage
from citywatch.ingest.schemas import parse_telemetry
from citywatch.ingest.topics import parse_topic
from citywatch.model import KINDS, Device, Output
from citywatch.streams.pipeline import read_telemetry
from tests.helpers import T0, make_pipeline

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
fields = st.sampled_from(["ts", "seq", "battery", "rssi", "lel_pct", "laeq_db", "lamax_db", "depth_cm",
                          "occupied", "event", "user", "device_id", "kind", "co_ppm"])
payloads = st.dictionaries(fields | st.text(max_size=10), json_values, max_size=8)
DEVICES = [Device(id=f"{k}-1", kind=k) for k in KINDS]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), body=payloads)
def test_payload_parser_accepts_only_valid_readings(kind: str, body: dict[str, object]) -> None:
    raw = json.dumps(body, allow_nan=True).encode()
    try:
        reading = parse_telemetry(kind, f"{kind}-1", raw, T0)
    except InvalidMessage as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return
    # whatever got through is physically sane and finite
    assert math.isfinite(reading.ts) and reading.ts <= T0 + 300
    for value in reading.values.values():
        assert isinstance(value, (bool, str)) or math.isfinite(value)
    if reading.battery is not None:
        assert 0 <= reading.battery <= 100


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_pipeline(raw: bytes) -> None:
    p = make_pipeline(*DEVICES)
    out = Output()
    p.process("citywatch/gas/gas-1/telemetry", raw, T0, out)
    assert len(out.accepted) + len(out.dead_letters) == 1


@settings(max_examples=300, deadline=None)
@given(topic=st.text(max_size=300))
def test_topic_parser_never_crashes(topic: str) -> None:
    try:
        parsed = parse_topic(topic)
    except InvalidMessage as exc:
        assert exc.reason in ("bad_topic", "unknown_kind")
        return
    assert topic == f"citywatch/{parsed.kind}/{parsed.device_id}/{parsed.channel}"


def test_deeply_nested_and_odd_unicode_payloads() -> None:
    p = make_pipeline(*DEVICES)
    out = Output()
    deep = b'{"ts": %d, "lel_pct": 1, "x": ' % T0 + b"[" * 5000 + b"]" * 5000 + b"}"
    p.process("citywatch/gas/gas-1/telemetry", deep, T0, out)
    odd = json.dumps({"ts": T0, "event": "unlock_ok", "user": "\u202e\u0000\ud7ff😀"}).encode()
    p.process("citywatch/lock/lock-1/telemetry", odd, T0, out)
    p.process("citywatch/lock/lock-1/telemetry", b"\xff\xfe\x00garbage", T0, out)
    assert [d.reason for d in out.dead_letters] == ["too_deep", "malformed_json"]
    assert len(out.accepted) == 1
    assert out.accepted[-1][0].values["user"].endswith("😀")
    assert out.dead_letters[-1].reason == "malformed_json"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(st.sampled_from(["mqtt", "rules", "alerts", "data_dir", "webhooks", "bogus"]),
                           json_values, max_size=4))
def test_config_loader_gives_config_errors_not_crashes(tmp_path_factory: object, doc: dict[str, object]) -> None:
    path = Path(tmp_path_factory.mktemp("cfg")) / "config.yaml"  # type: ignore[attr-defined]
    path.write_text(yaml.safe_dump(doc))
    try:
        load_settings(path)
    except ConfigError as exc:
        assert "config" in str(exc)


cells = st.one_of(st.text(max_size=12), st.sampled_from(["gas", "water", "lock", "smoke", "", "30.5", "200",
                                                          "-91", "nan", "inf", "1e400", "yes", "2", "4a"]))
csv_rows = st.lists(st.fixed_dictionaries({
    "id": st.one_of(st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), st.text(max_size=6)),
    "kind": cells, "lat": cells, "lon": cells, "zone_class": cells, "tenants": cells, "no_parking": cells,
}), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=csv_rows)
def test_csv_import_applies_every_row_or_none(tmp_path_factory: object, rows: list[dict[str, str]]) -> None:
    import csv
    import io

    from citywatch.devices.importer import CsvImportError, import_csv
    from citywatch.devices.registry import Registry

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    registry = Registry(Path(tmp_path_factory.mktemp("reg")) / "registry.db")  # type: ignore[attr-defined]
    try:
        try:
            added = import_csv(registry, buffer.getvalue(), ["0", "1", "2", "3", "4a", "4b"], None,
                               "mqtt://127.0.0.1:1883", "citywatch")
        except CsvImportError as exc:
            assert registry.all() == []  # nothing applied
            # each names its line, but for the one file-level problem
            assert exc.errors and all(e.startswith("line ") or e == "no devices in the file" for e in exc.errors)
            return
        stored = registry.all()
        assert len(stored) == len(added) == len({d.id for d, _ in added})  # all of them, once each
        for device in stored:
            assert device.lat is None or (-90 <= device.lat <= 90 and math.isfinite(device.lat))
    finally:
        registry.close()


near_valid = st.fixed_dictionaries(
    {"ts": st.one_of(st.floats(T0 - 400, T0 + 400), st.floats(1e12, 2e12), st.integers(0, 2 * int(T0)),
                     st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "nope"]), st.floats()),
     "lel_pct": st.floats(-1, 101), "laeq_db": st.floats(0, 170), "depth_cm": st.floats(0, 10),
     "occupied": st.booleans(), "event": st.sampled_from(["tamper", "unlock_ok", "test", "bad"]),
     "obscuration_pct_per_m": st.floats(0, 5), "alarm": st.booleans()},
    optional={"seq": st.integers(-1, 2**64), "battery": st.floats(-1, 101),
              "device_id": st.sampled_from(["x", "gas-1"]), "kind": st.sampled_from(KINDS),
              "user": st.text(max_size=3), "lamax_db": st.floats(0, 200)},
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), body=near_valid | payloads)
def test_compiled_telemetry_path_reads_as_parse_telemetry(kind: str, body: dict[str, object]) -> None:
    """pipeline.read_telemetry (the hot path) gives the same Reading, or the same refusal, as parse_telemetry."""
    raw = json.dumps(body, allow_nan=True).encode()
    results = []
    for parse in (parse_telemetry, read_telemetry):
        try:
            results.append(parse(kind, f"{kind}-1", raw, T0, 300.0, 946684800.0))
        except InvalidMessage as exc:
            results.append((exc.reason, exc.detail, exc.field))
    assert results[0] == results[1]
