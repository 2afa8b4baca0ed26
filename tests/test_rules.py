"""Each first-stage rule, through the pipeline core: fires when it must, stays silent when it must."""

from __future__ import annotations

from citywatch.detectors.lifecycle import AlertEngine
from citywatch.model import Device, Output
from citywatch.streams.pipeline import Pipeline
from tests.helpers import T0, feed, make_pipeline, stored

GAS = Device(id="g1", kind="gas", district="Nanhu", grid="G1")
NOISE = Device(id="n1", kind="noise", zone_class="1")
WATER = Device(id="w1", kind="water")
BAY = Device(id="p1", kind="parking", max_stay_min=60)
FIRE_LANE = Device(id="p2", kind="parking", no_parking=True)
LOCK = Device(id="l1", kind="lock")


def opened(out: Output) -> list[tuple[str, str]]:
    return [(t.alert.rule, t.alert.severity) for t in out.transitions if t.transition == "opened"]


def kinds(out: Output) -> list[str]:
    return [t.transition for t in out.transitions]


def test_gas_levels_open_raise_and_clear_with_hysteresis() -> None:
    p = make_pipeline(GAS)
    assert feed(p, GAS, T0, lel_pct=3).transitions == []
    assert opened(feed(p, GAS, T0 + 60, lel_pct=26)) == [("gas_level", "warning")]
    assert feed(p, GAS, T0 + 120, lel_pct=24).transitions == []  # within hysteresis: still open
    out = feed(p, GAS, T0 + 180, lel_pct=55)
    assert kinds(out) == ["updated"] and out.transitions[0].alert.severity == "critical"
    assert feed(p, GAS, T0 + 240, lel_pct=47).transitions == []  # level-2 holds until < 45
    assert kinds(feed(p, GAS, T0 + 300, lel_pct=10)) == ["resolved"]
    assert not p.alerts.by_id


def test_gas_hovering_at_threshold_does_not_flap() -> None:
    p = make_pipeline(GAS)
    transitions = []
    for i, lel in enumerate([25.2, 24.8, 25.1, 24.9, 25.3, 23.0, 24.5]):
        transitions += feed(p, GAS, T0 + 60 * i, lel_pct=lel).transitions
    assert [t.transition for t in transitions] == ["opened"]


def test_gas_per_device_override() -> None:
    strict = Device(id="g2", kind="gas", thresholds={"gas.level1_pct": 10.0})
    p = make_pipeline(strict)
    assert opened(feed(p, strict, T0, lel_pct=12)) == [("gas_level", "warning")]


def test_noise_day_and_night_limits_by_zone() -> None:
    p = make_pipeline(NOISE)
    day = T0  # 19:06 local
    night = T0 + 8 * 3600  # 03:06 local
    assert feed(p, NOISE, day, laeq_db=50).transitions == []  # class 1 day limit 55
    assert feed(p, NOISE, day + 60, laeq_db=56).transitions == []  # one loud interval is not sustained
    assert opened(feed(p, NOISE, day + 120, laeq_db=57)) == [("noise_limit", "warning")]
    assert kinds(feed(p, NOISE, day + 180, laeq_db=51)) == ["resolved"]
    assert feed(p, NOISE, night, laeq_db=48).transitions == []
    assert opened(feed(p, NOISE, night + 60, laeq_db=48)) == [("noise_limit", "warning")]  # night limit 45


def test_noise_single_loud_interval_does_not_open() -> None:
    p = make_pipeline(NOISE)
    for i in range(10):  # loud, quiet, loud, quiet ...: never two in a row
        assert feed(p, NOISE, T0 + 60 * i, laeq_db=70 if i % 2 == 0 else 40).transitions == []


def test_noise_night_burst() -> None:
    p = make_pipeline(NOISE)
    night = T0 + 8 * 3600
    assert opened(feed(p, NOISE, night, laeq_db=40, lamax_db=61)) == [("noise_night_burst", "warning")]
    p2 = make_pipeline(NOISE)
    assert feed(p2, NOISE, T0, laeq_db=40, lamax_db=75).transitions == []  # daytime: no burst rule


def test_water_levels() -> None:
    p = make_pipeline(WATER)
    assert feed(p, WATER, T0, depth_cm=1).transitions == []
    assert opened(feed(p, WATER, T0 + 60, depth_cm=4)) == [("water_depth", "info")]
    out = feed(p, WATER, T0 + 120, depth_cm=30)
    assert kinds(out) == ["updated"] and out.transitions[0].alert.severity == "critical"
    assert kinds(feed(p, WATER, T0 + 180, depth_cm=0)) == ["resolved"]


def test_parking_overstay_and_forbidden() -> None:
    p = make_pipeline(BAY, FIRE_LANE)
    assert feed(p, BAY, T0, occupied=True).transitions == []
    assert feed(p, BAY, T0 + 59 * 60, occupied=True).transitions == []
    assert opened(feed(p, BAY, T0 + 61 * 60, occupied=True)) == [("parking_overstay", "warning")]
    assert kinds(feed(p, BAY, T0 + 62 * 60, occupied=False)) == ["resolved"]
    assert opened(feed(p, FIRE_LANE, T0, occupied=True)) == [("parking_forbidden", "warning")]
    assert kinds(feed(p, FIRE_LANE, T0 + 60, occupied=False)) == ["resolved"]


def test_lock_alarms() -> None:
    p = make_pipeline(LOCK)
    assert feed(p, LOCK, T0, event="unlock_ok", user="u1").transitions == []
    assert opened(feed(p, LOCK, T0 + 1, event="forced_open")) == [("lock_forced_open", "critical")]
    assert feed(p, LOCK, T0 + 2, event="forced_open").transitions == []  # one open alert
    assert feed(p, LOCK, T0 + 3, event="door_closed").transitions == []  # latched: a person resolves it
    assert opened(feed(p, LOCK, T0 + 4, event="tamper")) == [("lock_tamper", "critical")]
    assert opened(feed(p, LOCK, T0 + 5, event="door_ajar")) == [("lock_door_ajar", "warning")]
    assert kinds(feed(p, LOCK, T0 + 6, event="door_closed")) == ["resolved"]


def test_lock_brute_force_needs_count_within_window() -> None:
    p = make_pipeline(LOCK)
    for i in range(4):
        assert feed(p, LOCK, T0 + i * 10, event="unlock_fail").transitions == []
    assert opened(feed(p, LOCK, T0 + 50, event="unlock_fail")) == [("lock_brute_force", "critical")]
    slow = Device(id="l2", kind="lock")
    p2 = make_pipeline(slow)
    for i in range(10):  # one failure every 2 minutes: never 5 within 300 s
        assert feed(p2, slow, T0 + i * 120, event="unlock_fail").transitions == []


def test_battery_low_with_hysteresis() -> None:
    p = make_pipeline(GAS)
    assert opened(feed(p, GAS, T0, lel_pct=1, battery=12)) == [("battery_low", "warning")]
    assert feed(p, GAS, T0 + 60, lel_pct=1, battery=17).transitions == []
    assert kinds(feed(p, GAS, T0 + 120, lel_pct=1, battery=90)) == ["resolved"]


def test_offline_by_silence_and_by_last_will() -> None:
    dev = Device(id="w9", kind="water", interval_s=60)
    p = make_pipeline(dev, started_at=T0)
    feed(p, dev, T0, depth_cm=0)
    out = Output()
    p.tick(T0 + 170, out)
    assert out.transitions == []
    p.tick(T0 + 181, out)
    assert opened(out) == [("device_offline", "warning")]
    p.tick(T0 + 500, out)
    assert len(out.transitions) == 1  # once, not every tick
    assert kinds(feed(p, dev, T0 + 600, depth_cm=0)) == ["resolved"]
    will = Output()
    p.process("citywatch/water/w9/status", b"offline", T0 + 700, will)
    assert opened(will) == [("device_offline", "warning")]
    back = Output()
    p.process("citywatch/water/w9/status", b"online", T0 + 710, back)
    assert kinds(back) == ["resolved"]


def test_backfilled_old_data_does_not_reset_offline_detection() -> None:
    dev = Device(id="w8", kind="water", interval_s=60)
    p = make_pipeline(dev, started_at=T0)
    feed(p, dev, T0, depth_cm=0)
    out = Output()
    # an hour-old reading arrives late: it must not count as a sign of life
    p.process("citywatch/water/w8/telemetry", b'{"ts": %d, "depth_cm": 0}' % (T0 - 3600), T0 + 150, out)
    p.tick(T0 + 181, out)
    assert opened(out) == [("device_offline", "warning")]


def test_no_offline_storm_after_our_own_downtime() -> None:
    dev = Device(id="w7", kind="water", interval_s=60)
    p = make_pipeline(dev, started_at=T0)
    feed(p, dev, T0, depth_cm=0)
    # a restart an hour later: state comes back from the store, the deadman is rebuilt from it
    restarted = Pipeline(p.settings, p.devices, AlertEngine(p.settings.alerts), stored(p), started_at=T0 + 3600)
    assert len(restarted.deadman) == 1
    out = Output()
    restarted.tick(T0 + 3600 + 60, out)
    assert out.transitions == []
    restarted.tick(T0 + 3600 + 181, out)
    assert opened(out) == [("device_offline", "warning")]


def test_an_impossible_gas_spike_alarms_at_once_marked_suspect_beside_a_sensor_fault() -> None:
    """Fail safe: a suspected fault is information on the alarm, never a reason to withhold it."""
    glitch = make_pipeline(GAS)
    feed(glitch, GAS, T0, lel_pct=1.0)
    spike = feed(glitch, GAS, T0 + 60, lel_pct=90.0)  # 89 %LEL in a minute: more than 40 %LEL/min allows
    assert sorted(opened(spike)) == [("gas_level", "critical"), ("sensor_jump", "warning")]
    alarm = next(t for t in spike.transitions if t.alert.rule == "gas_level")
    assert alarm.alert.suspect == "sensor_fault" and "jumped from 1 to 90" in alarm.alert.suspect_reason
    back = feed(glitch, GAS, T0 + 120, lel_pct=1.0)  # the glitch: the readings clear the alarm normally
    assert [(t.alert.rule, t.transition) for t in back.transitions] == [("gas_level", "resolved")]

    leak = make_pipeline(GAS)
    feed(leak, GAS, T0, lel_pct=1.0)
    assert ("gas_level", "critical") in opened(feed(leak, GAS, T0 + 60, lel_pct=90.0))
    confirm = feed(leak, GAS, T0 + 120, lel_pct=91.0)  # plausible next reading: a leak, suspicion cleared
    update = next(t for t in confirm.transitions if t.alert.rule == "gas_level")
    assert update.transition == "updated" and update.reason == "confirmed by a plausible reading"
    assert update.alert.suspect == "" and update.alert.severity == "critical"


def test_a_fast_but_possible_gas_rise_alarms_at_once() -> None:
    p = make_pipeline(GAS)
    feed(p, GAS, T0, lel_pct=1.0)
    assert ("gas_level", "warning") in opened(feed(p, GAS, T0 + 60, lel_pct=30.0))
