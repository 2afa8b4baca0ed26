"""People close the loop: ack/resolve through the HTTP API and the CLI; state survives a restart."""

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

LOCK = Device(id="lock-7", kind="lock", district="Nanhu", grid="G7", tenants=2)
GAS = Device(id="gas-7", kind="gas", district="Nanhu", grid="G7")


@pytest.fixture
def receiver() -> Any:
    r = WebhookReceiver().start()
    yield r
    r.stop()


def setup(tmp_path: Path, mosquitto: MosquittoServer, receiver: WebhookReceiver) -> Any:
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-api"},
                             webhooks={"url": receiver.url, "secret": "plain-secret-for-tests",
                                       "backoff_initial_s": 0.05})
    registry = Registry(registry_path(settings.data_dir))
    registry.add(LOCK)
    registry.add(GAS)
    registry.close()
    return settings


def lock_event(event: str, ts: float, seq: int) -> tuple[str, bytes]:
    return "citywatch/lock/lock-7/telemetry", json.dumps({"ts": ts, "seq": seq, "event": event}).encode()


def post(url: str, token: str | None, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body or {}).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_ack_and_resolve_over_http_need_a_valid_token(tmp_path: Path, mosquitto: MosquittoServer,
                                                      receiver: WebhookReceiver) -> None:
    settings = setup(tmp_path, mosquitto, receiver)
    run = RunnerThread(settings).start()
    try:
        publish_all(mosquitto, [lock_event("forced_open", time.time() - 2, 1)])
        wait_until(lambda: len(run.runner.engine.by_id) == 1)
        alert_id = next(iter(run.runner.engine.by_id))
        base = f"http://127.0.0.1:{run.runner.api_port}"
        token = api_token(settings.api, settings.data_dir, create=False)
        assert token and (settings.data_dir / "api-token").stat().st_mode & 0o077 == 0
        assert post(f"{base}/alerts/{alert_id}/ack", None)[0] == 401
        assert post(f"{base}/alerts/{alert_id}/ack", "wrong-token")[0] == 401
        status, body = post(f"{base}/alerts/{alert_id}/ack", token, {"by": "police-3"})
        assert status == 200 and body["transition"] == "acknowledged"
        assert post(f"{base}/alerts/{alert_id}/ack", token)[0] == 409
        status, body = post(f"{base}/alerts/{alert_id}/resolve", token, {"by": "police-3"})
        assert status == 200 and body["alert"]["resolved_by"] == "police-3"
        assert post(f"{base}/alerts/nope/resolve", token)[0] == 404  # never seen: 404, not 409
        wait_until(lambda: len(receiver.requests) == 3)
    finally:
        run.stop()
    assert [b["transition"] for b in receiver.bodies()] == ["opened", "acknowledged", "resolved"]


def test_cli_ack_resolve_through_the_running_api_and_directly(tmp_path: Path, mosquitto: MosquittoServer,
                                                              receiver: WebhookReceiver) -> None:
    settings = setup(tmp_path, mosquitto, receiver)
    cli = CliRunner()
    env = {"CITYWATCH_API__PORT": "0"}
    run = RunnerThread(settings).start()
    try:
        publish_all(mosquitto, [lock_event("tamper", time.time() - 2, 1)])
        wait_until(lambda: len(run.runner.engine.by_id) == 1)
        alert_id = next(iter(run.runner.engine.by_id))
        env["CITYWATCH_API__PORT"] = str(run.runner.api_port)
        result = cli.invoke(main, ["--data-dir", str(settings.data_dir), "alerts", "ack", alert_id,
                                   "--by", "cli-user"], env=env)
        assert result.exit_code == 0, result.output
        assert run.runner.engine.by_id[alert_id].status == "acknowledged"  # the running engine saw it
    finally:
        run.stop()
    # not running now: the CLI acts on the store, the webhook waits in the outbox
    result = cli.invoke(main, ["--data-dir", str(settings.data_dir), "alerts", "resolve", alert_id], env=env)
    assert result.exit_code == 0, result.output
    store = AlertStore(store_path(settings.data_dir))
    assert store.alerts("open") == []
    assert [t.transition for t in store.transitions(alert_id)] == ["opened", "acknowledged", "resolved"]
    store.close()
    listing = cli.invoke(main, ["--data-dir", str(settings.data_dir), "alerts", "list", "--all"], env=env)
    assert alert_id in listing.output and "resolved" in listing.output
    again = cli.invoke(main, ["--data-dir", str(settings.data_dir), "alerts", "resolve", alert_id], env=env)
    assert again.exit_code != 0 and "no open alert" in again.output


def test_open_alerts_and_detector_state_survive_a_restart(tmp_path: Path, mosquitto: MosquittoServer,
                                                          receiver: WebhookReceiver) -> None:
    settings = setup(tmp_path, mosquitto, receiver)
    now = time.time() - 60
    run = RunnerThread(settings).start()
    try:
        publish_all(mosquitto, [("citywatch/gas/gas-7/telemetry", json.dumps({"ts": now, "lel_pct": 30}).encode())]
                    + [lock_event("unlock_fail", now + i, i + 1) for i in range(3)])
        wait_until(lambda: run.runner.pipeline.counters["processed"] == 4)
    finally:
        run.stop()
    run = RunnerThread(settings).start()
    try:
        assert {a.rule for a in run.runner.engine.by_id.values()} == {"gas_level"}
        # two more failures complete the brute-force count started before the restart
        publish_all(mosquitto, [lock_event("unlock_fail", now + 10 + i, 10 + i) for i in range(2)]
                    + [("citywatch/gas/gas-7/telemetry", json.dumps({"ts": now + 20, "lel_pct": 2}).encode())])
        wait_until(lambda: run.runner.pipeline.counters["processed"] == 3)
        rules = {a.rule for a in run.runner.engine.by_id.values()}
    finally:
        run.stop()
    assert rules == {"lock_brute_force"}  # gas resolved by the same alert, brute force opened
    store = AlertStore(store_path(settings.data_dir))
    gas = [a for a in store.alerts(None) if a.rule == "gas_level"]
    store.close()
    assert len(gas) == 1 and gas[0].status == "resolved"


def test_health_is_open_and_stats_need_the_token(tmp_path: Path, mosquitto: MosquittoServer,
                                                 receiver: WebhookReceiver) -> None:
    settings = setup(tmp_path, mosquitto, receiver)
    run = RunnerThread(settings).start()
    try:
        base = f"http://127.0.0.1:{run.runner.api_port}"
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            assert json.loads(response.read())["status"] == "ok"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{base}/stats", timeout=5)
        assert denied.value.code == 401
        token = api_token(settings.api, settings.data_dir, create=False)
        request = urllib.request.Request(f"{base}/stats", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            stats = json.loads(response.read())
        assert stats["devices"] == 2 and stats["mqtt"]["connected"] is True
    finally:
        run.stop()


def test_flap_history_survives_a_restart(tmp_path: Path, mosquitto: MosquittoServer,
                                         receiver: WebhookReceiver) -> None:
    """Two open/resolve cycles, a restart, a third opening: with flap_max_cycles 2 it is `flapping`,
    because the engine's flap history was committed with the batch and restored."""
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-flap"},
                             webhooks={"url": receiver.url, "secret": "plain-secret-for-tests",
                                       "backoff_initial_s": 0.05},
                             alerts={"flap_max_cycles": 2, "flap_window_min": 60})
    registry = Registry(registry_path(settings.data_dir))
    registry.add(GAS)
    registry.close()
    now = time.time() - 400  # recent: the flapping alert stays open (quiet period not reached)

    def gas(i: int, lel: float) -> tuple[str, bytes]:
        return "citywatch/gas/gas-7/telemetry", json.dumps({"ts": now + 60 * i, "seq": i, "lel_pct": lel}).encode()

    run = RunnerThread(settings).start()
    try:
        publish_all(mosquitto, [gas(1, 30), gas(2, 2), gas(3, 30), gas(4, 2)])
        wait_until(lambda: run.runner.pipeline.counters["processed"] == 4)
    finally:
        run.stop()
    run = RunnerThread(settings).start()
    try:
        publish_all(mosquitto, [gas(5, 30)])
        wait_until(lambda: run.runner.pipeline.counters["processed"] == 1)
    finally:
        run.stop()
    store = AlertStore(store_path(settings.data_dir))
    kinds = [t.transition for t in store.transitions() if t.alert.rule == "gas_level"]
    store.close()
    assert kinds == ["opened", "resolved", "opened", "resolved", "flapping"]
