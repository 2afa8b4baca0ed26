"""Issue 14, item 1's acceptance: a storm through a real Mosquitto and the real runner, with a real HTTP
receiver as the dispatch system's endpoint taking incidents only (`receive: [incidents]`).

200 water gauges across 8 grids of one district rise within 20 minutes (event time): each opens
one alert (light ponding, info), raised to moderate (warning) and severe (critical). The dispatch
endpoint must receive at most one incident opening per grid, plus severity updates; every gauge's
alert must be listed in its grid's incident; and a restart of the runner mid-storm (stopped while
the second half of the readings is being published, so the broker holds the rest for its
persistent session; and, in the second test, killed with SIGKILL) must lose nothing and open no
second incident for a grid.

Parameters (explicit, kept small so each test takes seconds): 8 grids x 25 gauges, 6 readings a
gauge one minute apart (1,200 messages), each gauge starting within the first 15 minutes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device
from citywatch.sinks.store import store_path
from citywatch.sinks.webhooks import verify
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.runner_process import RunnerProcess
from tests.servers.mosquitto import MosquittoServer
from tests.servers.receiver import WebhookReceiver

GRIDS = [f"G{g:02d}" for g in range(1, 9)]
PER_GRID = 25
DEPTHS = (0.0, 4.0, 8.0, 12.0, 20.0, 30.0)  # cm: opens at 3 (info), moderate at 10, severe at 25
START_SPREAD_S = 15 * 60  # gauges start rising within 15 min; each rises for 5 min: all within 20 min
SECRET = "whsec_" + "c3Rvcm0tZGlzcGF0Y2gtc2VjcmV0LWtleS0wMDE="
TOKEN = "storm-token"
HOOKS = {"secret": SECRET, "receive": ["incidents"], "backoff_initial_s": 0.05, "backoff_max_s": 0.5}


def gauges() -> list[Device]:
    return [Device(id=f"w-{grid}-{i:02d}", kind="water", district="Nanhu", grid=grid, address=f"{i} {grid} Rd",
                   lat=30.75 + GRIDS.index(grid) / 100, lon=120.75 + i / 1000)
            for grid in GRIDS for i in range(PER_GRID)]


def storm(devices: list[Device], base: float) -> list[tuple[str, bytes]]:
    """Every reading of the storm in event-time order (as a real storm arrives)."""
    rng = random.Random(14)
    readings = []
    for d in devices:
        start = base + rng.uniform(0, START_SPREAD_S)
        for k, depth in enumerate(DEPTHS):
            ts = round(start + k * 60, 3)
            body = {"ts": ts, "seq": k + 1, "battery": 80.0, "depth_cm": depth}
            readings.append((ts, f"citywatch/water/{d.id}/telemetry", json.dumps(body).encode()))
    readings.sort()
    return [(topic, payload) for _, topic, payload in readings]


def register(data_dir: Path, devices: list[Device]) -> None:
    registry = Registry(registry_path(data_dir))
    for d in devices:
        registry.add(d)
    registry.close()


def read(data_dir: Path, sql: str) -> list[Any]:
    conn = sqlite3.connect(f"file:{store_path(data_dir)}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def committed_readings(data_dir: Path) -> int:
    try:
        rows = read(data_dir, "SELECT value FROM counters WHERE name = 'readings'")
    except sqlite3.OperationalError:
        return 0
    return int(rows[0][0]) if rows else 0


def undelivered(data_dir: Path) -> int:
    return int(read(data_dir, "SELECT COUNT(*) FROM webhook_outbox WHERE status != 'delivered'")[0][0])


def get(base: str, path: str) -> Any:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver().start()
    yield r
    r.stop()


def check_storm(receiver: WebhookReceiver, data_dir: Path, devices: list[Device], api: str) -> dict[str, int]:
    """The acceptance: what the dispatch endpoint got, and what the store and the API hold."""
    requests = list(receiver.requests)
    assert all(verify(SECRET, headers, body) for headers, body in requests)  # signed, fresh
    first: dict[str, dict[str, Any]] = {}
    for headers, body in requests:  # a redelivery repeats a webhook-id with the same body: the receiver drops it
        first.setdefault(headers["webhook-id"], json.loads(body))
    hooks = list(first.values())
    assert hooks and all(h["type"].startswith("incident.") for h in hooks)  # receive: [incidents]: no alert
    opened: dict[str, set[str]] = defaultdict(set)
    updates: dict[str, list[str]] = defaultdict(list)
    for h in sorted(hooks, key=lambda h: (h["incident"]["id"], int(h["id"].split(".")[1]))):
        incident = h["incident"]
        grid = incident["key"]["grid"]
        assert incident["key"] == {"group": "water", "grid": grid}
        if h["transition"] == "opened":
            opened[grid].add(incident["id"])
        else:
            assert h["transition"] == "updated", h
            updates[incident["id"]].append(incident["severity"])
    assert {grid: len(ids) for grid, ids in opened.items()} == dict.fromkeys(GRIDS, 1)  # one opening per grid
    assert all(sev in (["warning", "critical"], ["critical"]) for sev in updates.values()), updates
    # every gauge's alert is listed in its grid's incident (the API, then the store's membership)
    incidents = get(api, "/incidents")
    assert len(incidents) == len(GRIDS)
    by_grid = {i["key"]["grid"]: i for i in incidents}
    for grid in GRIDS:
        members = by_grid[grid]["members"]
        assert sorted(m["device_id"] for m in members) == sorted(d.id for d in devices if d.grid == grid)
        assert {(m["rule"], m["severity"], m["status"]) for m in members} == {("water_depth", "critical", "open")}
        assert by_grid[grid]["severity"] == "critical" and by_grid[grid]["id"] in opened[grid]
    one = get(api, f"/incidents/{by_grid[GRIDS[0]]['id']}")
    assert [h["transition"] for h in one["history"]][0] == "opened" and len(one["members"]) == PER_GRID
    alerts = read(data_dir, "SELECT a.id, a.device_id, m.incident_id FROM alerts AS a"
                            " LEFT JOIN incident_members AS m ON m.alert_id = a.id")
    assert len(alerts) == len(devices) and {device for _, device, _ in alerts} == {d.id for d in devices}
    assert all(incident_id == by_grid[device.split("-")[1]]["id"] for _, device, incident_id in alerts)
    assert read(data_dir, "SELECT COUNT(*), COUNT(DISTINCT alert_id) FROM incident_members")[0] == (200, 200)
    assert read(data_dir, "SELECT COUNT(*) FROM incidents")[0][0] == len(GRIDS)  # no second incident for a grid
    transitions = read(data_dir, "SELECT transition, COUNT(*) FROM transitions GROUP BY transition")
    assert dict(transitions) == {"opened": 200, "updated": 400}  # nothing lost, nothing twice
    assert committed_readings(data_dir) == len(devices) * len(DEPTHS)
    return {"requests": len(requests), "webhooks": len(hooks), "opened": sum(len(v) for v in opened.values()),
            "updated": sum(len(v) for v in updates.values())}


def test_storm_one_incident_per_grid_across_a_restart(tmp_path: Path, mosquitto: MosquittoServer,
                                                      receiver: WebhookReceiver) -> None:
    devices = gauges()
    messages = storm(devices, base=time.time() - 2 * 3600)
    half = len(messages) // 2
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-storm"},
                             webhooks={"url": receiver.url, **HOOKS}, api={"port": 0, "token": TOKEN})
    register(settings.data_dir, devices)
    started = time.monotonic()
    run = RunnerThread(settings).start().subscribed()
    try:
        publish_all(mosquitto, messages[:half])
        wait_until(lambda: committed_readings(settings.data_dir) >= half, timeout=30)
        rest = threading.Thread(target=publish_all, args=(mosquitto, messages[half:]))
        rest.start()  # the storm goes on while the runner stops: the broker keeps the rest for its session
    finally:
        run.stop()
    stopped_at = committed_readings(settings.data_dir)
    rest.join(30)
    run = RunnerThread(settings).start()  # the same data dir and MQTT session
    try:
        wait_until(lambda: committed_readings(settings.data_dir) >= len(messages), timeout=30)
        wait_until(lambda: undelivered(settings.data_dir) == 0, timeout=30)
        assert run.runner is not None
        figures = check_storm(receiver, settings.data_dir, devices, f"http://127.0.0.1:{run.runner.api_port}")
        # dispatch on one grid's incident: every member assigned, one incident webhook, not 25
        incident_id = next(iter(run.runner.incidents.by_id))
        result = run.call(lambda: run.runner.dispatch_incident(incident_id, "assigned", "dispatch",  # type: ignore
                                                                assignee="drainage crew 4"))
        assert len(result.applied) == PER_GRID and result.transition.incident.status == "assigned"
        wait_until(lambda: any(json.loads(b)["type"] == "incident.assigned" for _, b in list(receiver.requests)))
    finally:
        run.stop()
    print(f"\nstorm: {len(messages)} readings, {len(devices)} gauges, {len(GRIDS)} grids; runner stopped after "
          f"{stopped_at} committed readings; dispatch endpoint got {figures} "
          f"in {time.monotonic() - started:.1f} s")


def test_storm_survives_a_kill_mid_storm(tmp_path: Path, mosquitto: MosquittoServer,
                                         receiver: WebhookReceiver) -> None:
    """The runner killed with SIGKILL mid-storm (batches in flight, webhooks maybe sent but not marked):
    the restarted runner loads the open incidents and their members, the broker redelivers what was not
    committed, and the grouping yields the same ids, so nothing is lost and no grid gets a second incident."""
    devices = gauges()
    messages = storm(devices, base=time.time() - 2 * 3600)
    data_dir = tmp_path / "data"
    register(data_dir, devices)
    sections = {"webhooks": {"url": receiver.url, **HOOKS}, "api": {"token": TOKEN},
                "ingest": {"batch_size": 50}}
    first = RunnerProcess(tmp_path / "run1", data_dir, mosquitto.url, "cw-storm-kill", **sections).start()
    try:
        first.wait_healthy()
        publisher = threading.Thread(target=publish_all, args=(mosquitto, messages))
        publisher.start()
        wait_until(lambda: committed_readings(data_dir) >= len(messages) // 2, timeout=30)
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGKILL)
        first.wait_exit(10)
    finally:
        first.stop()
    killed_at = committed_readings(data_dir)
    publisher.join(30)
    second = RunnerProcess(tmp_path / "run2", data_dir, mosquitto.url, "cw-storm-kill", **sections).start()
    try:
        second.wait_healthy()
        wait_until(lambda: committed_readings(data_dir) >= len(messages), timeout=30)
        wait_until(lambda: undelivered(data_dir) == 0, timeout=30)
        figures = check_storm(receiver, data_dir, devices, second.base)
    finally:
        second.stop()
    assert killed_at < len(messages)  # the kill really came mid-storm
    print(f"\nstorm with SIGKILL after {killed_at} committed readings: dispatch endpoint got {figures}")
