"""Silences on the dashboards: the runner writes them to a real InfluxDB (influxd 1.6.7 behind the
v2-write bridge) and the Grafana panel's InfluxQL lists exactly the silences in force or scheduled,
narrowed by the dashboard's variables. A silence stored while no runner ran is written at start."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from citywatch.apitoken import api_token
from citywatch.cli import main
from citywatch.dashboards import queries as q
from citywatch.dashboards.silences_panel import silences_in_force
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.servers.influx import InfluxStack
from tests.servers.mosquitto import MosquittoServer
from tests.test_silences_e2e import http

TOKEN = "test-token"


def panel_rows(stack: InfluxStack, end: float, **variables: Any) -> list[dict[str, Any]]:
    text = q.substitute(silences_in_force().query, time_filter=f"time <= {int(end * 1000)}ms", interval="1m",
                        range_end_s=end, variables=variables)
    return stack.query(text)


def written(rows: list[dict[str, Any]], ids: set[str], road: str, short: str) -> list[dict[str, Any]] | None:
    """The rows once every silence, in its last version, is queryable: CI once read all four ids
    but the road works' row without its `grid` column (`SELECT *` takes its columns from influxd's
    index, which can trail the points), and the pipe's end is a second write of its point."""
    by_id = {r["silence"]: r for r in rows}
    if set(by_id) != ids or by_id[road].get("grid") is None or by_id[short].get("ended") is not True:
        return None
    return rows


def test_the_runner_writes_silences_and_the_panel_lists_those_in_force(tmp_path: Path,
                                                                      mosquitto: MosquittoServer) -> None:
    stack = InfluxStack(tmp_path / "influx", token=TOKEN).start()
    try:
        settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-sil-dash"},
                                 influx={"url": stack.url, "token": TOKEN, "bucket": stack.db,
                                         "flush_interval_ms": 50})
        cli = CliRunner()
        before = cli.invoke(main, ["--data-dir", str(settings.data_dir), "silences", "add", "--device", "gas-9",
                                   "--for", "2h", "--reason", "calibration gas", "--by", "tech-2", "--json"])
        assert before.exit_code == 0, before.output  # no runner yet: stored directly
        calibration = json.loads(before.output)
        run = RunnerThread(settings).start()
        assert run.runner is not None
        try:
            token = api_token(settings.api, settings.data_dir, create=False)
            assert token
            base = f"http://127.0.0.1:{run.runner.api_port}/silences"
            now = time.time()
            road = http("POST", base, token, {"grid": "G7", "kind": ["noise", "water"], "duration": "3h",
                                              "reason": "road works", "by": "works-office"})[1]
            later = http("POST", base, token, {"district": "Nanhu", "start": now + 86400, "duration": "1d",
                                               "reason": "festival", "by": "events"})[1]
            short = http("POST", base, token, {"grid": "G8", "duration": "1h", "reason": "pipe", "by": "water-co"})[1]
            status, ended = http("POST", f"{base}/{short['id']}/end", token, {"by": "water-co"})
            assert status == 200 and ended["state"] == "ended"
            ids = {calibration["id"], road["id"], later["id"], short["id"]}
            points = wait_until(lambda: written(stack.query('SELECT * FROM "silences"'), ids, road["id"], short["id"]))
        finally:
            run.stop()
        by_id = {r["silence"]: r for r in points}
        assert by_id[road["id"]]["scope"] == "grid=G7 kind=noise|water" and by_id[road["id"]]["grid"] == "G7"
        assert by_id[road["id"]]["reason"] == "road works" and by_id[road["id"]]["author"] == "works-office"
        assert by_id[short["id"]]["ended"] is True and by_id[short["id"]]["end_s"] < now + 60  # rewritten on end
        assert by_id[calibration["id"]]["covers_safety"] is True and by_id[calibration["id"]]["device"] == "gas-9"

        end = time.time() + 60  # the range ends a minute later (${__to} has whole seconds)
        listed = panel_rows(stack, end)
        assert {r["silence"] for r in listed} == {calibration["id"], road["id"], later["id"]}  # not the ended one
        assert not set(silences_in_force().columns) - set(listed[0])
        row = next(r for r in listed if r["silence"] == road["id"])
        assert abs(row["ends"] / 1000 - (now + 3 * 3600)) < 60
        assert {r["silence"] for r in panel_rows(stack, end, grid="G7")} == {road["id"]}
        assert {r["silence"] for r in panel_rows(stack, end, district="Nanhu")} == {later["id"]}
        assert panel_rows(stack, end + 4 * 3600, grid="G7") == []  # past its end
    finally:
        stack.stop()
