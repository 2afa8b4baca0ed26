"""One HTTP API for both runners (issue 16.5, citywatch/alertapi.py): `citywatch run`'s API and the Faust
sink's are built from one route table, share their handlers, auth and OpenAPI operations, and answer the
same calls alike over real HTTP; the one difference is ack/resolve, applied by the embedded runner (200)
and forwarded by the sink to the worker that owns the device (202), whose transition comes back."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from citywatch.alertapi import SHARED_ROUTES
from citywatch.apitoken import api_token
from citywatch.config import Settings
from citywatch.devices.registry import Registry, registry_path
from citywatch.metrics import Exporter
from citywatch.openapi import DOCUMENT_KEY, PATH, served
from citywatch.people.api import ACCESS_KEY
from citywatch.streams.bridge import ACTION_HEADER, partition_for
from citywatch.streams.sink_api import make_sink_app
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.mosquitto import MosquittoServer
from tests.test_faust_agents import LOCK, T0, P, city_for, put, telemetry
from tests.test_faust_agents import settings as worker_settings
from tests.test_people_api import audit_records, cli

TOKEN = "t0ken-t0ken-t0ken"
BOTH_SERVE = {("GET", "/kpis"), ("GET", "/metrics"), ("GET", PATH)}  # registered by alertapi.build too


def handlers(app: web.Application) -> dict[tuple[str, str], Any]:
    return {(r.method, r.resource.canonical): r.handler for r in app.router.routes()
            if r.resource is not None and r.method not in ("HEAD", "OPTIONS")}


def add_accounts(settings: Settings) -> dict[str, str]:
    """An operator (may ack) and an installer (may not touch alerts) in the data dir's registry.db."""
    tokens = {}
    for name, role in (("op-1", "operator"), ("inst-1", "installer")):
        added = cli(settings, "users", "add", name, "--role", role)
        assert added.exit_code == 0, added.output
        tokens[name] = added.stdout.strip()
    return tokens


def call(base: str, method: str, path: str, token: str | None, body: bytes | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if body is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def script(base: str, alert_id: str, tokens: dict[str, str],
           after_ack: Callable[[], None]) -> dict[str, tuple[int, Any]]:
    """The same calls against either runner's API; `after_ack` waits until the ack's transition is in."""
    op, inst = tokens["op-1"], tokens["inst-1"]
    ack = f"/alerts/{alert_id}/ack"
    out = {
        "no_token": call(base, "GET", "/alerts", None),
        "bad_token": call(base, "GET", "/alerts", "cwt.nope.nope"),
        "health": call(base, "GET", "/health", None),
        "document": call(base, "GET", PATH, None),
        "list": call(base, "GET", "/alerts", op),
        "bootstrap_list": call(base, "GET", "/alerts", TOKEN),
        "installer_ack": call(base, "POST", ack, inst, b'{"by": "x"}'),
        "bad_body": call(base, "POST", ack, op, b'{"by": ['),
        "unknown": call(base, "POST", "/alerts/al_nope/ack", op, b"{}"),
        "ack": call(base, "POST", ack, op, b'{"by": "somebody else"}'),
    }
    after_ack()
    out["again"] = call(base, "POST", ack, op, b"{}")
    out["one"] = call(base, "GET", f"/alerts/{alert_id}", op)
    return out


def check_alike(got: dict[str, tuple[int, Any]], alert_id: str) -> None:
    """What both runners answer the script (the ack's own answer aside)."""
    assert got["no_token"] == got["bad_token"] == (401, {"error": "missing or invalid bearer token"})
    assert got["health"][0] == 200 and got["health"][1]["status"] == "ok"
    assert got["document"][0] == 200
    assert got["list"][0] == 200 and [a["id"] for a in got["list"][1]] == [alert_id]
    assert got["list"][1][0]["silenced"] is False  # marked for silences on both
    assert got["bootstrap_list"][0] == 200  # the bootstrap admin's token, compared in constant time
    assert got["installer_ack"][0] == 403 and "role installer may not ack" in got["installer_ack"][1]["error"]
    assert got["bad_body"][0] == 400 and "JSON object" in got["bad_body"][1]["error"]
    assert got["unknown"] == (404, {"error": "no alert al_nope"})
    assert got["again"] == (409, {"error": f"alert {alert_id} is already acknowledged"})
    status, one = got["one"]
    assert status == 200 and one["status"] == "acknowledged"
    assert one["acked_by"] == "op-1"  # a personal account acts as itself, whatever `by` says


def runner_city(tmp_path: Path, mosquitto: MosquittoServer) -> tuple[Settings, RunnerThread, dict[str, str]]:
    settings = make_settings(tmp_path / "run", api={"port": 0, "token": TOKEN},
                             mqtt={"url": mosquitto.url, "client_id": f"cw-{tmp_path.name}"})
    registry = Registry(registry_path(settings.data_dir))
    registry.add(LOCK)
    registry.close()
    tokens = add_accounts(settings)
    return settings, RunnerThread(settings).start(), tokens


def open_lock_alert(run: RunnerThread, mosquitto: MosquittoServer) -> str:
    publish_all(mosquitto, [(f"citywatch/lock/{LOCK.id}/telemetry",
                             json.dumps({"ts": time.time() - 1, "seq": 1, "event": "forced_open"}).encode())])
    runner = run.runner
    assert runner is not None
    wait_until(lambda: len(runner.engine.by_id) == 1)
    return next(iter(runner.engine.by_id))


def sink_settings(tmp_path: Path) -> Settings:
    return worker_settings(tmp_path / "faust", api={"enabled": True, "port": 0, "token": TOKEN})


async def noop_action(device_id: str, action: str, body: bytes) -> None:
    raise AssertionError("not served in this test")


def test_both_runners_serve_the_shared_routes_from_one_table(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    settings, run, _ = runner_city(tmp_path, mosquitto)
    s = sink_settings(tmp_path)
    sink_city, _ = city_for(s, worker_id="sink", role="sink")
    try:
        assert sink_city.sink is not None and run.runner is not None
        from citywatch.api import make_app

        runner = run.runner
        embedded = run.call(lambda: make_app(runner, TOKEN))
        sink = make_sink_app(sink_city.sink, s, "sink", time.time, noop_action, Exporter(), TOKEN)
        try:
            on_runner, on_sink = handlers(embedded), handlers(sink)
            shared = {(method, path) for method, path, _ in SHARED_ROUTES}
            assert len(shared) == 7
            for method, path, handler in SHARED_ROUTES:  # the very same handler objects, not copies
                assert on_runner[(method, path)] is handler and on_sink[(method, path)] is handler
            assert set(on_sink) == shared | BOTH_SERVE  # what the sink serves: the shared table, nothing else
            assert set(on_sink) < set(on_runner)
            assert on_runner[("GET", "/kpis")] is on_sink[("GET", "/kpis")]
            assert on_runner[("GET", PATH)] is on_sink[("GET", PATH)]
            # one auth: the same middleware class and the same access rule for every route both serve
            assert {k: embedded[ACCESS_KEY].routes[k] for k in on_sink if k in embedded[ACCESS_KEY].routes} == \
                {k: sink[ACCESS_KEY].routes[k] for k in on_sink if k in sink[ACCESS_KEY].routes}
            # one OpenAPI table: the sink's document is the runner's, cut to the routes the sink has
            full, part = (msgspec.json.decode(app[DOCUMENT_KEY]) for app in (embedded, sink))
            assert {(m.upper(), p) for p, item in part["paths"].items() for m in item} == set(on_sink)
            for path, item in part["paths"].items():
                assert item == {m: full["paths"][path][m] for m in item}
            assert part["components"] == full["components"] and part["info"] == full["info"]
            assert part["x-citywatch-not-described"] == {}  # no console on the sink
            assert served(sink)[0] == set(on_sink)
            ack = part["paths"]["/alerts/{alert_id}/ack"]["post"]["responses"]
            assert {"200", "202", "400", "401", "403", "404", "409"} <= set(ack)
        finally:
            embedded[ACCESS_KEY].users.close()
            sink[ACCESS_KEY].users.close()
    finally:
        run.stop()
        sink_city.close()


def test_the_embedded_api_applies_a_person_s_ack_with_the_shared_auth(tmp_path: Path,
                                                                      mosquitto: MosquittoServer) -> None:
    settings, run, tokens = runner_city(tmp_path, mosquitto)
    try:
        alert_id = open_lock_alert(run, mosquitto)
        assert run.runner is not None
        got = script(f"http://127.0.0.1:{run.runner.api_port}", alert_id, tokens, lambda: None)
    finally:
        run.stop()
    check_alike(got, alert_id)
    status, transition = got["ack"]
    assert status == 200 and transition["transition"] == "acknowledged" and transition["alert"]["acked_by"] == "op-1"
    trail = audit_records(settings, "--user", "inst-1")
    assert [(r["action"], r["outcome"]) for r in trail] == [("ack", "refused")]


def test_the_sink_api_forwards_a_person_s_ack_to_the_owner_with_the_shared_auth(tmp_path: Path) -> None:
    """The sink's API in front of a real process worker (Faust's test_context, no broker): the ack
    travels to the owner, its transition comes back to the sink's store, and the next ack is refused."""
    s = sink_settings(tmp_path)
    assert api_token(s.api, s.data_dir) == TOKEN
    tokens = add_accounts(s)
    city, rec = city_for(s)
    sink_city, _ = city_for(s, worker_id="sink", role="sink")
    sink = sink_city.sink
    assert sink is not None
    forwarded: list[tuple[str, str, dict[str, Any]]] = []

    async def go() -> dict[str, tuple[int, Any]]:
        async with city.process_agent.test_context() as agent:
            await put(agent, *telemetry(LOCK, T0, 1, event="forced_open"))
            sink.write(rec.transitions)
            alert_id = rec.transitions[0].alert_id
            delivered = asyncio.Event()

            async def to_owner(device_id: str, action: str, body: bytes) -> None:
                """FaustCity.request_action's hop, to the owner's agent; the deliver agent's, back to the sink."""
                forwarded.append((device_id, action, json.loads(body)))
                key = device_id.encode()
                await agent.put(body, key=key, partition=partition_for(key, P),
                                headers={ACTION_HEADER: action.encode()})
                sink.write(rec.transitions)
                delivered.set()

            sink_city.request_action = to_owner  # type: ignore[method-assign]
            served_api = await sink_city.start_sink_api()
            loop = asyncio.get_running_loop()

            def after_ack() -> None:
                asyncio.run_coroutine_threadsafe(asyncio.wait_for(delivered.wait(), 10), loop).result()

            try:
                port = next(iter(served_api.sites)).port  # type: ignore[attr-defined]  # httpserve's site
                return await asyncio.to_thread(script, f"http://127.0.0.1:{port}", alert_id, tokens, after_ack)
            finally:
                await served_api.cleanup()

    try:
        got = asyncio.run(go())
    finally:
        city.close()
        sink_city.close()
    alert_id = rec.transitions[0].alert_id
    check_alike(got, alert_id)
    assert got["ack"] == (202, {"accepted": "ack", "alert_id": alert_id, "device_id": LOCK.id})
    assert [(d, a, b["alert_id"], b["by"]) for d, a, b in forwarded] == [(LOCK.id, "ack", alert_id, "op-1")]
    assert [t.transition for t in rec.transitions] == ["opened", "acknowledged"]  # applied once, by the owner
    trail = audit_records(s, "--user", "inst-1")  # the sink audits in its own store, like the runner
    assert [(r["action"], r["outcome"]) for r in trail] == [("ack", "refused")]
    (acked,) = [r for r in audit_records(s, "--user", "op-1") if r["action"] == "ack" and r["outcome"] == "ok"]
    assert acked["target_id"] == alert_id

