"""A registered device flooding unusable messages gets one rate-limited health alert (fairness finding)."""

from __future__ import annotations

from citywatch.model import Device, Output
from tests.helpers import T0, make_pipeline

GAS = Device(id="g1", kind="gas")
TOPIC = "citywatch/gas/g1/telemetry"


def test_a_flooding_device_opens_one_alert_that_clears_after_a_quiet_minute() -> None:
    p = make_pipeline(GAS, ingest={"flood_dead_letters_per_min": 60})
    out = Output()
    for i in range(59):
        p.process(TOPIC, b"{not json", T0 + i * 0.5, out)
    p.tick(T0 + 30, out)
    assert out.transitions == [] and len(out.dead_letters) == 59  # under the limit: counted, no alert
    for i in range(500):  # 8 per second for a minute: far over the limit
        p.process(TOPIC, b'{"ts": "yesterday", "lel_pct": 1}', T0 + 30 + i * 0.06, out)
    opened = [t for t in out.transitions if t.transition == "opened"]
    assert [(t.alert.rule, t.alert.severity) for t in opened] == [("device_flooding", "warning")]  # one, not 500
    assert len(out.dead_letters) == 559  # every message is still a dead letter (the store samples them)
    quiet = Output()
    p.tick(T0 + 30 + 500 * 0.06 + 30, quiet)
    assert quiet.transitions == []  # half a minute of quiet is not enough
    p.tick(T0 + 30 + 500 * 0.06 + 61, quiet)
    assert [(t.alert.rule, t.transition) for t in quiet.transitions] == [("device_flooding", "resolved")]


def test_unknown_devices_flooding_open_no_alert_and_cost_no_memory() -> None:
    p = make_pipeline(GAS)
    out = Output()
    for i in range(5000):
        p.process(f"citywatch/gas/spoof-{i}/telemetry", b"{}", T0 + i * 0.001, out)
    assert out.transitions == [] and not p.flood_watch.windows
    assert p.counters["dead_letter.unknown_device"] == 5000
