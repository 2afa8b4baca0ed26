"""Bad input of every kind becomes a dead letter with a clear reason; good input keeps flowing."""

from __future__ import annotations

import json

import pytest

from citywatch.detectors.base import QUIET, Verdict
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.detectors.registry import build_rules
from citywatch.ingest.schemas import json_schema, parse_status
from citywatch.model import Device, Output
from citywatch.streams.pipeline import Pipeline
from tests.helpers import T0, make_pipeline, rule_state

GAS = Device(id="g1", kind="gas")
LOCK = Device(id="l1", kind="lock")
OFF = Device(id="g-off", kind="gas", enabled=False)
TOPIC = "citywatch/gas/g1/telemetry"

BAD = [
    (TOPIC, b"{not json", "malformed_json"),
    (TOPIC, b"", "malformed_json"),
    (TOPIC, b"[1, 2]", "not_an_object"),
    (TOPIC, b'"text"', "not_an_object"),
    (TOPIC, b'{"ts": %d}' % T0, "missing_field"),
    (TOPIC, b'{"lel_pct": 3}', "missing_field"),
    (TOPIC, b'{"ts": %d, "lel_pct": "3"}' % T0, "wrong_type"),
    (TOPIC, b'{"ts": %d, "lel_pct": NaN}' % T0, "not_finite"),
    (TOPIC, b'{"ts": %d, "lel_pct": Infinity}' % T0, "not_finite"),
    (TOPIC, b'{"ts": %d, "lel_pct": 1e999}' % T0, "out_of_range"),
    (TOPIC, b'{"ts": %d, "lel_pct": 150}' % T0, "out_of_range"),
    (TOPIC, b'{"ts": %d, "lel_pct": -1}' % T0, "out_of_range"),
    (TOPIC, b'{"ts": %d, "lel_pct": 3, "battery": 140}' % T0, "out_of_range"),
    (TOPIC, b'{"ts": %d, "lel_pct": 3, "pad": "%s"}' % (T0, b"x" * 17000), "payload_too_large"),
    ("citywatch/radar/s1/telemetry", b'{"ts": %d}' % T0, "unknown_kind"),
    ("citywatch/gas/g1", b'{"ts": %d, "lel_pct": 3}' % T0, "bad_topic"),
    ("citywatch/gas/bad id!/telemetry", b'{"ts": %d, "lel_pct": 3}' % T0, "bad_topic"),
    (TOPIC, b'{"ts": %d, "lel_pct": 3, "device_id": "g2"}' % T0, "topic_mismatch"),
    (TOPIC, b'{"ts": %d, "lel_pct": 3, "kind": "water"}' % T0, "topic_mismatch"),
    (TOPIC, b'{"ts": %d, "lel_pct": 3}' % (T0 + 3600), "future_timestamp"),
    (TOPIC, b'{"ts": "2026-11-18T11:06:40", "lel_pct": 3}', "bad_timestamp"),
    ("citywatch/gas/ghost/telemetry", b'{"ts": %d, "lel_pct": 3}' % T0, "unknown_device"),
    ("citywatch/gas/g-off/telemetry", b'{"ts": %d, "lel_pct": 3}' % T0, "device_disabled"),
    ("citywatch/water/g1/telemetry", b'{"ts": %d, "depth_cm": 3}' % T0, "kind_mismatch"),
    ("citywatch/lock/l1/telemetry", b'{"ts": %d, "event": "explode"}' % T0, "bad_value"),
    ("citywatch/lock/l1/telemetry", b'{"ts": %d, "event": "unlock_ok", "user": 5}' % T0, "wrong_type"),
    ("citywatch/gas/g1/status", b"maybe", "bad_status"),
]


@pytest.mark.parametrize("topic,payload,reason", BAD, ids=[f"{r}-{i}" for i, (_, _, r) in enumerate(BAD)])
def test_bad_message_is_dead_lettered_with_reason(topic: str, payload: bytes, reason: str) -> None:
    p = make_pipeline(GAS, LOCK, OFF)
    out = Output()
    p.process(topic, payload, T0, out)
    assert [d.reason for d in out.dead_letters] == [reason]
    assert out.accepted == [] and out.transitions == []
    dead = out.dead_letters[0]
    assert dead.topic == topic[:512] and dead.size == len(payload) and len(dead.payload) <= 2048
    assert p.counters["dead_letters"] == 1 and p.counters[f"dead_letter.{reason}"] == 1


def test_bad_messages_do_not_disturb_good_ones() -> None:
    p = make_pipeline(GAS, LOCK, OFF)
    out = Output()
    for i, (topic, payload, _) in enumerate(BAD):
        p.process(TOPIC, b'{"ts": %d, "lel_pct": 1, "seq": %d}' % (T0 + i, i), T0 + i, out)
        p.process(topic, payload, T0 + i, out)
    assert len(out.accepted) == len(BAD)
    assert len(out.dead_letters) == len(BAD)


def test_timestamps_in_three_forms() -> None:
    p = make_pipeline(GAS)
    out = Output()
    p.process(TOPIC, b'{"ts": "2026-11-18T19:06:40+08:00", "lel_pct": 1}', T0, out)
    p.process(TOPIC, b'{"ts": %d, "lel_pct": 1}' % (T0 + 1), T0, out)
    p.process(TOPIC, b'{"ts": %d, "lel_pct": 1}' % ((T0 + 2) * 1000), T0, out)
    assert [r.ts for r, _ in out.accepted] == [T0, T0 + 1, T0 + 2]


def test_seq_window_tells_late_messages_from_repeats_and_accepts_a_counter_reset() -> None:
    p = make_pipeline(GAS)
    out = Output()

    def send(seq: int, ts: float, received: float = T0) -> None:
        p.process(TOPIC, b'{"ts": %d, "lel_pct": 1, "seq": %d}' % (ts, seq), received, out)

    send(200, T0)
    send(200, T0)  # a redelivery
    send(190, T0 - 600)  # delivered late, first time: kept
    send(190, T0 - 600)  # ... and again: a repeat
    send(100, T0 - 6000)  # further back than the window: cannot be told from a repeat
    send(0, T0 + 60, T0 + 60)  # the device rebooted: seq restarts, time moves on
    send(1, T0 + 120, T0 + 120)
    assert [d.reason for d in out.dead_letters] == ["duplicate", "duplicate", "out_of_order"]
    assert [r.seq for r, _ in out.accepted] == [200, 190, 0, 1]
    assert p.counters["late"] == 1


def test_a_late_reading_can_open_an_alarm_but_never_clear_one_nor_teach_the_learned_series() -> None:
    p = make_pipeline(GAS)
    out = Output()
    p.process(TOPIC, b'{"ts": %d, "lel_pct": 1}' % T0, T0, out)
    jump = rule_state(p, "g1", "sensor_jump")
    jump_state = jump.dump()
    p.process(TOPIC, b'{"ts": %d, "lel_pct": 60}' % (T0 - 600), T0, out)
    assert len(out.accepted) == 2 and p.counters["late"] == 1
    assert [(t.alert.rule, t.transition, t.alert.severity) for t in out.transitions] == [
        ("gas_level", "opened", "critical")]  # time cannot blind a threshold rule
    assert jump.dump() == jump_state and p.records["g1"].ts == T0  # in-order series untouched
    late_clear = Output()
    p.process(TOPIC, b'{"ts": %d, "lel_pct": 0}' % (T0 - 300), T0, late_clear)
    assert late_clear.transitions == [] and p.alerts.is_open("g1", "gas_level")
    in_order = Output()
    p.process(TOPIC, b'{"ts": %d, "lel_pct": 0}' % (T0 + 60), T0 + 60, in_order)
    assert [t.transition for t in in_order.transitions] == ["resolved"]


def test_extra_fields_are_ignored() -> None:
    p = make_pipeline(GAS)
    out = Output()
    p.process(TOPIC, b'{"ts": %d, "lel_pct": 1, "firmware": "1.2", "nested": {"a": [1]}}' % T0, T0, out)
    assert len(out.accepted) == 1 and out.accepted[0][0].values == {"lel_pct": 1}


def test_status_forms() -> None:
    assert parse_status(b"online") == "online"
    assert parse_status(b'"offline"') == "offline"
    assert parse_status(b'{"status": "offline"}') == "offline"


def test_json_schema_covers_every_kind() -> None:
    schema = json_schema()
    assert set(schema["properties"]) == {"gas", "noise", "water", "parking", "lock", "smoke"}
    gas = schema["$defs"]["GasPayload"]
    assert set(gas["required"]) == {"ts", "lel_pct"}
    assert gas["properties"]["lel_pct"]["maximum"] == 100
    lock = schema["$defs"]["LockPayload"]
    assert "forced_open" in json.dumps(lock)


def test_a_bug_in_a_rule_dead_letters_that_message_and_the_stream_goes_on(caplog) -> None:  # type: ignore[no-untyped-def]
    class Broken:
        name = "broken"
        kinds = frozenset({"gas"})
        in_order_only = False
        v1_key = ""

        def fresh(self) -> None:
            return None

        def evaluate(self, reading, device, record, state) -> Verdict:  # type: ignore[no-untyped-def]
            if reading.values["lel_pct"] == 13:
                raise ZeroDivisionError("boom")
            return QUIET

    s = make_pipeline(GAS).settings
    p = Pipeline(s, {GAS.id: GAS}, AlertEngine(s.alerts), rules={**build_rules(s), "gas": [Broken()]})
    out = Output()
    for i, lel in enumerate([1, 13, 2]):
        p.process(TOPIC, b'{"ts": %d, "lel_pct": %d}' % (T0 + i, lel), T0 + i, out)
    assert [d.reason for d in out.dead_letters] == ["internal_error"]
    assert "ZeroDivisionError" in out.dead_letters[0].detail
    assert [r.values["lel_pct"] for r, _ in out.accepted][-1] == 2  # the next message went through
    assert "internal error" in caplog.text
