"""One owner per data dir: a second `citywatch run` refuses at once; `alerts ack|resolve` go through
the owner's API or refuse, never writing the store behind its back. Real processes, real flock."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from citywatch import actions
from citywatch.cli import main
from citywatch.datalock import DataDirBusy, DataDirLock, holder, lock_path
from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device
from citywatch.sinks.store import AlertStore, store_path
from citywatch.streams.embedded import EmbeddedRunner
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.runner_process import RunnerProcess, get_json
from tests.servers.mosquitto import MosquittoServer

LOCK = Device(id="lock-9", kind="lock", district="Nanhu")


def register(data_dir: Path) -> None:
    registry = Registry(registry_path(data_dir))
    registry.add(LOCK)
    registry.close()


def forced_open(seq: int = 1) -> tuple[str, bytes]:
    return "citywatch/lock/lock-9/telemetry", json.dumps({"ts": time.time() - 5, "seq": seq,
                                                          "event": "forced_open"}).encode()


def open_alert_ids(data_dir: Path) -> list[str]:
    store = AlertStore(store_path(data_dir))
    try:
        return [a.id for a in store.alerts("open")]
    finally:
        store.close()


def transitions(data_dir: Path) -> list[str]:
    store = AlertStore(store_path(data_dir))
    try:
        return [t.transition for t in store.transitions()]
    finally:
        store.close()


def test_a_second_runner_on_the_same_data_dir_refuses_at_once(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    """Finding: a second runner on the same data dir (another API port) stole the MQTT session back and
    forth, opened duplicate alerts and sent webhooks twice."""
    data_dir = tmp_path / "data"
    register(data_dir)
    first = RunnerProcess(tmp_path, data_dir, mosquitto.url, "cw-owner").start()
    second = RunnerProcess(tmp_path, data_dir, mosquitto.url, "cw-intruder")
    try:
        first.wait_healthy()
        assert first.proc is not None
        recorded = json.loads(lock_path(data_dir).read_text())
        assert recorded["pid"] == first.proc.pid and recorded["api"] == f"127.0.0.1:{first.port}"
        started = time.monotonic()
        code = second.start().wait_exit(timeout=30)
        assert code != 0 and time.monotonic() - started < 15
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert lines == [f"Error: data dir {data_dir} is in use by citywatch run (pid {first.proc.pid}, "
                         f"api 127.0.0.1:{first.port}); stop it first or use another data_dir"], second.stderr
        assert get_json(f"{first.base}/health")[0] == 200  # the owner is undisturbed
    finally:
        second.stop()
        first.stop()
    assert holder(data_dir) is None  # released on exit


def test_a_killed_owner_leaves_no_stale_lock(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    data_dir = tmp_path / "data"
    first = RunnerProcess(tmp_path, data_dir, mosquitto.url, "cw-killed").start()
    try:
        first.wait_healthy()
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.wait_exit(10)
        assert lock_path(data_dir).exists()  # the file stays; the kernel dropped the flock with its holder
        wait_until(lambda: holder(data_dir) is None)  # the collector child may outlive it by a moment
        second = RunnerProcess(tmp_path, data_dir, mosquitto.url, "cw-killed").start()
        try:
            second.wait_healthy()
        finally:
            assert second.stop() == 0
    finally:
        first.stop()


def test_in_process_a_second_runner_is_refused_and_the_first_keeps_the_lock(
        tmp_path: Path, mosquitto: MosquittoServer) -> None:
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-lock"})
    run = RunnerThread(settings).start()
    try:
        with pytest.raises(DataDirBusy) as refused:
            EmbeddedRunner(settings)
        assert f"pid {os.getpid()}" in str(refused.value)
        assert holder(settings.data_dir) == {**run.runner.lock.info}
    finally:
        run.stop()
    with DataDirLock(settings.data_dir, "test"):
        assert holder(settings.data_dir) is not None


def test_alerts_ack_refuses_when_the_owner_serves_no_api(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    """Finding: `alerts ack` while a runner owned the store but its API was unreachable wrote the store
    directly; the runner overwrote the ack and dropped its own next transition as a repeat."""
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-noapi"},
                             api={"enabled": False})
    register(settings.data_dir)
    run = RunnerThread(settings).start()
    try:
        publish_all(mosquitto, [forced_open()])
        wait_until(lambda: len(run.runner.engine.by_id) == 1)
        alert_id = next(iter(run.runner.engine.by_id))
        before = transitions(settings.data_dir)
        for action in ("ack", "resolve"):
            result = CliRunner().invoke(main, ["--data-dir", str(settings.data_dir), "alerts", action, alert_id])
            assert result.exit_code != 0
            assert f"citywatch run (pid {os.getpid()}) owns {settings.data_dir} but serves no API" in result.output
            assert "not written behind its back" in result.output
        assert transitions(settings.data_dir) == before == ["opened"]
        assert run.runner.engine.by_id[alert_id].status == "open"
    finally:
        run.stop()
    # no runner now: the CLI takes the lock itself and writes the store
    result = CliRunner().invoke(main, ["--data-dir", str(settings.data_dir), "alerts", "ack", alert_id])
    assert result.exit_code == 0, result.output
    assert transitions(settings.data_dir) == ["opened", "acknowledged"]
    assert holder(settings.data_dir) is None


def test_alerts_ack_refuses_when_the_owners_api_does_not_answer(tmp_path: Path, mosquitto: MosquittoServer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    register(data_dir)
    owner = RunnerProcess(tmp_path, data_dir, mosquitto.url, "cw-frozen").start()
    try:
        owner.wait_healthy()
        assert owner.proc is not None
        publish_all(mosquitto, [forced_open()])
        alert_id = wait_until(lambda: next(iter(open_alert_ids(data_dir)), None))
        before = transitions(data_dir)
        owner.proc.send_signal(signal.SIGSTOP)  # alive, holding the lock, answering nothing
        try:
            monkeypatch.setattr(actions, "API_TIMEOUT_S", 1.0)
            result = CliRunner().invoke(main, ["--data-dir", str(data_dir), "alerts", "ack", alert_id])
            assert transitions(data_dir) == before
        finally:
            owner.proc.send_signal(signal.SIGCONT)
        assert result.exit_code != 0
        assert (f"citywatch run (pid {owner.proc.pid}) owns {data_dir} but its API at "
                f"http://127.0.0.1:{owner.port} did not answer within 1 s; the ack may still be applied when "
                "it does") in result.output
        # thawed, the owner answers the request it had been sent: it, not the CLI, writes the ack
        wait_until(lambda: transitions(data_dir) == ["opened", "acknowledged"])
        result = CliRunner().invoke(main, ["--data-dir", str(data_dir), "alerts", "resolve", alert_id])
        assert result.exit_code == 0, result.output
        assert transitions(data_dir) == ["opened", "acknowledged", "resolved"]
    finally:
        owner.stop()
