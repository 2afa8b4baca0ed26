"""The city's closed loop end to end: devices over a real Mosquitto, the real embedded runner, and a
dispatch system that behaves like one (tests/servers/dispatch.py: a real HTTP server receiving
citywatch's signed webhooks and calling back with its own signed messages).

Discover (an alarm opens an alert, a webhook goes out) -> dispatch (assigned, on_site, rectified come
back signed) -> follow up and close (the device's own readings verify the rectification, or reopen
it). The runner's clock is injected: a test moves it past the follow-up window or a deadline instead
of waiting. Devices report rarely (interval_s one day), so moving the clock does not make them look
offline."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from citywatch.config import Settings
from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device
from citywatch.sinks.store import AlertStore, store_path
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.dispatch import DispatchSystem, new_secret
from tests.servers.mosquitto import MosquittoServer

OUTBOUND = new_secret()
INBOUND = new_secret()
DAY = 86400.0
GAS_WINDOW_S = 30 * 60  # alerts.verification default for gas_level
WATER_WINDOW_S = 120 * 60


def gas(name: str) -> Device:
    return Device(id=name, kind="gas", district="Nanhu", grid="G001", address="12 Zhongshan Rd", interval_s=DAY)


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Loop:
    settings: Settings
    mosquitto: MosquittoServer
    run: RunnerThread
    dispatch: DispatchSystem
    clock: Clock
    seq: dict[str, int] = field(default_factory=dict)

    def publish(self, device: Device, **fields: Any) -> None:
        self.seq[device.id] = self.seq.get(device.id, 0) + 1
        payload = {"ts": round(time.time() - 0.5, 3), "seq": self.seq[device.id], **fields}
        publish_all(self.mosquitto, [(f"citywatch/{device.kind}/{device.id}/telemetry", json.dumps(payload).encode())])

    def alert_of(self, device: Device) -> str:
        runner = self.run.runner
        assert runner is not None
        return str(wait_until(lambda: next((a.id for a in list(runner.engine.by_id.values())
                                            if a.device_id == device.id), None)))

    def types(self, alert_id: str) -> list[str]:
        return [t.partition(".")[2] for t in self.dispatch.types(alert_id)]

    def wait_types(self, alert_id: str, *expected: str) -> list[str]:
        """Wait until the dispatch system has received exactly these webhook types for the alert."""
        wait_until(lambda: self.types(alert_id) == list(expected), timeout=20)
        return self.types(alert_id)

    def move_clock(self, seconds: float) -> None:
        self.clock.offset += seconds

    def stored(self, alert_id: str) -> Any:
        store = AlertStore(store_path(self.settings.data_dir))
        try:
            return next(a for a in store.alerts(None) if a.id == alert_id)
        finally:
            store.close()

    def body(self, alert_id: str, transition: str) -> dict[str, Any]:
        return next(b for b in self.dispatch.received
                    if b["type"] == f"alert.{transition}" and b["alert"]["id"] == alert_id)


@pytest.fixture
def loop_factory(tmp_path: Path, mosquitto: MosquittoServer) -> Iterator[Callable[..., Loop]]:
    started: list[Loop] = []

    def start(devices: list[Device], plans: dict[str, str], level: str = "alert",
              receive: tuple[str, ...] = ("alerts",)) -> Loop:
        clock = Clock()
        sim = DispatchSystem("http://127.0.0.1:9", INBOUND, OUTBOUND, level=level, clock=clock,
                             plan=lambda key, payload: plans.get(key.split("/")[0], plans.get("*")))
        settings = make_settings(
            tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": f"cw-{tmp_path.name}"},
            webhooks={"url": sim.url, "secret": OUTBOUND, "backoff_initial_s": 0.05, "backoff_max_s": 0.5,
                      "receive": list(receive)},
            dispatch={"secret": INBOUND}, alerts={"tick_s": 0.1})
        registry = Registry(registry_path(settings.data_dir))
        for device in devices:
            registry.add(device)
        registry.close()
        run = RunnerThread(settings, clock=clock).start().subscribed()  # each test publishes at once
        assert run.runner is not None
        sim.citywatch_url = f"http://127.0.0.1:{run.runner.api_port}"
        sim.start()
        loop = Loop(settings, mosquitto, run, sim, clock)
        started.append(loop)
        return loop

    yield start
    for loop in started:
        loop.dispatch.stop()
        loop.run.stop()


def test_a_gas_leak_is_dispatched_rectified_verified_by_the_sensor_and_closed(
        loop_factory: Callable[..., Loop]) -> None:
    leak = gas("gas-leak")
    loop = loop_factory([leak], {"gas-leak": "proper"})
    loop.publish(leak, lel_pct=32.0)  # level-1 alarm
    alert_id = loop.alert_of(leak)
    loop.wait_types(alert_id, "opened", "assigned", "on_site", "rectified")
    rectified = loop.body(alert_id, "rectified")["alert"]
    assert rectified["status"] == "verifying"
    assert rectified["loop"]["assignee"] and rectified["loop"]["rectified_at"] and rectified["loop"]["verify_until"]
    assert {s.status for s in loop.dispatch.sent} == {200}  # every message accepted the first time

    # a repeat of the dispatch system's message changes nothing and is answered as before
    assigned = next(s for s in loop.dispatch.sent if s.type == "alert.assigned")
    again = loop.dispatch.resend(assigned)
    assert again.status == 200 and again.repeat and again.response == assigned.response
    # forged, stale and illegal messages are refused and change nothing either
    forged = loop.dispatch.send(json.dumps({"type": "alert.closed", "alert_id": alert_id}).encode(),
                                secret=new_secret(), retry=False)
    stale = loop.dispatch.send(json.dumps({"type": "alert.on_site", "alert_id": alert_id}).encode(),
                               timestamp=loop.clock() - 600, retry=False)
    illegal = loop.dispatch.send(json.dumps({"type": "alert.closed", "alert_id": alert_id}).encode(), retry=False)
    unknown = loop.dispatch.send(json.dumps({"type": "alert.on_site", "alert_id": "al_nope"}).encode(), retry=False)
    assert [forged.status, stale.status, illegal.status, unknown.status] == [401, 400, 409, 404]

    loop.publish(leak, lel_pct=1.5)  # the readings stay clear
    loop.publish(leak, lel_pct=1.2)
    wait_until(lambda: loop.run.runner is not None and loop.run.runner.engine.by_id[alert_id].verified_clear == 2)
    loop.move_clock(GAS_WINDOW_S - 60)
    runner = loop.run.runner
    assert runner is not None
    turns = runner.batches
    wait_until(lambda: runner.batches >= turns + 3)  # several ticks inside the window: nothing may close it early
    assert loop.types(alert_id) == ["opened", "assigned", "on_site", "rectified"]
    loop.move_clock(61)  # the follow-up window has ended, clear all along
    loop.wait_types(alert_id, "opened", "assigned", "on_site", "rectified", "closed")
    closed = loop.body(alert_id, "closed")
    assert closed["alert"]["status"] == "closed" and closed["reason"].startswith("verified")
    alert = loop.stored(alert_id)
    assert alert.status == "closed" and alert.reopened == 0 and alert.closed_by is None  # closed by the sensor
    assert loop.dispatch.forged == 0 and max(loop.dispatch.received_ids.values()) == 1


def test_a_rectification_too_early_is_reopened_at_once_then_verified(loop_factory: Callable[..., Loop]) -> None:
    leak = gas("gas-early")
    loop = loop_factory([leak], {"gas-early": "early"})
    loop.publish(leak, lel_pct=55.0)  # level-2
    alert_id = loop.alert_of(leak)
    loop.wait_types(alert_id, "opened", "assigned", "rectified")  # rectified at once, no on_site
    loop.publish(leak, lel_pct=48.0)  # the sensor still alarms
    # reopened at once (no clock moved), and the team comes back and rectifies again
    loop.wait_types(alert_id, "opened", "assigned", "rectified", "reopened", "on_site", "rectified")
    reopened = loop.body(alert_id, "reopened")
    assert reopened["alert"]["id"] == alert_id and reopened["alert"]["status"] == "assigned"
    assert "condition returned" in reopened["reason"]
    loop.publish(leak, lel_pct=0.8)
    wait_until(lambda: loop.run.runner is not None and loop.run.runner.engine.by_id[alert_id].verified_clear == 1)
    loop.move_clock(GAS_WINDOW_S + 1)
    loop.wait_types(alert_id, "opened", "assigned", "rectified", "reopened", "on_site", "rectified", "closed")
    alert = loop.stored(alert_id)
    assert alert.status == "closed" and alert.reopened == 1  # counted as a failed rectification
    assert loop.body(alert_id, "closed")["alert"]["loop"]["reopened"] == 1  # the dispatch side is told too


def test_a_device_silent_during_verification_makes_it_overdue(loop_factory: Callable[..., Loop]) -> None:
    leak = gas("gas-silent")
    loop = loop_factory([leak], {"gas-silent": "proper"})
    loop.publish(leak, lel_pct=30.0)
    alert_id = loop.alert_of(leak)
    loop.wait_types(alert_id, "opened", "assigned", "on_site", "rectified")
    loop.move_clock(GAS_WINDOW_S + 1)  # nothing from the device all that time
    loop.wait_types(alert_id, "opened", "assigned", "on_site", "rectified", "verification_overdue")
    assert loop.stored(alert_id).status == "verification_overdue"
    loop.publish(leak, lel_pct=1.0)  # the device is back, clear: verification starts again
    loop.wait_types(alert_id, "opened", "assigned", "on_site", "rectified", "verification_overdue", "verifying")


def test_an_alert_dispatch_never_handles_climbs_the_grid_hierarchy(loop_factory: Callable[..., Loop]) -> None:
    leak, handled = gas("gas-ignored"), gas("gas-handled")
    loop = loop_factory([leak, handled], {"gas-ignored": "never", "gas-handled": "proper"})
    loop.publish(leak, lel_pct=30.0)
    loop.publish(handled, lel_pct=30.0)
    ignored_id, handled_id = loop.alert_of(leak), loop.alert_of(handled)
    loop.wait_types(handled_id, "opened", "assigned", "on_site", "rectified")
    loop.publish(handled, lel_pct=1.0)
    assert loop.types(ignored_id) == ["opened"]
    loop.move_clock(6 * 3600 + 1)  # the review deadline (gas warning: 6 h) has passed
    loop.wait_types(ignored_id, "opened", "escalated")
    first = loop.body(ignored_id, "escalated")
    assert "community level" in first["reason"] and first["alert"]["escalations"] == ["review"]
    loop.move_clock(9 * 3600)  # 15 h: the response deadline too
    loop.wait_types(ignored_id, "opened", "escalated", "escalated")
    assert loop.stored(ignored_id).escalation_level == 2  # the district
    # the handled one met the review deadline by its assignment and was closed by its readings
    assert loop.types(handled_id) == ["opened", "assigned", "on_site", "rectified", "closed"]
    assert loop.stored(handled_id).escalation_level == 0


def test_an_incident_is_dispatched_as_one_and_its_members_close_by_their_own_readings(
        loop_factory: Callable[..., Loop]) -> None:
    gauges = [Device(id=f"gauge-{i}", kind="water", district="Nanhu", grid="G007", interval_s=DAY)
              for i in range(6)]
    loop = loop_factory(gauges, {"*": "proper"}, level="incident", receive=("alerts", "incidents"))
    runner = loop.run.runner
    assert runner is not None
    loop.dispatch.hold()  # the dispatch centre acts once the street's gauges have all alarmed
    for gauge in gauges:
        loop.publish(gauge, depth_cm=28.0)  # severe ponding on the whole street
    alert_ids = {loop.alert_of(g) for g in gauges}
    wait_until(lambda: [len(i.members) for i in list(runner.incidents.by_id.values())] == [len(gauges)])
    loop.dispatch.release()
    wait_until(lambda: all(runner.engine.by_id[a].status == "verifying" for a in alert_ids), timeout=20)
    wait_until(loop.dispatch.idle)
    incident_types = [t for t in loop.dispatch.types() if t.startswith("incident.")]
    assert incident_types.count("incident.opened") == 1  # one work order for the street, not six
    [case] = loop.dispatch.cases.values()
    assert case.scope == "incident" and {s.status for s in loop.dispatch.sent} == {200}
    assert [s.type for s in loop.dispatch.sent] == ["incident.assigned", "incident.on_site", "incident.rectified"]
    assigned = loop.dispatch.sent[0]
    assert {t["alert_id"] for t in assigned.response["transitions"] if "alert_id" in t} == alert_ids
    again = loop.dispatch.resend(assigned)  # a repeat of the incident-level message changes nothing
    assert again.status == 200 and again.repeat and again.response == assigned.response
    assert all(runner.engine.by_id[a].status == "verifying" for a in alert_ids)
    for gauge in gauges:
        loop.publish(gauge, depth_cm=0.0)  # drained
    wait_until(lambda: all(runner.engine.by_id[a].verified_clear >= 1 for a in alert_ids))
    loop.move_clock(WATER_WINDOW_S + 1)
    wait_until(lambda: sum(t == "alert.closed" for t in loop.dispatch.types()) == len(gauges), timeout=20)
    wait_until(lambda: "incident.closed" in loop.dispatch.types(case.target))
    assert all(loop.stored(a).status == "closed" for a in alert_ids)
    late = loop.dispatch.send(json.dumps({"type": "incident.on_site", "incident_id": case.target}).encode(),
                              retry=False)
    assert late.status == 409 and late.response["code"] == "illegal_transition"  # anything after closed


def test_a_forced_door_has_nothing_to_measure_and_closes_on_a_persons_confirmation(
        loop_factory: Callable[..., Loop]) -> None:
    door = Device(id="lock-door", kind="lock", district="Nanhu", grid="G001", tenants=2, interval_s=DAY)
    loop = loop_factory([door], {"lock-door": "proper"})
    loop.publish(door, event="forced_open")
    alert_id = loop.alert_of(door)
    loop.wait_types(alert_id, "opened", "assigned", "on_site", "rectified", "closed")
    assert loop.body(alert_id, "rectified")["alert"]["status"] == "rectified"  # awaiting confirmation
    closed = loop.body(alert_id, "closed")
    assert closed["reason"] == "closed: confirmed by dispatch-sim"
    assert loop.stored(alert_id).closed_by == "dispatch-sim"
