"""One record per device (detectors/record.py): the stored form both runners write, and the
migration of stored format 1 (the dict-per-detector state of earlier releases).

The fixture in tests/data/state_v1 was written by the release before the record (make.py there):
for one device of each kind, its stored state after eight simulated days, its alert-engine keys,
the transitions of the next simulated day and the state at that day's end. Loaded into this
release, the state must go on exactly as it would have: the same transitions on the next day, and
at its end the same record as the old end state migrated.
"""

from __future__ import annotations

import json
from array import array
from pathlib import Path
from typing import Any

import msgspec
import pytest

from citywatch.detectors.lifecycle import AlertEngine
from citywatch.detectors.record import FORMAT, DeviceRecord, RecordCodec, RuleState, stored_seen
from citywatch.detectors.registry import build_rules
from citywatch.ingest.simulator import Simulator
from citywatch.model import KINDS, Device, KeyState, Output
from citywatch.streams.pipeline import Pipeline
from tests.helpers import T0, DictDevices, settings

DAY = 86400.0
V1 = Path(__file__).parent / "data" / "state_v1"


def plain(record: DeviceRecord, codec: RecordCodec) -> Any:
    return msgspec.msgpack.decode(codec.encode(record))


@pytest.mark.parametrize("kind", KINDS)
def test_a_state_stored_by_the_previous_release_goes_on_as_it_would_have(kind: str) -> None:
    fixture = json.loads((V1 / f"{kind}.json").read_text())
    device = msgspec.convert(fixture["device"], Device)
    s = settings()
    engine = AlertEngine(s.alerts)
    for rule, key_state in fixture["keys"].items():
        engine.restore_key((device.id, rule), msgspec.convert(key_state, KeyState))
    stored_v1 = (V1 / f"{kind}.state").read_bytes()
    pipeline = Pipeline(s, DictDevices({device.id: device}), engine, {device.id: stored_v1}, started_at=T0)
    out = Output()
    for topic, payload, ts in Simulator([device], seed=5, start=T0 + 8 * DAY, incident_rate=1.0,
                                        horizon_s=DAY).messages(DAY):
        pipeline.process(topic, payload, ts + 0.2, out)
        pipeline.tick(ts + 0.2, out)
    got = [[t.alert.rule, t.transition, t.alert.severity, round(t.at, 3), t.alert.value] for t in out.transitions]
    assert got == fixture["next_day"]
    codec = pipeline.codec
    expected_end = codec.decode((V1 / f"{kind}.next.state").read_bytes(), kind)
    assert plain(pipeline.records[device.id], codec) == plain(expected_end, codec)


@pytest.mark.parametrize("kind", KINDS)
def test_migration_keeps_every_stored_value(kind: str) -> None:
    """Every number of the old state is in the migrated record (none silently reset)."""
    old = msgspec.msgpack.decode((V1 / f"{kind}.state").read_bytes())
    codec = RecordCodec(build_rules(settings()))
    record = codec.decode(old, kind)
    stored = msgspec.msgpack.decode(codec.encode(record))
    assert stored[0] == FORMAT and stored[1] == kind

    def numbers(value: Any) -> list[float]:
        if isinstance(value, RuleState):
            return [n for name in value.FIELDS for n in numbers(getattr(value, name))]
        if isinstance(value, dict):
            return [n for v in value.values() for n in numbers(v)]
        if isinstance(value, list | array):
            return [n for v in value for n in numbers(v)]
        return [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []

    again = codec.decode(codec.encode(record), kind)  # number arrays are stored as bytes: read them back
    kept = sorted(numbers(stored[2:9]) + numbers(again.states))
    for key, value in old.items():
        for number in numbers(value):
            assert number in kept, f"{key}: {number} lost in migration"
    assert stored_seen(codec.encode(record)) == stored_seen(old) == old["seen"]


def test_a_record_round_trips_and_a_reregistered_device_starts_fresh() -> None:
    codec = RecordCodec(build_rules(settings()))
    old = msgspec.msgpack.decode((V1 / "water.state").read_bytes())
    record = codec.decode(old, "water")
    encoded = codec.encode(record)
    assert codec.encode(codec.decode(encoded, "water")) == encoded
    fresh = codec.decode(encoded, "gas")  # the id now names a gas detector
    assert fresh.kind == "gas" and fresh.count == 0 and fresh.seq == -1


def test_an_unknown_stored_format_is_refused_with_its_number() -> None:
    codec = RecordCodec(build_rules(settings()))
    newer = msgspec.msgpack.encode([3, "gas"] + [None] * 8)
    with pytest.raises(ValueError, match="format 3"):
        codec.decode(newer, "gas")
    device = Device(id="g1", kind="gas")
    s = settings()
    with pytest.raises(ValueError, match="format 3"):  # at start, not at the device's first message
        Pipeline(s, DictDevices({device.id: device}), AlertEngine(s.alerts), {device.id: newer})


def test_rules_of_a_kind_must_have_distinct_names() -> None:
    rules = build_rules(settings())
    with pytest.raises(ValueError, match="share a name"):
        RecordCodec({"gas": rules["gas"] + rules["gas"][:1]})


def test_a_rule_added_by_configuration_starts_fresh_and_the_others_keep_their_state() -> None:
    plain_settings = settings()
    with_generic = settings(rules={"learned": {"generic": {"fields": {"gas": "lel_pct"}}}})
    before = RecordCodec(build_rules(plain_settings))
    after = RecordCodec(build_rules(with_generic))
    old = msgspec.msgpack.decode((V1 / "gas.state").read_bytes())
    record = after.decode(before.encode(before.decode(old, "gas")), "gas")
    names = [rule.name for rule in after.rules["gas"]]
    assert "generic_anomaly" in names
    generic = record.states[names.index("generic_anomaly")]
    assert generic.detector.to_state() == type(generic)().detector.to_state()
    slow = record.states[names.index("gas_slow_rise")]
    assert max(slow.baseline.n) > 0  # the learned baseline came along


def test_stored_records_are_decoded_at_the_first_message_and_written_back_unchanged_before() -> None:
    """A restart reads only the headers (the offline timers); the rest waits for the device."""
    device = Device(id="g1", kind="gas", interval_s=60)
    s = settings()
    first = Pipeline(s, DictDevices({device.id: device}), AlertEngine(s.alerts), started_at=T0)
    out = Output()
    for i in range(3):
        first.process("citywatch/gas/g1/telemetry", b'{"ts": %d, "seq": %d, "lel_pct": 1}' % (T0 + 60 * i, i),
                      T0 + 60 * i, out)
    stored_form = first.encode(device.id)
    assert stored_form is not None
    restarted = Pipeline(s, DictDevices({device.id: device}), AlertEngine(s.alerts), {device.id: stored_form},
                         started_at=T0 + 130)
    assert restarted.records == {} and restarted.encode(device.id) == stored_form
    assert len(restarted.deadman) == 1  # armed from the stored header
    silent = Output()
    restarted.tick(T0 + 130 + 181, silent)  # silent past its timeout, counted from our own start
    assert [t.alert.rule for t in silent.transitions] == ["device_offline"]
    again = Output()
    restarted.process("citywatch/gas/g1/telemetry", b'{"ts": %d, "seq": 2, "lel_pct": 1}' % (T0 + 120), T0 + 400,
                      again)
    assert [d.reason for d in again.dead_letters] == ["duplicate"]  # the seq window came back with the record
    assert restarted.records[device.id].count == 3 and device.id not in restarted.stored
