"""Grafana dashboards as code, every panel's query checked against a real InfluxDB with real data.

Grafana cannot run on this machine, so the dashboards are built as code and each panel is proved
the way Grafana would use it: a simulated city day (incidents, operators acknowledging and
resolving, a device going silent, a last will, a dying battery) goes through the real pipeline
core (`Pipeline.process` / `tick`, the alert engine) and the real InfluxDB sink into a real influxd
1.6.7 (through the v2-write bridge); then every panel's InfluxQL runs against it with Grafana's
template variables substituted ("All" and concrete values), and must return rows with the columns
the panel reads. influxd missing is a failure, not a skip.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard
from pydantic import SecretStr

from citywatch.config import InfluxSettings
from citywatch.dashboards import queries as q
from citywatch.dashboards.build import DATASOURCE_YAML, build_files, dashboard, stale
from citywatch.dashboards.cli import dashboards
from citywatch.dashboards.panels import RESPONSE_S, REVIEW_S, DashboardSpec, all_dashboards
from citywatch.dashboards.scenario import CityRun, run_city
from citywatch.kinds.noise import NoiseRules
from citywatch.model import Device, Output
from citywatch.sinks import lineprotocol as points
from citywatch.sinks.influx import InfluxSink
from tests.servers.influx import InfluxStack
from tests.servers.mosquitto import free_port

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "grafana"
TOKEN = "test-token"
INTERVAL = "10m"
SPECS = all_dashboards()
OPEN_TABLE = "Open alerts: age against deadlines"


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InfluxStack, CityRun]]:
    tmp = tmp_path_factory.mktemp("city")
    stack = InfluxStack(tmp / "influx", token=TOKEN).start()
    try:
        run = run_city()
        settings = InfluxSettings(url=stack.url, token=SecretStr(TOKEN), bucket=stack.db, batch_size=5000,
                                  flush_interval_ms=50, timeout_ms=10000)
        with InfluxSink(settings, tmp / "sink") as sink:
            for i in range(0, len(run.lines), 5000):
                sink.add(run.lines[i:i + 5000])
            assert sink.drain(120)
            assert sink.stats()["written_lines"] == len(run.lines)
        yield stack, run
    finally:
        stack.stop()


def grafana_time_filter(start: float, end: float) -> str:
    """What Grafana puts for $timeFilter with an absolute range."""
    return f"time >= {int(start * 1000)}ms and time <= {int(end * 1000) + 1}ms"


def run_query(stack: InfluxStack, run: CityRun, query: str, **variables: Any) -> list[dict[str, Any]]:
    text = q.substitute(query, time_filter=grafana_time_filter(run.start - 60, run.end), interval=INTERVAL,
                        range_end_s=run.end, variables=variables)
    assert "$" not in text.replace("$/", "/"), text
    return stack.query(text)


def targets_of(spec: DashboardSpec) -> list[tuple[str, q.Target]]:
    return spec.targets()


def target(title: str, ref_id: str = "A") -> q.Target:
    found = [t for spec in SPECS for name, t in spec.targets() if name == title and t.ref_id == ref_id]
    assert len(found) == 1, f"{title}/{ref_id}: {len(found)} targets"
    return found[0]


def columns(rows: list[dict[str, Any]]) -> set[str]:
    return set().union(*(row.keys() for row in rows)) if rows else set()


def value(stack: InfluxStack, run: CityRun, title: str, column: str, **variables: Any) -> Any:
    rows = run_query(stack, run, target(title).query, **variables)
    return rows[0][column] if rows else 0


# -- the files --------------------------------------------------------------------------------------


def test_build_is_deterministic_and_the_committed_files_are_fresh() -> None:
    first, second = build_files(), build_files(all_dashboards())
    assert first == second
    assert set(first) == {"dashboards/citywatch-city.json", "dashboards/citywatch-sensors.json",
                          "dashboards/citywatch-health.json", "provisioning/datasources/citywatch.yaml",
                          "provisioning/dashboards/citywatch.yaml", "PANELS.md"}
    problems = stale(DEPLOY)
    assert not problems, f"deploy/grafana is stale ({problems}): run `citywatch dashboards build`"


def test_provisioning_points_grafana_at_influxdb_with_influxql_and_the_token_from_env() -> None:
    import yaml

    ds = yaml.safe_load(DATASOURCE_YAML)["datasources"][0]
    assert (ds["type"], ds["uid"], ds["jsonData"]["version"], ds["jsonData"]["dbName"]) == (
        "influxdb", q.DATASOURCE_UID, "InfluxQL", "citywatch")
    assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Token ${CITYWATCH_INFLUX__TOKEN}"
    provider = yaml.safe_load((DEPLOY / "provisioning/dashboards/citywatch.yaml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards" and provider["type"] == "file"


def _used_names(panel: dict[str, Any]) -> set[str]:
    """Field names the panel configuration refers to (overrides, layers, transformations)."""
    names: set[str] = set()
    for override in panel["fieldConfig"]["overrides"]:
        if override["matcher"]["id"] == "byName":
            names.add(override["matcher"]["options"])
    for layer in (panel.get("options") or {}).get("layers", []):
        names |= {layer["location"]["latitude"], layer["location"]["longitude"]}
        style = layer["config"]["style"]
        names |= {style[k]["field"] for k in ("color", "text") if style.get(k, {}).get("field")}
    for tr in panel.get("transformations", []):
        if tr["id"] == "calculateField":
            names |= {tr["options"]["binary"]["left"], tr["options"]["binary"]["right"]}
        if tr["id"] == "organize":
            names |= set(tr["options"]["indexByName"]) | set(tr["options"]["excludeByName"])
    options = panel.get("options") or {}
    if options.get("xField"):
        names.add(options["xField"])
    for sort in options.get("sortBy", []):
        names.add(sort["displayName"])
    return names


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.uid)
def test_dashboard_json_is_grafana_json_using_only_columns_its_queries_return(spec: DashboardSpec) -> None:
    register_default_plugins()
    built = dashboard(spec)
    # The SDK's own model reads it back unchanged (panels, targets, variables).
    back = json.loads(json.dumps(Dashboard.from_json(built), cls=JSONEncoder))
    assert [p["type"] for p in back["panels"]] == [p["type"] for p in built["panels"]]
    assert [p.get("targets") for p in back["panels"]] == [p.get("targets") for p in built["panels"]]
    assert {v["name"] for v in built["templating"]["list"]} == {"district", "grid", "kind"}
    for var in built["templating"]["list"]:
        assert var["includeAll"] and var["multi"] and var["allValue"] == ".*"
        assert var["datasource"]["uid"] == q.DATASOURCE_UID
    ids = [p["id"] for p in built["panels"]]
    assert len(ids) == len(set(ids))
    by_title = {p["title"]: p for p in built["panels"] if p["type"] != "row"}
    for title, t in spec.targets():
        panel = by_title[title]
        assert t.to_json() in panel["targets"]
        assert panel["datasource"]["uid"] == q.DATASOURCE_UID
        assert panel["gridPos"]["x"] >= 0 and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for var in ("$district", "$grid", "$kind"):
            assert f"/^{var}$/" in t.query, f"{title}: {var} not applied"
    for title, panel in by_title.items():
        provided = {c for _, t in spec.targets() if _ == title for c in t.columns}
        provided |= {"Time"} | {f"zone {z}" for z in NoiseRules().limits}  # the noise series aliases
        provided |= {tr["options"]["alias"] for tr in panel.get("transformations", [])
                     if tr["id"] == "calculateField"}
        missing = _used_names(panel) - provided
        assert not missing, f"{title} uses {missing}, which none of its queries returns"


# -- the queries against real data -------------------------------------------------------------------


def test_scenario_lines_carry_what_the_dashboards_need() -> None:
    device = Device(id="g-1", kind="gas", district="Nanhu", grid="G1", lat=30.75, lon=120.75)
    out = Output()
    out.statuses.append((device, "online", 1700000000.0))
    [line] = points.lines_for(out)
    assert line == ("device_status,device=g-1,district=Nanhu,grid=G1,kind=gas online=true,lat=30.75,lon=120.75 "
                    "1700000000000000000")


def test_every_panel_query_returns_the_columns_its_panel_uses(city: tuple[InfluxStack, CityRun]) -> None:
    stack, run = city
    checked = 0
    for spec in SPECS:
        for title, t in spec.targets():
            rows = run_query(stack, run, t.query)
            assert rows, f"{spec.uid} / {title} / {t.ref_id}: no rows\n{t.query}"
            missing = set(t.columns) - columns(rows)
            assert not missing, f"{spec.uid} / {title} / {t.ref_id}: no column {missing} in {sorted(columns(rows))}"
            checked += 1
    assert checked >= 40


def test_template_variable_queries_list_the_city(city: tuple[InfluxStack, CityRun]) -> None:
    stack, run = city
    districts = {r["value"] for r in run_query(stack, run, q.VARIABLE_QUERIES["district"])}
    assert districts == {d.district for d in run.devices}
    kinds = {r["value"] for r in run_query(stack, run, q.VARIABLE_QUERIES["kind"])}
    assert kinds == {"gas", "noise", "water", "parking", "lock", "smoke"}
    one = sorted(districts)[0]
    grids = {r["value"] for r in run_query(stack, run, q.VARIABLE_QUERIES["grid"], district=one)}
    assert grids == {d.grid for d in run.devices if d.district == one}
    assert {r["value"] for r in run_query(stack, run, q.VARIABLE_QUERIES["grid"])} == {d.grid for d in run.devices}


def test_concrete_variables_narrow_every_panel(city: tuple[InfluxStack, CityRun]) -> None:
    stack, run = city
    forced = next(d for d in run.devices if d.id == run.planted["ignored_forced_open"])
    narrowed = 0
    for chosen in ({"district": forced.district}, {"district": forced.district, "grid": forced.grid, "kind": "lock"},
                   {"district": [forced.district, "Nanhu"], "kind": ["lock", "gas"]}):
        allowed = {k: set(v) if isinstance(v, list) else {v} for k, v in chosen.items()}
        for spec in SPECS:
            for title, t in spec.targets():
                rows = run_query(stack, run, t.query, **chosen)
                if not rows:
                    continue
                narrowed += 1
                assert not set(t.columns) - columns(rows), f"{title}: {set(t.columns) - columns(rows)}"
                for row in rows:
                    for key, values in allowed.items():
                        if key in row and row[key] is not None:
                            assert row[key] in values, f"{title}: {key}={row[key]} with {chosen}"
    assert narrowed > 40
    # the device's grid and kind: exactly its open alerts, and only its district's devices on the map
    rows = run_query(stack, run, target(OPEN_TABLE).query, district=forced.district, grid=forced.grid, kind="lock")
    expected = [a for a in run.open_alerts if a.device.get("grid") == forced.grid and a.kind == "lock"]
    assert sorted((r["device"], r["rule"]) for r in rows) == sorted((a.device_id, a.rule) for a in expected)
    devices = run_query(stack, run, target("City map").query, district=forced.district)
    assert {r["device"] for r in devices} == {d.id for d in run.devices if d.district == forced.district}


def test_variable_values_are_escaped_like_grafana_does(city: tuple[InfluxStack, CityRun]) -> None:
    stack, run = city
    odd = Device(id="odd-1", kind="water", district="Pu dong, East=1/2 (north)", grid="G 1.5", lat=31.2, lon=121.5)
    out = Output()
    out.statuses.append((odd, "offline", run.end - 10))
    stack.server.create_database("odd")
    body = "\n".join(points.lines_for(out)).encode()
    request = urllib.request.Request(f"{stack.server.url}/write?db=odd", data=body, method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    query = target("City map").query
    for district, found in ((odd.district, 1), ("Pu dong", 0), ([odd.district, "Nanhu"], 1), (None, 1)):
        text = q.substitute(query, time_filter=grafana_time_filter(run.start, run.end), interval=INTERVAL,
                            range_end_s=run.end, variables={"district": district, "grid": "G 1.5"})
        assert len(stack.server.query(text, "odd")) == found, (district, text)
    assert q.regex_value("a.b/c (d)") == r"a\.b\/c \(d\)" and q.regex_value(["a", "b|c"]) == r"(a|b\|c)"


def test_figures_agree_with_the_pipeline(city: tuple[InfluxStack, CityRun]) -> None:
    stack, run = city
    open_ = run.open_alerts
    age = {a.id: run.end - a.opened_at for a in open_}
    assert value(stack, run, "Open alerts", "open_alerts") == len(open_) >= 6
    assert value(stack, run, "Critical open", "critical") == sum(a.severity == "critical" for a in open_) >= 2
    past_review = sum(a.status == "open" and age[a.id] > REVIEW_S for a in open_)
    past_response = sum(age[a.id] > RESPONSE_S for a in open_)
    assert value(stack, run, "Unacknowledged past 6 h", "past_review") == past_review >= 1
    assert value(stack, run, "Unresolved past 15 h", "past_response") == past_response >= 2
    offline = {a.device_id for a in open_ if a.rule == "device_offline"}
    assert offline == {run.planted["silent"], run.planted["last_will"]}
    assert value(stack, run, "Devices offline", "offline") == 2
    assert value(stack, run, "Low battery now", "low_battery") >= 1
    table = run_query(stack, run, target(OPEN_TABLE).query)
    assert {(r["device"], r["rule"]): (r["severity"], r["status"]) for r in table} == {
        (a.device_id, a.rule): (a.severity, a.status) for a in open_}
    for r in table:
        a = next(a for a in open_ if (a.device_id, a.rule) == (r["device"], r["rule"]))
        assert r["age_h"] == pytest.approx(age[a.id] / 3600, abs=1 / 3600)
    layer = run_query(stack, run, target("City map", "B").query)
    assert {(r["device"], r["lat"], r["lon"]) for r in layer} == {
        (a.device_id, a.device["lat"], a.device["lon"]) for a in open_}
    devices = run_query(stack, run, target("City map").query)
    assert {(r["device"], r["lat"], r["lon"]) for r in devices} == {(d.id, d.lat, d.lon) for d in run.devices}
    assert {r["device"] for r in devices if r["online"] is False} == {run.planted["last_will"]}
    acks = run_query(stack, run, target("Time to acknowledge").query)
    assert acks[0]["acknowledge_count"] == run.acknowledged > 0
    assert value(stack, run, "Devices reporting", "devices") == len(run.devices)
    by_district = {r["district"]: r["alerts"] for r in run_query(stack, run, target("Alerts by district").query)}
    opened = sum(run.counters.get(f"transitions.{k}", 0) for k in ("opened", "flapping"))
    assert sum(by_district.values()) == opened and len(by_district) == len({d.district for d in run.devices})
    offline_rows = run_query(stack, run, target("Offline devices").query)
    assert {r["device"] for r in offline_rows} == offline


def test_the_datasource_uid_is_the_only_one_used() -> None:
    for rel, text in build_files().items():
        if rel.endswith(".json"):
            uids = set(re.findall(r'"uid": "([^"]+)"', text))
            assert uids <= {q.DATASOURCE_UID, json.loads(text)["uid"]}


# -- the CLI: build and push ------------------------------------------------------------------------


def test_build_cli_writes_then_checks(tmp_path: Path) -> None:
    cli = CliRunner()
    result = cli.invoke(dashboards, ["build", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        build_files())
    again = cli.invoke(dashboards, ["build", "--out", str(tmp_path)])
    assert "0 file(s) changed" in again.output
    assert cli.invoke(dashboards, ["build", "--out", str(tmp_path), "--check"]).exit_code == 0
    city = tmp_path / "dashboards" / "citywatch-city.json"
    city.write_text(city.read_text().replace("Open alerts", "Open alarms"))
    checked = cli.invoke(dashboards, ["build", "--out", str(tmp_path), "--check"])
    assert checked.exit_code == 1 and "citywatch-city.json" in checked.output


class GrafanaStandIn:
    """The few Grafana HTTP API endpoints `push` uses, recording what it is sent.

    A stand-in because Grafana cannot run on this machine (not in Debian, PyPI or npm); the real
    path is the Grafana of docker-compose. Endpoints: GET /api/health, GET /api/folders/{uid},
    POST /api/folders, POST /api/dashboards/db; bearer-token auth like a service account token."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.port = free_port()
        self.requests: list[tuple[str, str, Any]] = []
        self.folders: dict[str, str] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, body))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"message": "invalid API key"}, status=401)
        return await handler(request)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"database": "ok", "version": "11.2.0"})

    async def _folder(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        if uid not in self.folders:
            return web.json_response({"message": "folder not found"}, status=404)
        return web.json_response({"uid": uid, "title": self.folders[uid]})

    async def _new_folder(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.folders[body["uid"]] = body["title"]
        return web.json_response({"uid": body["uid"], "title": body["title"]})

    async def _dashboard(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("folderUid") not in self.folders:
            return web.json_response({"message": "folder not found"}, status=400)
        uid = body["dashboard"]["uid"]
        version = self.dashboards.get(uid, {}).get("version", 0) + 1
        if uid in self.dashboards and not body.get("overwrite"):
            return web.json_response({"message": "version-mismatch"}, status=412)
        self.dashboards[uid] = {**body["dashboard"], "version": version}
        return web.json_response({"id": len(self.dashboards), "uid": uid, "url": f"/d/{uid}/x", "status": "success",
                                  "version": version})

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/api/health", self._health)
        app.router.add_get("/api/folders/{uid}", self._folder)
        app.router.add_post("/api/folders", self._new_folder)
        app.router.add_post("/api/dashboards/db", self._dashboard)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def __enter__(self) -> GrafanaStandIn:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.runner is not None
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_push_creates_the_folder_and_overwrites_the_dashboards() -> None:
    cli = CliRunner()
    with GrafanaStandIn("grafana-sa-token") as grafana:
        result = cli.invoke(dashboards, ["push", "--url", grafana.url, "--token", "grafana-sa-token",
                                         "--language", "zh-CN"])  # the committed files' language
        assert result.exit_code == 0, result.output
        assert result.output.count("pushed ") == 3
        posts = [body for method, path, body in grafana.requests if (method, path) == ("POST", "/api/dashboards/db")]
        assert [b["dashboard"]["uid"] for b in posts] == ["citywatch-city", "citywatch-health", "citywatch-sensors"]
        for body in posts:
            assert body["overwrite"] is True and body["folderUid"] == "citywatch" and "id" not in body["dashboard"]
            committed = json.loads((DEPLOY / "dashboards" / f"{body['dashboard']['uid']}.json").read_text())
            assert body["dashboard"] == {k: v for k, v in committed.items() if k != "id"}
        assert grafana.folders == {"citywatch": "citywatch"}
        again = cli.invoke(dashboards, ["push", "--url", grafana.url, "--token", "grafana-sa-token",
                                        "--from", str(DEPLOY / "dashboards")])
        assert again.exit_code == 0, again.output
        assert sum(1 for m, p, _ in grafana.requests if (m, p) == ("POST", "/api/folders")) == 1
        assert {uid: d["version"] for uid, d in grafana.dashboards.items()} == {
            "citywatch-city": 2, "citywatch-health": 2, "citywatch-sensors": 2}
        denied = cli.invoke(dashboards, ["push", "--url", grafana.url, "--token", "wrong"])
        assert denied.exit_code == 1 and "HTTP 401" in denied.output
    gone = cli.invoke(dashboards, ["push", "--url", grafana.url, "--token", "grafana-sa-token"])
    assert gone.exit_code == 1 and "cannot reach Grafana" in gone.output
