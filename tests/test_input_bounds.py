"""Timestamps have a floor: a reading stamped before ingest.min_timestamp (default 2000-01-01Z) is
dead-lettered `bad_timestamp`, so it can never reach InfluxDB, whose timestamps start in 1677, nor
make the batch it travels in be refused whole. Topic prefixes of several levels work."""

from __future__ import annotations

import pytest

from citywatch.config import load_settings
from citywatch.errors import InvalidMessage
from citywatch.ingest.schemas import DEFAULT_MIN_TIMESTAMP, json_schema, parse_telemetry
from citywatch.model import Device, Output
from tests.helpers import T0, make_pipeline

GAS = Device(id="g1", kind="gas")
TOPIC = "citywatch/gas/g1/telemetry"
FLOOR = 946684800.0  # 2000-01-01T00:00:00Z

BEFORE_THE_FLOOR = [
    b'"0001-01-01T00:00:00Z"',  # year 1: what overflowed InfluxDB's nanosecond timestamps
    b'"0001-01-01T00:00:00+08:00"',
    b'"1677-09-21T00:12:43Z"',
    b'"1999-12-31T23:59:59Z"',
    b"0",  # epoch 0
    b"1",
    b"946684799",  # a second before the floor, epoch seconds
    b"946684799999",  # ... and in epoch milliseconds
    b"-1",
    b"-62135596800",
    b"-1e300",
]


@pytest.mark.parametrize("ts", BEFORE_THE_FLOOR)
def test_a_reading_stamped_before_the_floor_is_dead_lettered_bad_timestamp(ts: bytes) -> None:
    p = make_pipeline(GAS)
    out = Output()
    p.process(TOPIC, b'{"ts": %s, "lel_pct": 60, "seq": 1}' % ts, T0, out)
    assert out.accepted == [] and out.transitions == []
    assert [d.reason for d in out.dead_letters] == ["bad_timestamp"]
    assert "2000-01-01T00:00:00Z" in out.dead_letters[0].detail
    assert p.counters["dead_letter.bad_timestamp"] == 1


def test_the_floor_itself_and_later_are_accepted() -> None:
    p = make_pipeline(GAS)
    out = Output()
    for seq, ts in enumerate((b"946684800", b'"2000-01-01T08:00:00+08:00"', b"946684800000", b"%d" % T0)):
        p.process(TOPIC, b'{"ts": %s, "lel_pct": 1, "seq": %d}' % (ts, seq), T0, out)
    assert out.dead_letters == []
    assert [r.ts for r, _ in out.accepted] == [FLOOR, FLOOR, FLOOR, T0]


def test_the_floor_is_configurable() -> None:
    s = load_settings(None, {"ingest": {"min_timestamp": "2020-01-01T00:00:00+00:00"}})
    floor = s.ingest.min_timestamp.timestamp()
    assert floor == 1577836800.0 and DEFAULT_MIN_TIMESTAMP == FLOOR
    with pytest.raises(InvalidMessage) as caught:
        parse_telemetry("gas", "g1", b'{"ts": 1577836799, "lel_pct": 1}', T0, min_ts=floor)
    assert caught.value.reason == "bad_timestamp" and "2020-01-01T00:00:00Z" in caught.value.detail
    assert parse_telemetry("gas", "g1", b'{"ts": 1577836800, "lel_pct": 1}', T0, min_ts=floor).ts == floor


def test_the_pipeline_uses_the_configured_floor() -> None:
    p = make_pipeline(GAS, ingest={"min_timestamp": "2020-01-01T00:00:00Z"})
    out = Output()
    p.process(TOPIC, b'{"ts": 1577836799, "lel_pct": 1}', T0, out)
    assert [d.reason for d in out.dead_letters] == ["bad_timestamp"]


@pytest.mark.parametrize("value", ["2000-01-01T00:00:00", "soon", "1600-01-01T00:00:00Z", "2999-01-01T00:00:00Z"])
def test_a_floor_without_offset_or_before_influxdb_time_is_refused(value: str) -> None:
    from citywatch.errors import ConfigError

    with pytest.raises(ConfigError, match=r"ingest\.min_timestamp"):
        load_settings(None, {"ingest": {"min_timestamp": value}})


def test_the_json_schema_states_the_floor() -> None:
    schema = json_schema()
    ts = schema["$defs"]["GasPayload"]["properties"]["ts"]
    numeric = [branch for branch in ts["anyOf"] if branch.get("type") == "number"]
    assert numeric and numeric[0]["minimum"] == FLOOR
    assert "2000-01-01T00:00:00Z" in ts["description"]


def test_a_topic_prefix_of_several_levels_is_parsed() -> None:
    p = make_pipeline(GAS, mqtt={"topic_prefix": "jx/city"})
    out = Output()
    p.process("jx/city/gas/g1/telemetry", b'{"ts": %d, "lel_pct": 1}' % T0, T0, out)
    p.process("citywatch/gas/g1/telemetry", b'{"ts": %d, "lel_pct": 1}' % T0, T0, out)
    p.process("x/jx/city/gas/g1/telemetry", b'{"ts": %d, "lel_pct": 1}' % T0, T0, out)
    assert len(out.accepted) == 1
    assert [d.reason for d in out.dead_letters] == ["bad_topic", "bad_topic"]
