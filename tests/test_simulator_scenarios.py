"""The simulator's scenarios over many devices at once, through the real pipeline core: a storm (a
district's water gauges rising within minutes of each other) and road works (a street's noise
monitors loud in working hours, day after day, and nowhere else)."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from zoneinfo import ZoneInfo

from citywatch.ingest.simulator import (
    RoadWorks,
    Scenario,
    Simulator,
    Storm,
    make_devices,
    storm_gauges,
    street_monitors,
)
from citywatch.model import Device, Output, Transition
from tests.helpers import T0, make_pipeline

LOCAL = ZoneInfo("Asia/Shanghai")


def run(devices: list[Device], sim: Simulator, seconds: float) -> list[Transition]:
    """Every message of `seconds` through the pipeline (received at event time), ticking each minute."""
    pipeline = make_pipeline(*devices, started_at=sim.start)
    transitions: list[Transition] = []
    next_tick = sim.start + 60
    for topic, payload, ts in sim.messages(seconds):
        out = Output()
        if ts >= next_tick:
            pipeline.tick(next_tick, out)
            next_tick += 60
        pipeline.process(topic, payload, ts, out)
        transitions += out.transitions
    return transitions


def test_a_storm_raises_every_gauge_of_the_district_within_twenty_minutes_and_nothing_else() -> None:
    gauges = storm_gauges(200, district="Nanhu", grids=8)
    elsewhere = [d for d in make_devices(60, seed=3) if d.district != "Nanhu"]
    storm = Storm("Nanhu", start_s=600, spread_s=1200)
    sim = Simulator(gauges + elsewhere, seed=5, start=T0, incidents=False, scenarios=[storm])
    log = sim.incidents_log
    assert {e["device_id"] for e in log} == {g.id for g in gauges} and {e["incident"] for e in log} == {"storm"}
    assert len({g.grid for g in gauges}) == 8 and {g.district for g in gauges} == {"Nanhu"}
    starts = [e["start"] for e in log]
    assert min(starts) >= T0 + 600 and max(starts) <= T0 + 600 + 1200 + 60  # all within 20 min (plus one interval)
    assert max(starts) - min(starts) > 900  # spread over the window, not all at one instant

    transitions = run(gauges + elsewhere, sim, 3 * 3600)
    opened = [t for t in transitions if t.transition == "opened"]
    assert {t.alert.device_id for t in opened} == {g.id for g in gauges}  # every gauge, and no other device
    assert Counter(t.alert.rule for t in opened) == Counter({"water_depth": 200})
    first_open = max(t.at for t in opened)
    assert first_open <= T0 + 600 + 1200 + 60 + 900 + 60  # opened while rising: within the storm's first 35 min
    resolved = {t.alert_id for t in transitions if t.transition == "resolved"}
    assert resolved == {t.alert_id for t in opened}  # drained: every alert resolved within three hours
    severe = {t.alert.device_id for t in transitions if t.alert.severity == "critical"}
    assert len(severe) > 50  # the peaks range from moderate to severe


def local_midnight(ts: float) -> float:
    day = datetime.fromtimestamp(ts, LOCAL).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


def test_road_works_are_loud_in_working_hours_every_day_and_only_on_that_street() -> None:
    street = street_monitors(4, street="Jianguo Rd", grid="W0001")
    quiet = street_monitors(2, street="Ziyang St", grid="W0002", prefix="quiet")
    start = local_midnight(T0) + 86400
    works = RoadWorks("Jianguo Rd", days=3, hours=(8.0, 18.0))
    sim = Simulator(street + quiet, seed=2, start=start, incidents=False, scenarios=[works])
    assert {e["device_id"] for e in sim.incidents_log} == {d.id for d in street}
    assert all(e["rules"] == ["noise_limit"] for e in sim.incidents_log)

    transitions = run(street + quiet, sim, 3 * 86400)
    assert {t.alert.device_id for t in transitions} <= {d.id for d in street}  # the next street stays quiet
    assert {t.alert.rule for t in transitions} == {"noise_limit"}
    by_device: dict[str, list[Transition]] = defaultdict(list)
    for t in transitions:
        by_device[t.alert.device_id].append(t)
    for device in street:
        opened = [t for t in by_device[device.id] if t.transition == "opened"]
        resolved = [t for t in by_device[device.id] if t.transition == "resolved"]
        assert len(opened) == len(resolved) == 3  # one alert per working day, over once the crew stops
        for o, r in zip(opened, resolved, strict=True):
            assert 8.0 <= datetime.fromtimestamp(o.at, LOCAL).hour < 9  # opens as work starts (2 readings)
            assert datetime.fromtimestamp(r.at, LOCAL).hour == 18  # and ends as it stops


def test_scenario_devices_take_no_other_incident_and_the_run_is_deterministic() -> None:
    devices = make_devices(100, seed=4) + storm_gauges(30, district="Xiuzhou", grids=3)
    scenarios: list[Scenario] = [Storm("Xiuzhou"), RoadWorks("Hongbo Rd")]
    one = Simulator(devices, seed=4, start=T0, scenarios=scenarios)
    by_device = Counter(e["device_id"] for e in one.incidents_log)
    assert max(by_device.values()) == 1  # one script per device
    storm_ids = {e["device_id"] for e in one.incidents_log if e["incident"] == "storm"}
    assert {d.id for d in devices if d.kind == "water" and d.district == "Xiuzhou"} == storm_ids
    assert list(one.messages(3600)) == list(Simulator(devices, seed=4, start=T0, scenarios=scenarios).messages(3600))
    plain = Simulator(make_devices(100, seed=4), seed=4, start=T0)
    assert plain.incidents_log == Simulator(make_devices(100, seed=4), seed=4, start=T0, scenarios=()).incidents_log
