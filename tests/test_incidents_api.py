"""Incidents over the runner's API (GET /incidents, /incidents/{id}, behind the bearer token) and the
CLI (`citywatch incidents list|show`), on a real Mosquitto and the real runner; and the Faust
runner's sink, which groups the transitions it consumes into incidents the same way."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from citywatch.cli import main
from citywatch.config import load_settings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device, Finding
from citywatch.streams.faust_sink import TransitionSink
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.mosquitto import MosquittoServer

TOKEN = "incidents-api-token"
DEVICES = [Device(id=f"w-{grid}-{i}", kind="water", district="Nanhu", grid=grid, address=f"{i} Canal St")
           for grid in ("G1", "G2") for i in range(3)]


def call(base: str, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(base + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def reading(device: Device, ts: float, seq: int, depth: float) -> tuple[str, bytes]:
    return (f"citywatch/water/{device.id}/telemetry",
            json.dumps({"ts": round(ts, 3), "seq": seq, "depth_cm": depth}).encode())


def test_incidents_over_the_api_and_the_cli(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-inc-api"},
                             api={"port": 0, "token": TOKEN})
    registry = Registry(registry_path(settings.data_dir))
    for d in DEVICES:
        registry.add(d)
    registry.close()
    base_ts = time.time() - 3600
    run = RunnerThread(settings).start()
    try:
        assert run.runner is not None
        api = f"http://127.0.0.1:{run.runner.api_port}"
        assert call(api, "/incidents") == (200, [])
        publish_all(mosquitto, [reading(d, base_ts + i * 60, 1, 12.0) for i, d in enumerate(DEVICES)])
        wait_until(lambda: len(call(api, "/incidents")[1]) == 2)
        status, found = call(api, "/incidents")
        by_grid = {i["key"]["grid"]: i for i in found}
        assert status == 200 and set(by_grid) == {"G1", "G2"}
        assert [len(by_grid[g]["members"]) for g in ("G1", "G2")] == [3, 3]
        assert by_grid["G1"]["severity"] == "warning" and by_grid["G1"]["status"] == "open"
        g1 = by_grid["G1"]["id"]
        # G1's gauges drain: every member resolves, the incident closes and leaves the open list
        publish_all(mosquitto, [reading(d, base_ts + 600 + i, 2, 0.0) for i, d in enumerate(DEVICES[:3])])
        wait_until(lambda: [i["key"]["grid"] for i in call(api, "/incidents")[1]] == ["G2"])
        status, closed = call(api, f"/incidents/{g1}")  # closed: from the store
        assert status == 200 and closed["status"] == "closed" and closed["closed_at"] is not None
        assert [h["transition"] for h in closed["history"]] == ["opened", "closed"]
        assert {m["status"] for m in closed["members"]} == {"resolved"}
        status, live = call(api, f"/incidents/{by_grid['G2']['id']}")  # open: live from memory
        assert status == 200 and live["status"] == "open" and [h["transition"] for h in live["history"]] == ["opened"]
        status, everything = call(api, "/incidents?all=1")
        assert status == 200 and {i["id"] for i in everything} == {g1, by_grid["G2"]["id"]}
        assert len(call(api, "/incidents?all=1&limit=1")[1]) == 1
        assert call(api, "/incidents?limit=0")[0] == 400
        assert call(api, "/incidents?limit=many")[0] == 400
        assert call(api, "/incidents/in_0000000000000000")[0] == 404
        assert call(api, "/incidents", token=None)[0] == 401
        assert call(api, f"/incidents/{g1}", token="wrong")[0] == 401
    finally:
        run.stop()
    cli = CliRunner()
    data = ["--data-dir", str(settings.data_dir)]
    listed = cli.invoke(main, [*data, "incidents", "list"])
    assert listed.exit_code == 0, listed.output
    lines = [line for line in listed.stdout.splitlines() if line.startswith("in_")]
    assert len(lines) == 1 and "grid=G2" in lines[0] and "members 3/3 open" in lines[0]
    every = cli.invoke(main, [*data, "incidents", "list", "--all", "--json"])
    assert every.exit_code == 0 and {i["id"] for i in json.loads(every.stdout)} == {g1, by_grid["G2"]["id"]}
    shown = cli.invoke(main, [*data, "incidents", "show", g1])
    assert shown.exit_code == 0, shown.output
    assert f"incident {g1}: closed, warning, water" in shown.stdout and "members (0 of 3 open)" in shown.stdout
    assert all(d.id in shown.stdout for d in DEVICES[:3]) and "\tclosed\t" in shown.stdout
    as_json = json.loads(cli.invoke(main, [*data, "incidents", "show", g1, "--json"]).stdout)
    assert as_json["id"] == g1 and [h["transition"] for h in as_json["history"]] == ["opened", "closed"]
    missing = cli.invoke(main, [*data, "incidents", "show", "in_nope"])
    assert missing.exit_code == 1 and "no incident in_nope" in missing.output


def test_the_faust_sink_groups_transitions_once_whatever_kafka_redelivers(tmp_path: Path) -> None:
    """The sink is the one consumer of every partition's transitions: it groups them into incidents in
    the store's transaction; a redelivered batch (after a rebalance) changes nothing; a restarted sink
    resumes the open incidents."""
    settings = load_settings(None, {"data_dir": tmp_path / "data"})
    engine = AlertEngine(settings.alerts)
    t0 = 1_795_000_000.0
    transitions = [engine.apply(d, Finding("water_depth", True, "info", 5.0, 3.0, "water at 5 cm"), t0 + i)
                   for i, d in enumerate(DEVICES)]
    sink = TransitionSink(settings)
    try:
        out = sink.write([t for t in transitions if t is not None])
        assert [t.transition for t in out.incident_transitions] == ["opened", "opened"]
        again = sink.write([t for t in transitions if t is not None])  # Kafka redelivers the batch
        assert again.transitions == [] and again.incident_transitions == []
        assert len(sink.store.open_incidents()) == 2
    finally:
        sink.close()
    late = engine.apply(Device(id="w-G1-9", kind="water", district="Nanhu", grid="G1"),
                        Finding("water_depth", True, "critical", 30.0, 3.0, "water at 30 cm"), t0 + 60)
    assert late is not None
    sink = TransitionSink(settings)  # a restarted sink
    try:
        out = sink.write([late])
        assert [t.transition for t in out.incident_transitions] == ["updated"]  # joined G1's incident
        g1 = [i for i in sink.store.open_incidents() if i.key["grid"] == "G1"]
        assert len(g1) == 1 and len(g1[0].members) == 4 and g1[0].severity == "critical"
        rows = sink.store.conn.execute("SELECT COUNT(*), COUNT(DISTINCT alert_id) FROM incident_members").fetchone()
        assert rows == (7, 7)
    finally:
        sink.close()
