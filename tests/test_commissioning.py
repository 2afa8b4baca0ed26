"""`devices check ID`: the installer's commissioning test against a real broker (and a running pipeline)."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from citywatch.cli import main
from citywatch.config import Settings
from citywatch.devices.commissioning import CheckResult, check_device, exit_code, render
from citywatch.devices.credentials import generate_password, hash_password, write_mosquitto_auth
from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device, Output
from citywatch.sinks.store import AlertStore, store_path
from citywatch.streams.device_value import DeviceValue, encode_value
from tests.conftest import RunnerThread, make_settings
from tests.mqtt_tools import publish_all
from tests.servers.mosquitto import AuthMosquittoServer, MosquittoServer
from tests.test_mosquitto_auth import COLLECTOR, COLLECTOR_PASSWORD, publish, session

GAS = Device(id="gas-1", kind="gas", district="Nanhu", grid="G1", address="1 Main St", lat=30.75, lon=120.75)
TOPIC = "citywatch/gas/gas-1/telemetry"


def body(**fields: Any) -> bytes:
    return json.dumps({"ts": round(time.time(), 3), **fields}).encode()


def register(settings: Settings, device: Device = GAS) -> str:
    password = generate_password()
    registry = Registry(registry_path(settings.data_dir))
    registry.add(device, hash_password(password))
    registry.close()
    return password


def check_while(settings: Settings, send: Any, timeout: float = 15.0) -> CheckResult:
    """Run the check; once it listens, let `send()` act as the device; return what the check saw."""
    listening = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(check_device, settings, GAS.id, timeout, 5.0, listening.set)
        assert listening.wait(10), "the check never subscribed"
        send()
        return future.result(timeout + 10)


@pytest.fixture
def auth_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="citywatch-auth-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_accepted_message_shows_battery_rssi_alerts_and_the_runner_recording_it(
        tmp_path: Path, auth_dir: Path) -> None:
    server = AuthMosquittoServer(tmp_path / "mosquitto", auth_dir)
    settings = make_settings(tmp_path / "data", mqtt={"url": server.url, "username": COLLECTOR,
                                                      "password": COLLECTOR_PASSWORD, "client_id": "cw-check"})
    password = register(settings)
    registry = Registry(registry_path(settings.data_dir))
    write_mosquitto_auth(auth_dir, registry.credentials(), COLLECTOR, COLLECTOR_PASSWORD, "citywatch")
    registry.close()
    server.start()
    run = RunnerThread(settings).start()  # the pipeline logs in with the collector account too
    try:
        with session(server.port, GAS.id, password, client_id=GAS.id) as device:
            publish(device, "citywatch/gas/gas-1/status", b"online", retain=True)
            result = check_while(settings, lambda: publish(device, TOPIC, body(seq=1, battery=87.5, rssi=-71,
                                                                                lel_pct=30.0)))
    finally:
        run.stop()
        server.stop()
    assert result.outcome == "accepted" and exit_code(result) == 0
    assert (result.battery, result.rssi) == (87.5, -71)
    assert result.reading is not None and result.reading.values == {"lel_pct": 30.0}
    assert result.statuses == ["online (retained)"]  # old news, reported but not taken as the message
    assert [w.split(":")[0] for w in result.would] == ["opened gas_level (warning)"]
    assert result.last_seen_before is None and result.last_seen is not None  # the running pipeline recorded it
    assert [(a.device_id, a.rule) for a in result.open_alerts] == [("gas-1", "gas_level")]
    text = render(result)
    assert "pipeline: ACCEPTED" in text and "battery: 87.5 %" in text and "gas_level" in text


def test_rejected_message_gives_the_dead_letter_reason_from_the_stored_state(
        tmp_path: Path, mosquitto: MosquittoServer) -> None:
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-check"})
    register(settings)
    store = AlertStore(store_path(settings.data_dir))
    last_ts = round(time.time() - 60, 3)
    # a record stored by an earlier release (format 1: a dict): `devices check` migrates it like the runner
    old_record = msgspec.msgpack.encode({"ts": last_ts, "seq": 5, "seen": last_ts})
    store.commit(Output(), [], {GAS.id: encode_value(DeviceValue(state=old_record))})
    store.close()

    def device_says(payload: bytes) -> CheckResult:
        return check_while(settings, lambda: publish_all(mosquitto, [(TOPIC, payload)]), timeout=10)

    bad = device_says(body(seq=6, battery=50, lel_pct=500))
    assert (bad.outcome, bad.reason, bad.battery, exit_code(bad)) == ("dead_letter", "out_of_range", 50, 1)
    assert "DEAD LETTER out_of_range" in render(bad)
    repeat = device_says(json.dumps({"ts": last_ts, "seq": 5, "lel_pct": 1.0}).encode())  # stored already
    assert (repeat.reason, repeat.last_seen_before) == ("duplicate", last_ts)
    registry = Registry(registry_path(settings.data_dir))
    registry.set_enabled(GAS.id, False)
    registry.close()
    assert device_says(body(seq=7, lel_pct=1.0)).reason == "device_disabled"


def test_nothing_in_time_or_a_refused_login_fails_the_check(tmp_path: Path, auth_dir: Path) -> None:
    server = AuthMosquittoServer(tmp_path / "mosquitto", auth_dir)
    good = make_settings(tmp_path / "data", mqtt={"url": server.url, "username": COLLECTOR,
                                                  "password": COLLECTOR_PASSWORD, "client_id": "cw-check"})
    register(good)
    write_mosquitto_auth(auth_dir, [], COLLECTOR, COLLECTOR_PASSWORD, "citywatch")
    server.start()
    try:
        silent = check_device(good, GAS.id, timeout=0.5)
        wrong = make_settings(tmp_path / "data", mqtt={"url": server.url, "username": COLLECTOR,
                                                       "password": "wrong", "client_id": "cw-check"})
        refused = check_device(wrong, GAS.id, timeout=10)
    finally:
        server.stop()
    assert (silent.outcome, exit_code(silent)) == ("no_message", 3)
    assert "no message from the device" in render(silent)
    assert (refused.outcome, exit_code(refused)) == ("broker_refused", 3)
    assert "refused the login of citywatch-collector" in refused.detail


def test_cli_check_exit_codes(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url})
    register(settings)
    runner = CliRunner()
    args = ["--data-dir", str(settings.data_dir), "devices", "check"]
    env = {"CITYWATCH_MQTT__URL": mosquitto.url, "CITYWATCH_CONFIG": str(tmp_path / "none.yaml")}
    (tmp_path / "none.yaml").write_text("{}\n")
    timed_out = runner.invoke(main, [*args, GAS.id, "--timeout", "0.3"], env=env)
    assert timed_out.exit_code == 3, timed_out.output
    assert "listening" in timed_out.stderr and "FAILED" in timed_out.stdout
    unknown = runner.invoke(main, [*args, "gas-404", "--timeout", "0.3"], env=env)
    assert unknown.exit_code == 1 and "no device gas-404" in unknown.output
