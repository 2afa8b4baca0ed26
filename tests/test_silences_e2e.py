"""Silences end to end (issue 14, item 5): a real Mosquitto, the real runner, a real webhook receiver.

Road works on grid G7: a maintenance window silences noise and water there. The alerts are still
detected, stored and shown (marked silenced) while their webhooks are held; grid G8 is delivered as
usual; a life-safety alarm in G7 still goes out; the silence survives a restart; when its end passes
(an injected clock moved past it) the alerts still open arrive once, with their original ids, and one
that cleared meanwhile never does. The CLI goes through the running owner's API.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from citywatch.apitoken import api_token
from citywatch.cli import main
from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device
from citywatch.sinks.store import AlertStore, store_path
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.mosquitto import MosquittoServer
from tests.servers.receiver import WebhookReceiver

HOUR = 3600.0
# interval_s of a day: moving the clock by hours must not make anyone offline
NOISE_7A = Device(id="noise-7a", kind="noise", district="Nanhu", grid="G7", interval_s=86400)
NOISE_7B = Device(id="noise-7b", kind="noise", district="Nanhu", grid="G7", interval_s=86400)
WATER_7 = Device(id="water-7", kind="water", district="Nanhu", grid="G7", interval_s=86400)
NOISE_8 = Device(id="noise-8", kind="noise", district="Nanhu", grid="G8", interval_s=86400)
DEVICES = (NOISE_7A, NOISE_7B, WATER_7, NOISE_8)


@pytest.fixture
def receiver() -> Any:
    r = WebhookReceiver().start()
    yield r
    r.stop()


def setup(tmp_path: Path, mosquitto: MosquittoServer, receiver: WebhookReceiver) -> Any:
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-silences"},
                             webhooks={"url": receiver.url, "secret": "plain-secret-for-tests",
                                       "backoff_initial_s": 0.05})
    registry = Registry(registry_path(settings.data_dir))
    for device in DEVICES:
        registry.add(device)
    registry.close()
    return settings


def reading(device: Device, ts: float, seq: int, **values: Any) -> tuple[str, bytes]:
    return f"citywatch/{device.kind}/{device.id}/telemetry", json.dumps({"ts": ts, "seq": seq, **values}).encode()


def loud(device: Device, ts: float, first_seq: int) -> list[tuple[str, bytes]]:
    """Two loud minutes: noise_limit holds 2 readings before it opens."""
    return [reading(device, ts + i, first_seq + i, laeq_db=85.0) for i in range(2)]


def http(method: str, url: str, token: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def cli(settings: Any, *args: str) -> Any:
    return CliRunner().invoke(main, ["--data-dir", str(settings.data_dir), *args])


def outbox(settings: Any) -> dict[str, list[tuple[str, str | None]]]:
    """alert id -> [(status, silence id)] of its outbox rows, in order."""
    store = AlertStore(store_path(settings.data_dir))
    try:
        rows = store.conn.execute("SELECT alert_id, status, silence_id FROM webhook_outbox ORDER BY seq").fetchall()
    finally:
        store.close()
    found: dict[str, list[tuple[str, str | None]]] = {}
    for alert_id, status, silence_id in rows:
        found.setdefault(alert_id, []).append((status, silence_id))
    return found


def stored_alert_id(settings: Any, device: Device, rule: str, status: str) -> str | None:
    store = AlertStore(store_path(settings.data_dir))
    try:
        row = store.conn.execute("SELECT id FROM alerts WHERE device_id = ? AND rule = ? AND status = ?",
                                 (device.id, rule, status)).fetchone()
    finally:
        store.close()
    return row[0] if row else None


def alert_of(run: RunnerThread, device: Device, rule: str) -> Any:
    assert run.runner is not None
    return next((a for a in run.runner.engine.by_id.values() if a.device_id == device.id and a.rule == rule), None)


def received(receiver: WebhookReceiver) -> list[tuple[str, str, str]]:
    """(webhook-id, alert id, transition) of every request, in arrival order."""
    return [(wid, body["alert"]["id"], body["transition"]) for wid, body in zip(receiver.ids(), receiver.bodies(),
                                                                                   strict=True)]


def test_a_maintenance_window_on_a_grid_holds_its_webhooks_until_it_ends(
        tmp_path: Path, mosquitto: MosquittoServer, receiver: WebhookReceiver) -> None:
    settings = setup(tmp_path, mosquitto, receiver)
    clock = {"now": time.time()}
    run = RunnerThread(settings, clock=lambda: clock["now"]).start().subscribed()
    assert run.runner is not None
    try:
        # set through the CLI: a runner owns the data dir, so it goes through its API
        added = cli(settings, "silences", "add", "--grid", "G7", "--kind", "noise", "--kind", "water", "--for", "2h",
                    "--reason", "road works, Zhongshan Rd", "--by", "works-office", "--json")
        assert added.exit_code == 0, added.output
        silence = json.loads(added.output)
        assert silence["state"] == "active" and silence["scope"] == "grid=G7 kind=noise|water"
        assert silence["author"] == "works-office" and not silence["covers_safety_rules"]

        t = time.time() - 30
        publish_all(mosquitto, [
            *loud(NOISE_7A, t, 1), *loud(NOISE_8, t, 1),
            reading(WATER_7, t, 1, depth_cm=0.0, battery=10.0),  # battery_low opens (kind water, in G7) ...
            reading(WATER_7, t + 1, 2, depth_cm=0.0, battery=60.0),  # ... and clears during the silence
            reading(WATER_7, t + 2, 3, depth_cm=30.0),  # water_depth: a life-safety alarm, never held by a grid
        ])
        wait_until(lambda: {(b["alert"]["rule"], b["device"]["id"]) for b in receiver.bodies()}
                   >= {("noise_limit", "noise-8"), ("water_depth", "water-7")})
        noisy = wait_until(lambda: alert_of(run, NOISE_7A, "noise_limit"))
        battery = wait_until(lambda: stored_alert_id(settings, WATER_7, "battery_low", "resolved"))
        rows = outbox(settings)
        assert rows[noisy.id] == [("held", silence["id"])]
        assert rows[battery] == [("held", silence["id"]), ("held", silence["id"])]  # opened, resolved
        sent = {alert_id for _, alert_id, _ in received(receiver)}
        assert noisy.id not in sent and battery not in sent

        # visible, marked silenced: the API and the CLI
        token = api_token(settings.api, settings.data_dir, create=False)
        assert token
        base = f"http://127.0.0.1:{run.runner.api_port}"
        status, alerts = http("GET", f"{base}/alerts", token)
        assert status == 200
        marks = {(a["device_id"], a["rule"]): (a["silenced"], a["silence_id"]) for a in alerts}
        assert marks[("noise-7a", "noise_limit")] == (True, silence["id"])
        assert marks[("noise-8", "noise_limit")] == (False, None)
        assert marks[("water-7", "water_depth")] == (False, None)  # safety: a grid silence does not hold it
        listing = cli(settings, "alerts", "list")
        line = next(line for line in listing.output.splitlines() if noisy.id in line)
        assert line.endswith(f"silenced by {silence['id']}")

        # refusals, through the running API
        no_reason = cli(settings, "silences", "add", "--device", "water-7", "--rule", "water_depth", "--for", "1h",
                        "--reason", " ")
        assert no_reason.exit_code == 1 and "reason" in no_reason.output
        too_long = cli(settings, "silences", "add", "--device", "water-7", "--rule", "water_depth", "--for", "25h",
                       "--reason", "sensor swap")
        assert too_long.exit_code == 1 and "at most silences.max_safety_h (24 h)" in too_long.output
        broad = cli(settings, "silences", "add", "--grid", "G7", "--rule", "gas_level", "--for", "1h",
                    "--reason", "works")
        assert broad.exit_code == 1 and "only per device" in broad.output
        assert http("POST", f"{base}/silences", token, {"reason": "x", "by": "y", "duration": "1h"})[0] == 422
        assert http("POST", f"{base}/silences", token, {"grid": "G7", "reason": "x", "by": "y",
                                                        "end": "2030-01-01T00:00:00"})[0] == 422  # no offset
        assert http("POST", f"{base}/silences", token, [1, 2])[0] == 400
    finally:
        run.stop()

    # a restart during the silence keeps it: new G7 alerts are held too
    run = RunnerThread(settings, clock=lambda: clock["now"]).start().subscribed()
    assert run.runner is not None
    try:
        base = f"http://127.0.0.1:{run.runner.api_port}"
        status, listed = http("GET", f"{base}/silences", token)
        assert status == 200 and [s["id"] for s in listed] == [silence["id"]]
        publish_all(mosquitto, loud(NOISE_7B, time.time() - 10, 1))
        second = wait_until(lambda: alert_of(run, NOISE_7B, "noise_limit"))
        wait_until(lambda: outbox(settings).get(second.id) == [("held", silence["id"])])
        assert rows[noisy.id] == outbox(settings)[noisy.id]

        clock["now"] += 2 * HOUR + 1  # the window ends: the runner's next tick releases it
        wait_until(lambda: {noisy.id, second.id} <= {alert_id for _, alert_id, _ in received(receiver)})
        wait_until(lambda: all(status != "pending" for lane in outbox(settings).values() for status, _ in lane))
        arrivals = received(receiver)
        ids = [wid for wid, _, _ in arrivals]
        assert len(ids) == len(set(ids))  # each once
        assert [(wid, kind) for wid, alert_id, kind in arrivals if alert_id == noisy.id] == [
            (f"{noisy.id}.1", "opened")]  # the original webhook-id: the transition's
        assert battery not in {alert_id for _, alert_id, _ in arrivals}
        assert outbox(settings)[battery] == [("suppressed", silence["id"])] * 2
        status, alerts = http("GET", f"{base}/alerts", token)
        assert all(a["silenced"] is False for a in alerts)
        over = cli(settings, "silences", "list", "--all", "--json")
        assert [(s["id"], s["state"]) for s in json.loads(over.output)] == [(silence["id"], "expired")]
        assert json.loads(cli(settings, "silences", "list", "--json").output) == []
    finally:
        run.stop()
