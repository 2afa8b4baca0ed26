"""Each learned detector through the pipeline core, on crafted sequences: fires when it must,
stays silent when it must. Plus a simulated city with no incident: no alert at all."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgspec

from citywatch.config import Settings
from citywatch.detectors.baseline import LearnedRule, LocalTime
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.detectors.registry import build_rules
from citywatch.ingest.simulator import Simulator, make_devices
from citywatch.model import KINDS, Device, Output, Transition
from citywatch.streams.pipeline import Pipeline
from tests.helpers import T0, make_pipeline

MIN = 60.0
HOUR = 3600.0
DAY = 86400.0
CLOCK = LocalTime()
_encode = msgspec.json.encode


def local_hour(ts: float) -> float:
    return CLOCK.position(ts)[0]


def at_local(day: int, hour: float) -> float:
    """Epoch time of `hour` local on the `day`-th day after T0's date (T0 is 19:06 local)."""
    t = T0 + day * DAY
    return t + ((hour - local_hour(t)) % 24) * HOUR


class Feeder:
    """Feeds one device's readings through a real pipeline and keeps every transition."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.pipeline = make_pipeline(device)
        self.topic = f"citywatch/{device.kind}/{device.id}/telemetry"
        self.transitions: list[Transition] = []

    def one(self, ts: float, **fields: Any) -> list[Transition]:
        out = Output()
        self.pipeline.process(self.topic, _encode({"ts": ts, **fields}), ts, out)
        assert not out.dead_letters, out.dead_letters
        self.transitions += out.transitions
        return out.transitions

    def run(self, start: float, end: float, step: float, fields: Callable[[float], dict[str, Any]]) -> list[Transition]:
        got: list[Transition] = []
        t = start
        while t < end:
            got += self.one(t, **fields(t))
            t += step
        return got


def opened(transitions: list[Transition]) -> list[str]:
    return [t.alert.rule for t in transitions if t.transition == "opened"]


def resolved(transitions: list[Transition]) -> list[str]:
    return [t.alert.rule for t in transitions if t.transition == "resolved"]


def noisy(rng: random.Random, base: Callable[[float], float], sd: float, key: str) -> Callable[[float], dict[str, Any]]:
    return lambda t: {key: round(max(0.0, base(t) + rng.gauss(0, sd)), 1)}


# -- gas ------------------------------------------------------------------------------------------


def gas_normal(t: float) -> float:
    h = local_hour(t)
    return 1.0 + (0.8 if 11 <= h < 13 or 18 <= h < 19.5 else 0.0)  # cooking hours


def test_gas_slow_rise_below_the_alarm_level_after_the_warm_up() -> None:
    f = Feeder(Device(id="g1", kind="gas"))
    rng = random.Random(1)
    assert opened(f.run(T0, T0 + 2 * DAY, MIN, noisy(rng, gas_normal, 0.2, "lel_pct"))) == []
    start = T0 + 2 * DAY
    leak = f.run(start, start + 3 * HOUR, MIN,
                 lambda t: {"lel_pct": round(gas_normal(t) + 5.0 * (t - start) / HOUR + rng.gauss(0, 0.2), 1)})
    assert opened(leak) == ["gas_slow_rise"]  # below 25 %LEL: no level alarm
    first = next(t for t in leak if t.transition == "opened")
    assert first.at - start < 45 * MIN and first.alert.value < 6  # early, while the gas is still low
    back = f.run(start + 3 * HOUR, start + 4 * HOUR, MIN, noisy(rng, gas_normal, 0.2, "lel_pct"))
    assert resolved(back) == ["gas_slow_rise"]


def test_gas_slow_rise_is_silent_during_the_warm_up_and_on_a_normal_day() -> None:
    rng = random.Random(2)
    f = Feeder(Device(id="g2", kind="gas"))
    # a rise on the first hours of a new device: the baseline is not warm, nothing learned fires
    early = f.run(T0, T0 + 2 * HOUR, MIN, lambda t: {"lel_pct": round(1 + 5.0 * (t - T0) / HOUR, 1)})
    assert opened(early) == []
    g = Feeder(Device(id="g3", kind="gas"))
    assert opened(g.run(T0, T0 + 4 * DAY, MIN, noisy(rng, gas_normal, 0.2, "lel_pct"))) == []


# -- noise ----------------------------------------------------------------------------------------


def street(t: float) -> float:
    h = local_hour(t)
    return 40.0 if h < 5 or h >= 23 else 55.0 if 7 <= h < 21 else 47.0


def test_noise_unusual_night_under_the_limit_and_sustained() -> None:
    device = Device(id="n1", kind="noise", zone_class="2")  # night limit 50 dB(A)
    f = Feeder(device)
    rng = random.Random(3)
    normal = noisy(rng, street, 1.0, "laeq_db")
    assert opened(f.run(T0, T0 + 2 * DAY, MIN, normal)) == []
    two_am = at_local(2, 2.0)
    f.run(T0 + 2 * DAY, two_am, MIN, normal)
    assert opened(f.one(two_am, laeq_db=49.0)) == []  # one loud minute is not sustained
    f.run(two_am + MIN, two_am + 10 * MIN, MIN, normal)
    party = f.run(two_am + 10 * MIN, two_am + 40 * MIN, MIN, lambda t: {"laeq_db": round(48.5 + rng.random(), 1)})
    assert opened(party) == ["noise_unusual_night"]
    assert resolved(f.run(two_am + 40 * MIN, two_am + 60 * MIN, MIN, normal)) == ["noise_unusual_night"]


def test_noise_unusual_night_is_silent_by_day_and_leaves_the_limit_to_the_limit_rule() -> None:
    device = Device(id="n2", kind="noise", zone_class="2")
    f = Feeder(device)
    rng = random.Random(4)
    f.run(T0, T0 + 2 * DAY, MIN, noisy(rng, street, 1.0, "laeq_db"))
    noon = at_local(2, 12.0)
    f.run(T0 + 2 * DAY, noon, MIN, noisy(rng, street, 1.0, "laeq_db"))
    assert opened(f.run(noon, noon + 30 * MIN, MIN, lambda t: {"laeq_db": 59.0})) == []  # day limit 60
    three_am = at_local(3, 3.0)
    f.run(noon + 30 * MIN, three_am, MIN, noisy(rng, street, 1.0, "laeq_db"))
    loud = f.run(three_am, three_am + 20 * MIN, MIN, lambda t: {"laeq_db": round(56 + rng.random(), 1)})
    assert opened(loud) == ["noise_limit"]


# -- water ----------------------------------------------------------------------------------------


def test_water_fast_rise_warns_before_the_severe_level() -> None:
    f = Feeder(Device(id="w1", kind="water"))
    rng = random.Random(5)
    dry = lambda t: {"depth_cm": round(rng.random() * 0.6, 1) if rng.random() < 0.05 else 0.0}  # noqa: E731
    assert opened(f.run(T0, T0 + DAY, MIN, dry)) == []
    start = T0 + DAY
    storm = f.run(start, start + 40 * MIN, MIN, lambda t: {"depth_cm": round(1.2 * (t - start) / MIN, 1)})
    rules = opened(storm)
    assert "water_fast_rise" in rules
    warned = next(t for t in storm if t.transition == "opened" and t.alert.rule == "water_fast_rise")
    assert warned.alert.value < 25  # before vehicles stall
    assert warned.at < next(t.at for t in storm if t.alert.rule == "water_depth" and t.alert.severity == "critical"
                            and t.transition in ("opened", "updated"))


def test_water_slow_rise_is_no_fast_rise() -> None:
    f = Feeder(Device(id="w2", kind="water"))
    f.run(T0, T0 + DAY, MIN, lambda t: {"depth_cm": 0.0})
    start = T0 + DAY
    slow = f.run(start, start + 2 * HOUR, MIN, lambda t: {"depth_cm": round(0.2 * (t - start) / MIN, 1)})
    assert "water_fast_rise" not in opened(slow)


# -- sensor faults --------------------------------------------------------------------------------


def test_a_stuck_sensor_is_a_fault_and_clears_when_it_moves() -> None:
    f = Feeder(Device(id="g4", kind="gas"))
    rng = random.Random(6)
    normal = noisy(rng, lambda t: 1.2, 0.2, "lel_pct")
    f.run(T0, T0 + 3 * HOUR, MIN, normal)
    stuck = f.run(T0 + 3 * HOUR, T0 + 4 * HOUR, MIN, lambda t: {"lel_pct": 1.3})
    assert opened(stuck) == ["sensor_stuck"]
    alert = next(t.alert for t in stuck if t.transition == "opened")
    assert "sensor fault" in alert.message and alert.severity == "warning"
    assert stuck[0].at - (T0 + 3 * HOUR) >= 29 * MIN  # 30 readings and 30 minutes at least
    assert resolved(f.one(T0 + 4 * HOUR, lel_pct=1.6)) == ["sensor_stuck"]


def test_rest_values_and_naturally_repetitive_sensors_are_not_stuck() -> None:
    f = Feeder(Device(id="g5", kind="gas"))
    f.run(T0, T0 + 2 * HOUR, MIN, lambda t: {"lel_pct": round(random.Random(t).random(), 1)})
    assert opened(f.run(T0 + 2 * HOUR, T0 + 8 * HOUR, MIN, lambda t: {"lel_pct": 0.0})) == []  # clean air
    rng = random.Random(7)
    w = Feeder(Device(id="w3", kind="water"))  # a gauge that reads 2.0 and seldom anything else
    seldom = w.run(T0, T0 + 2 * DAY, MIN, lambda t: {"depth_cm": 2.1 if rng.random() < 0.02 else 2.0})
    assert "sensor_stuck" not in opened(seldom)


def test_an_impossible_jump_is_a_fault_and_a_fast_leak_is_not() -> None:
    w = Feeder(Device(id="w9", kind="water"))
    w.run(T0, T0 + HOUR, MIN, lambda t: {"depth_cm": 0.5 + (t % 7) / 10})
    jump = w.one(T0 + HOUR, depth_cm=400.0)  # 4 m of water in a minute: a broken gauge (50 cm/min)
    assert "sensor_jump" in opened(jump) and "water_depth" in opened(jump)  # the alarm is not withheld
    alert = next(t.alert for t in jump if t.alert.rule == "sensor_jump")
    assert alert.message.startswith("sensor fault")
    back = w.run(T0 + HOUR + MIN, T0 + HOUR + 12 * MIN, MIN, lambda t: {"depth_cm": 0.5 + (t % 7) / 10})
    assert "sensor_jump" in resolved(back) and "water_depth" in resolved(back)
    n = Feeder(Device(id="n3", kind="noise", zone_class="4a"))  # noise has no jump fault: a pile driver
    n.run(T0, T0 + HOUR, MIN, lambda t: {"laeq_db": 38.0 + (t % 7) / 10})
    assert "sensor_jump" not in opened(n.one(T0 + HOUR, laeq_db=85.0))
    g = Feeder(Device(id="g6", kind="gas"))
    g.run(T0, T0 + HOUR, MIN, lambda t: {"lel_pct": 1.0})
    leak = g.run(T0 + HOUR, T0 + HOUR + 8 * MIN, MIN, lambda t: {"lel_pct": 1.0 + 10 * (t - T0 - HOUR) / MIN})
    assert "sensor_jump" not in opened(leak) and "gas_level" in opened(leak)
    slow = Feeder(Device(id="g7", kind="gas"))
    slow.one(T0, lel_pct=1.0)
    assert opened(slow.one(T0 + 3600, lel_pct=60.0)) == ["gas_level"]  # an hour apart: plausible


# -- parking --------------------------------------------------------------------------------------


def test_a_flapping_bay_and_a_normal_one() -> None:
    f = Feeder(Device(id="p1", kind="parking", max_stay_min=240))
    normal = f.run(T0, T0 + DAY, MIN, lambda t: {"occupied": int((t - T0) // (40 * MIN)) % 2 == 0})
    assert opened(normal) == []
    flap = f.run(T0 + DAY, T0 + DAY + 15 * MIN, MIN, lambda t: {"occupied": int((t - T0) // MIN) % 2 == 0})
    assert opened(flap) == ["parking_flapping"]
    calm = f.run(T0 + DAY + 15 * MIN, T0 + DAY + 40 * MIN, MIN, lambda t: {"occupied": False})
    assert resolved(calm) == ["parking_flapping"]


def test_a_stuck_bay_after_days_without_change_but_not_a_rarely_used_one() -> None:
    busy = Feeder(Device(id="p2", kind="parking", max_stay_min=240))
    cycles = busy.run(T0, T0 + 3 * DAY, 5 * MIN, lambda t: {"occupied": int((t - T0) // (50 * MIN)) % 2 == 0})
    assert opened(cycles) == []
    stuck = busy.run(T0 + 3 * DAY, T0 + 5 * DAY, 5 * MIN, lambda t: {"occupied": False})
    assert opened(stuck) == ["parking_stuck"]
    when = next(t for t in stuck if t.transition == "opened").at - (T0 + 3 * DAY)
    assert 24 * HOUR <= when <= 30 * HOUR
    assert resolved(busy.one(T0 + 5 * DAY, occupied=True)) == ["parking_stuck"]
    rare = Feeder(Device(id="p3", kind="parking", max_stay_min=240))
    quiet = rare.run(T0, T0 + 10 * DAY, 5 * MIN, lambda t: {"occupied": int((t - T0) // (2 * DAY)) % 2 == 0})
    assert "parking_stuck" not in opened(quiet)


# -- locks ----------------------------------------------------------------------------------------


def lock_day(rng: random.Random, users: list[str]) -> Callable[[float], dict[str, Any]]:
    def fields(t: float) -> dict[str, Any]:
        h = local_hour(t)
        if 8 <= h < 20 and rng.random() < 0.1:
            return {"event": "unlock_ok", "user": rng.choice(users)}
        if rng.random() < 0.003:
            return {"event": "unlock_fail", "user": rng.choice(users)}
        return {"event": "door_closed"}
    return fields


def test_far_more_users_than_tenants() -> None:
    device = Device(id="l1", kind="lock", tenants=1)  # alert above 1 * 2 + 2 = 4 users in 7 days
    f = Feeder(device)
    rng = random.Random(8)
    assert opened(f.run(T0, T0 + 2 * DAY, MIN, lock_day(rng, ["alice"]))) == []
    got = []
    for k, user in enumerate(["bob", "carol", "dan", "erin"]):
        got += f.one(T0 + 2 * DAY + k * HOUR, event="unlock_ok", user=user)
    assert opened(got) == ["lock_many_users"]
    assert got[0].alert.value == 5
    # a week later only alice still uses the door: it clears
    later = f.run(T0 + 10 * DAY, T0 + 10 * DAY + 3 * HOUR, MIN, lambda t: {"event": "unlock_ok", "user": "alice"})
    assert resolved(later) == ["lock_many_users"]
    unknown = Feeder(Device(id="l2", kind="lock"))  # no registered tenants: not judged
    assert opened([tr for k in range(10) for tr in unknown.one(T0 + k * MIN, event="unlock_ok", user=f"u{k}")]) == []


def test_an_unlock_at_an_hour_unusual_for_this_door() -> None:
    f = Feeder(Device(id="l3", kind="lock", tenants=2))
    rng = random.Random(9)
    assert opened(f.run(T0, T0 + 3 * DAY, MIN, lock_day(rng, ["a", "b"]))) == []
    three_am = at_local(3, 3.5)
    f.run(T0 + 3 * DAY, three_am, MIN, lock_day(rng, ["a", "b"]))
    assert opened(f.one(three_am, event="unlock_ok", user="a")) == ["lock_unusual_hour"]
    noon = at_local(4, 12.0)
    assert resolved(f.one(noon, event="unlock_ok", user="a")) == ["lock_unusual_hour"]


def test_failed_unlocks_far_above_normal_though_not_brute_force() -> None:
    f = Feeder(Device(id="l4", kind="lock", tenants=2))
    rng = random.Random(10)
    assert opened(f.run(T0, T0 + 2 * DAY, MIN, lock_day(rng, ["a", "b"]))) == []
    hour = at_local(2, 15.0)
    f.run(T0 + 2 * DAY, hour, MIN, lock_day(rng, ["a", "b"]))
    fails = f.run(hour + MIN, hour + 50 * MIN, 10 * MIN, lambda t: {"event": "unlock_fail", "user": "x"})
    assert opened(fails) == ["lock_unusual_failures"]  # five in 40 minutes: not brute force (5 in 300 s)
    assert resolved(f.one(hour + 2 * HOUR, event="door_closed")) == ["lock_unusual_failures"]


# -- device health --------------------------------------------------------------------------------


def test_reporting_interval_far_from_this_devices_own() -> None:
    f = Feeder(Device(id="w4", kind="water"))
    assert opened(f.run(T0, T0 + 6 * HOUR, MIN, lambda t: {"depth_cm": 0.0})) == []
    chatter = f.run(T0 + 6 * HOUR, T0 + 6 * HOUR + 10 * MIN, 5.0, lambda t: {"depth_cm": 0.0})
    assert opened(chatter) == ["reporting_interval"]
    assert resolved(f.run(T0 + 7 * HOUR, T0 + 9 * HOUR, MIN, lambda t: {"depth_cm": 0.0})) == ["reporting_interval"]
    jittery = Feeder(Device(id="w5", kind="water"))
    rng = random.Random(11)
    t, got = T0, []
    while t < T0 + DAY:
        got += jittery.one(t, depth_cm=0.0)
        t += rng.uniform(30, 90)
    assert opened(got) == []


def test_battery_draining_far_faster_than_usual() -> None:
    f = Feeder(Device(id="g8", kind="gas"))
    normal = f.run(T0, T0 + 3 * DAY, 5 * MIN,
                   lambda t: {"lel_pct": 1.0, "battery": round(95 - 2.0 * (t - T0) / DAY, 1)})
    assert opened(normal) == []
    start = T0 + 3 * DAY
    drain = f.run(start, start + DAY, 5 * MIN,
                  lambda t: {"lel_pct": 1.0, "battery": round(89 - 20.0 * (t - start) / DAY, 1)})
    assert opened(drain) == ["battery_drain"]
    swapped = f.run(start + DAY, start + DAY + HOUR, 5 * MIN, lambda t: {"lel_pct": 1.0, "battery": 100.0})
    assert opened(swapped) == []  # a new battery is not a drain


# -- the city with no incident --------------------------------------------------------------------


def test_every_learned_detector_is_registered() -> None:
    rules = build_rules(Settings())
    names = {r.name for kind in KINDS for r in rules[kind] if isinstance(r, LearnedRule)}
    assert names == {"sensor_stuck", "sensor_jump", "gas_slow_rise", "noise_unusual_night", "water_fast_rise",
                     "parking_stuck", "parking_flapping", "lock_many_users", "lock_unusual_hour",
                     "lock_unusual_failures", "reporting_interval", "battery_drain"}


def test_two_simulated_days_without_incidents_open_no_alert() -> None:
    devices = make_devices(60, seed=9)
    sim = Simulator(devices, seed=9, start=T0, incidents=False)
    settings = Settings()
    pipeline = Pipeline(settings, {d.id: d for d in devices}, AlertEngine(settings.alerts), started_at=T0)
    out = Output()
    next_tick = T0 + 30
    for topic, payload, ts in sim.messages(2 * DAY):
        while ts >= next_tick:
            pipeline.tick(next_tick, out)
            next_tick += 30
        pipeline.process(topic, payload, ts + 0.2, out)
    assert [(t.alert.device_id, t.alert.rule) for t in out.transitions if t.transition == "opened"] == []
    # not vacuous: by day two the seasonal baselines are armed on every device that has one
    armed = [state.baseline.n for record in pipeline.records.values() for state in record.states
             if hasattr(state, "baseline")]
    assert armed and all(max(counts) >= 20 for counts in armed)
