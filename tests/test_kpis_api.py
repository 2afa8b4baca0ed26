"""GET /kpis over real HTTP from a running `citywatch run` (embedded runner, real Mosquitto) whose store
holds the scripted day of tests/loop_script.py; the runner's clock is injected (the end of that day)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from citywatch.apitoken import api_token
from citywatch.devices.registry import Registry, registry_path
from citywatch.loop import kpis
from citywatch.sinks.store import store_path
from tests.conftest import RunnerThread, make_settings
from tests.loop_script import DEVICES, END, run_loop
from tests.servers.mosquitto import MosquittoServer

NOW = END + 60.0


def get(url: str, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            assert response.headers["Content-Type"].startswith("application/json")
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_kpis_over_http(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-kpis"})
    registry = Registry(registry_path(settings.data_dir))
    registry.add_many([(d, None) for d in DEVICES.values()])
    registry.close()
    run_loop(settings, settings.data_dir)
    runner = RunnerThread(settings, clock=lambda: NOW).start()
    try:
        assert runner.runner is not None
        base = f"http://127.0.0.1:{runner.runner.api_port}/kpis"
        token = api_token(settings.api, settings.data_dir, create=False)
        assert get(f"{base}?by=district", None)[0] == 401
        assert get(f"{base}?by=district", "wrong")[0] == 401

        status, body = get(f"{base}?by=district&since=1221m", token)  # back to 20 min before T0
        assert status == 200
        start = NOW - 1221 * 60
        assert body["since"] == "2026-11-18T10:46:40Z" and body["until"] == "2026-11-19T07:07:40Z"
        conn = kpis.open_readonly(store_path(settings.data_dir))
        try:
            assert body == kpis.compute(conn, start, NOW, ["district"], settings.data_dir)
        finally:
            conn.close()
        assert body["by"] == ["district"] and body["total"]["finished"] == 6
        assert body["total"]["closed_at_grid_level"] == {"n": 4, "count": 3, "share": 0.75}
        assert [g["key"] for g in body["groups"]] == [{"city": "Jiaxing", "district": "Nanhu"},
                                                     {"city": "Jiaxing", "district": "Xiuzhou"}]

        status, grids = get(f"{base}?by=grid&since=2d&archive=0", token)
        assert status == 200 and {g["key"]["grid"]: g["finished"] for g in grids["groups"]} == {
            "G1": 2, "G2": 1, "G3": 1, "G9": 2}
        status, recent = get(f"{base}?by=kind", token)  # default since: 24 h
        assert status == 200 and recent["total"]["opened"] == 7
        status, late = get(f"{base}?by=city&since=10h", token)  # from T0 + 10 h 1 min: only F finished
        assert status == 200 and late["total"]["finished"] == 1 and late["groups"][0]["key"] == {"city": "Jiaxing"}

        for query, message in (("by=street", "unknown 'street'"), ("since=yesterday", "duration"),
                               ("archive=maybe", "archive"), ("by=grid,grid", "twice"),
                               ("since=99999999w", "at most 3660d")):
            status, error = get(f"{base}?{query}", token)
            assert status == 400 and message in error["error"], (query, error)
    finally:
        runner.stop()
