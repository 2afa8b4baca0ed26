"""Fail safe in the pipeline core: the findings of the fail-safe issue, each reproduced.

A fast device clock cannot blind a device; an `online` status re-arms the offline timer and does not
count as data for ever; an event-driven device that sends one alarm and then nothing gets the alarm
at once and, later, its offline alert.
"""

from __future__ import annotations

import math

from citywatch.model import Device, Output
from tests.helpers import T0, feed, make_pipeline, payload, stored

GAS = Device(id="g1", kind="gas", interval_s=60)
CONTROL = Device(id="g2", kind="gas", interval_s=60)


def opened(out: Output) -> list[str]:
    return [t.alert.rule for t in out.transitions if t.transition == "opened"]


def send(p, device: Device, ts: float, received_at: float, **fields: object) -> Output:  # type: ignore[no-untyped-def]
    out = Output()
    p.process(f"citywatch/{device.kind}/{device.id}/telemetry", payload(ts, **fields), received_at, out)
    assert not out.dead_letters, out.dead_letters
    return out


def test_a_reading_from_the_future_does_not_blind_the_device() -> None:
    """Finding: one reading stamped up to 5 min ahead made every later reading late, so 80 %LEL raised nothing."""
    p = make_pipeline(GAS, CONTROL)
    send(p, GAS, T0, T0, lel_pct=1.0)
    send(p, CONTROL, T0, T0, lel_pct=1.0)
    send(p, GAS, T0 + 290, T0 + 1, lel_pct=1.0)  # the device clock runs 289 s fast: processed at arrival
    assert p.counters["clock_ahead"] == 1 and p.records["g1"].ts == T0 + 1
    alarm = send(p, GAS, T0 + 2, T0 + 2, lel_pct=80.0)
    control = send(p, CONTROL, T0 + 2, T0 + 2, lel_pct=80.0)
    assert "gas_level" in opened(alarm) and opened(alarm) == opened(control)
    assert p.counters["late"] == 0


def test_a_device_repeating_future_stamps_never_stays_blind() -> None:
    p = make_pipeline(GAS)
    now = T0
    for _ in range(5):  # a future stamp every 4.5 min, as in the finding
        send(p, GAS, now + 290, now, lel_pct=1.0)
        now += 270
    assert "gas_level" in opened(send(p, GAS, now, now, lel_pct=30.0))


def test_online_status_re_arms_the_offline_timer_instead_of_disarming_it() -> None:
    """Finding: a retained or spoofed `online` resolved device_offline and it never opened again."""
    p = make_pipeline(GAS, started_at=T0)
    topic = "citywatch/gas/g1/status"
    send(p, GAS, T0, T0, lel_pct=1.0)
    out = Output()
    p.process(topic, b"offline", T0 + 10, out)
    assert opened(out) == ["device_offline"]
    out = Output()
    p.process(topic, b"online", T0 + 20, out)
    assert [t.transition for t in out.transitions] == ["resolved"]  # the last will's alert: resolved by online
    out = Output()
    p.tick(T0 + 20 + 179, out)
    assert out.transitions == []  # within three intervals of the online status
    p.tick(T0 + 20 + 181, out)
    assert opened(out) == ["device_offline"]  # silence after online: offline again
    again = Output()
    p.process(topic, b"online", T0 + 300, again)
    assert again.transitions == []  # an alert opened by silence waits for data, not for words
    p.tick(T0 + 300 + 181, again)
    assert again.transitions == []  # still one alert, not a second one
    data = send(p, GAS, T0 + 500, T0 + 500, lel_pct=1.0)
    assert [t.transition for t in data.transitions] == ["resolved"]


def test_an_event_driven_device_alarms_at_once_then_goes_offline() -> None:
    p = make_pipeline(GAS, started_at=T0)
    assert opened(feed(p, GAS, T0, lel_pct=60.0)) == ["gas_level"]  # its first and only message
    out = Output()
    p.tick(T0 + 181, out)
    assert opened(out) == ["device_offline"] and p.alerts.is_open("g1", "gas_level")


def test_flapping_groups_cycles_of_a_safety_alarm_but_sends_its_opening_and_every_rise() -> None:
    p = make_pipeline(GAS)
    sent = []
    t = T0
    for _ in range(6):  # six open/clear cycles within half an hour
        for lel in (30.0, 1.0):
            sent += [(tr.transition, tr.alert.severity) for tr in feed(p, GAS, t, lel_pct=lel).transitions
                     if tr.alert.rule == "gas_level"]
            t += 60
    assert sent[:6] == [("opened", "warning"), ("resolved", "warning")] * 3
    assert sent[6:] == [("flapping", "warning")]  # the fourth opening is sent, as one flapping alert
    rise = [(tr.transition, tr.alert.severity) for tr in feed(p, GAS, t, lel_pct=60.0).transitions
            if tr.alert.rule == "gas_level"]
    assert rise == [("updated", "critical")]


def test_an_online_status_re_arms_the_offline_timer_across_a_restart() -> None:
    from citywatch.detectors.lifecycle import AlertEngine
    from citywatch.streams.pipeline import Pipeline

    p = make_pipeline(GAS, started_at=T0)
    out = Output()
    p.process("citywatch/gas/g1/status", b"online", T0, out)
    assert math.isnan(p.records["g1"].seen)  # `seen` stays the last data (devices check reads it)
    restarted = Pipeline(p.settings, p.devices, AlertEngine(p.settings.alerts), stored(p), started_at=T0 + 1)
    late = Output()
    restarted.tick(T0 + 182, late)
    assert opened(late) == ["device_offline"]  # armed from the online status, not forgotten by the restart


def test_a_brute_force_burst_delivered_hours_late_still_alarms() -> None:
    """Found by the property test: failures more than an hour older than the newest one were dropped,
    so a burst delivered late (a gateway's backlog) opened nothing."""
    lock = Device(id="l1", kind="lock")
    p = make_pipeline(lock)
    for i in range(11):  # scattered failures over the last three hours, in order
        feed(p, lock, T0 + i * 1080, event="unlock_fail")
    late = [feed(p, lock, T0 - 3600 + 30 * i, event="unlock_fail") for i in range(5)]  # 2 min burst, 4 h late
    assert [opened(out) for out in late][-1] == ["lock_brute_force"]
