"""Fail loudly or recover, never hang: supervision of the runner's tasks and its collector process,
and /health and /ready telling the truth. Real Mosquitto, real HTTP, real files; `citywatch run`
as a subprocess where the finding was an exit code or a line on stderr."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device
from citywatch.sinks.store import AlertStore, store_path
from citywatch.sinks.webhooks import WebhookDelivery
from citywatch.streams.embedded import RunnerFailed
from citywatch.streams.pipeline import Pipeline
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.runner_process import RunnerProcess, get_json
from tests.servers.mosquitto import MosquittoServer

GAS = [Device(id=f"gas-{i}", kind="gas", district="Nanhu") for i in range(20)]


def register(data_dir: Path, devices: list[Device]) -> None:
    registry = Registry(registry_path(data_dir))
    for d in devices:
        registry.add(d)
    registry.close()


def reading(device: Device, seq: int, ts: float, lel: float) -> tuple[str, bytes]:
    return f"citywatch/gas/{device.id}/telemetry", json.dumps({"ts": ts, "seq": seq, "lel_pct": lel}).encode()


def corrupt(path: Path, tables: tuple[str, ...] = ("counters", "device_state", "alerts", "transitions",
                                                    "dead_letters")) -> None:
    """Overwrite the root pages of these tables in the database file with garbage (as a failing disk
    or a stray writer would), then make one ordinary write from another connection, so every
    connection drops its page cache and reads the damaged pages from the file."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file: no WAL copy hides the damage
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    marks = ",".join("?" * len(tables))
    roots = [r for (r,) in conn.execute(f"SELECT rootpage FROM sqlite_master WHERE name IN ({marks})", tables)]
    conn.close()
    with open(path, "r+b") as f:
        for root in roots:
            f.seek((root - 1) * page_size)
            f.write(b"\xff" * page_size)
    conn = sqlite3.connect(path, isolation_level=None)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.execute(f"PRAGMA user_version = {version + 1}")
    conn.close()


# -- 1. a fatal storage error ends the process with one line ---------------------------------------


def test_corrupt_state_db_under_a_running_runner_exits_non_zero_with_one_line(
        tmp_path: Path, mosquitto: MosquittoServer) -> None:
    """Finding: a corrupted page in state.db killed the consume loop; the process then waited forever,
    /health said 200, nothing was logged."""
    data_dir = tmp_path / "data"
    register(data_dir, GAS[:1])
    runner = RunnerProcess(tmp_path, data_dir, mosquitto.url, "cw-corrupt").start()
    try:
        runner.wait_healthy()
        t0 = time.time() - 100
        publish_all(mosquitto, [reading(GAS[0], 1, t0, 1)])
        wait_until(lambda: get_json(f"{runner.base}/health")[1].get("last_batch_at"))
        corrupt(store_path(data_dir))
        publish_all(mosquitto, [reading(GAS[0], 2, t0 + 60, 2)])
        started = time.monotonic()
        code = runner.wait_exit(timeout=15)
        took = time.monotonic() - started
    finally:
        runner.stop()
    stderr = runner.stderr
    assert code != 0, stderr
    fatal = [line for line in stderr.splitlines() if "fatal" in line]
    path = store_path(data_dir)
    assert len(fatal) == 1, stderr
    assert (f"fatal: state.db ({path}) is corrupt: database disk image is malformed; "
            "restore from a backup or move it aside") in fatal[0]
    assert "Traceback" not in stderr
    assert took < 10


def test_a_corrupt_state_db_at_start_is_one_line_too(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    data_dir = tmp_path / "data"
    register(data_dir, GAS[:1])
    store = AlertStore(store_path(data_dir))
    store.close()
    corrupt(store_path(data_dir), ("alerts",))
    runner = RunnerProcess(tmp_path, data_dir, mosquitto.url, "cw-corrupt-start").start()
    code = runner.wait_exit(timeout=30)
    assert code != 0
    lines = [line for line in runner.stderr.splitlines() if "state.db" in line or "rror" in line]
    assert len(lines) == 1 and str(store_path(data_dir)) in lines[0] and "corrupt" in lines[0], runner.stderr
    assert "Traceback" not in runner.stderr


# -- 1. any task dying stops the runner --------------------------------------------------------------


def run_until_failed(settings: Any) -> tuple[RunnerThread, BaseException | None]:
    run = RunnerThread(settings)
    run.thread.start()
    run.thread.join(30)
    assert not run.thread.is_alive(), "the runner kept running with a dead task"
    return run, run.error


@pytest.mark.parametrize("target, what", [
    (Pipeline, "the consume loop"),
    (WebhookDelivery, "the webhook delivery task"),
])
def test_a_task_that_dies_stops_the_runner(tmp_path: Path, mosquitto: MosquittoServer, target: type,
                                           what: str, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(target, "tick" if target is Pipeline else "_endpoint_names", boom)
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-boom"},
                             webhooks={"url": "http://127.0.0.1:9/hooks", "secret": "s3cret-for-tests"})
    _, error = run_until_failed(settings)
    assert isinstance(error, RunnerFailed)
    assert str(error) == f"fatal: {what} failed: RuntimeError: injected failure; stopping (a bug: please report it)"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL] == [str(error)]


# -- 3. /health and /ready over HTTP -----------------------------------------------------------------


def test_health_and_ready_when_all_is_well_and_when_the_loop_stalls(tmp_path: Path,
                                                                   mosquitto: MosquittoServer) -> None:
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-stall"})
    register(settings.data_dir, GAS[:1])
    run = RunnerThread(settings).start()
    gate = threading.Event()
    try:
        runner = run.runner
        base = f"http://127.0.0.1:{runner.api_port}"
        wait_until(lambda: get_json(f"{base}/ready")[0] == 200)
        publish_all(mosquitto, [reading(GAS[0], 1, time.time() - 10, 1)])
        wait_until(lambda: get_json(f"{base}/ready")[1]["last_batch_at"])
        status, body = get_json(f"{base}/ready")
        assert status == 200 and body["status"] == "ok" and body["problems"] == []
        assert body["consume_loop_alive"] and body["mqtt_connected"] and body["storage_error"] is None
        assert body["collector_restarts"] == 0 and body["webhooks_pending"] == 0
        assert set(body["backlog"]) == {"handoff", "handoff_bytes", "handoff_full", "unacked"}
        assert time.time() - body["last_loop_at"] < 5
        # the consume loop hangs in a batch (as on a lock or a wedged call): its heartbeat goes stale
        handle = runner._handle

        async def stuck(*args: Any) -> None:
            await asyncio.to_thread(gate.wait, 30)
            await handle(*args)

        runner.stale_after_s = 0.5
        runner._handle = stuck  # type: ignore[method-assign]
        publish_all(mosquitto, [reading(GAS[0], 2, time.time() - 5, 1)])
        wait_until(lambda: get_json(f"{base}/health")[0] == 503)
        status, body = get_json(f"{base}/health")
        assert body["status"] == "failing" and "consume_loop_stalled" in body["problems"]
        assert get_json(f"{base}/ready")[0] == 503
        runner._handle = handle  # type: ignore[method-assign]
        gate.set()
        wait_until(lambda: get_json(f"{base}/health")[0] == 200)
    finally:
        gate.set()
        run.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_is_live_but_not_ready_and_recovers(tmp_path: Path, small_disk: Path,
                                                      mosquitto: MosquittoServer) -> None:
    settings = make_settings(small_disk / "data", mqtt={"url": mosquitto.url, "client_id": "cw-full"})
    register(settings.data_dir, GAS)
    run = RunnerThread(settings).start()
    filler = small_disk / "filler"
    try:
        base = f"http://127.0.0.1:{run.runner.api_port}"
        wait_until(lambda: get_json(f"{base}/ready")[0] == 200)
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        t0 = time.time() - 100
        publish_all(mosquitto, [(topic, payload[:-1] + b', "pad": "' + b"x" * 3000 + b'"}')
                                for topic, payload in (reading(d, 1, t0, 1) for d in GAS)])
        wait_until(lambda: get_json(f"{base}/ready")[0] == 503)
        status, body = get_json(f"{base}/ready")
        assert "storage_error" in body["problems"] and body["storage_error"]
        # held, not acknowledged; or committed into the write-ahead log's reused space (durable), while
        # the checkpoint into the full database file fails and says so (sinks/walcheckpoint.py)
        assert body["backlog"]["unacked"] > 0 or "WAL checkpoint" in body["storage_error"]
        status, body = get_json(f"{base}/health")
        assert status == 200 and body["status"] == "not_ready"  # alive: retrying, nothing to restart
        filler.unlink()
        wait_until(lambda: get_json(f"{base}/ready")[0] == 200, timeout=30)
        assert run.runner.pipeline.counters["processed"] >= len(GAS)
    finally:
        filler.unlink(missing_ok=True)
        run.stop()


# -- 2. the collector child process killed -----------------------------------------------------------


def test_a_killed_collector_process_is_restarted_and_nothing_is_lost(
        tmp_path: Path, mosquitto: MosquittoServer, caplog: pytest.LogCaptureFixture) -> None:
    """Finding: kill -9 of the collector child left it defunct, never restarted, nothing logged, and
    /health still said mqtt_connected: true."""
    caplog.set_level(logging.WARNING)
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-kill",
                                                      "reconnect_min_s": 3.0})
    register(settings.data_dir, GAS)
    t0 = time.time() - 1000
    run = RunnerThread(settings).start()
    gate = threading.Event()
    try:
        runner = run.runner
        base = f"http://127.0.0.1:{runner.api_port}"
        publish_all(mosquitto, [reading(d, 1, t0, 1) for d in GAS])
        wait_until(lambda: runner.pipeline.counters["processed"] == len(GAS))
        # hold the consume loop, so the dead child's messages sit handed over but unacknowledged
        handle, held = runner._handle, threading.Event()

        async def holding(batch: list[Any], *args: Any) -> None:
            if batch:
                held.set()
                await asyncio.to_thread(gate.wait, 30)
            await handle(batch, *args)

        runner._handle = holding  # type: ignore[method-assign]
        publish_all(mosquitto, [reading(d, 2, t0 + 60, 60) for d in GAS])
        wait_until(held.is_set)
        # every message handed over by this child before it dies (the first batch may hold only some)
        wait_until(lambda: runner.collector.received >= 2 * len(GAS))
        pid = runner.collector.pid
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: get_json(f"{base}/ready")[0] == 503)
        status, body = get_json(f"{base}/ready")
        assert body["mqtt_connected"] is False
        assert {"collector_down", "mqtt_disconnected"} <= set(body["problems"])
        assert get_json(f"{base}/health")[0] == 200  # alive: it recovers by itself
        publish_all(mosquitto, [reading(d, 3, t0 + 120, 60) for d in GAS])  # queued by the broker meanwhile
        gate.set()
        wait_until(lambda: runner.collector.restarts == 1 and runner.collector.connected.is_set(), timeout=30)
        assert runner.collector.pid != pid
        wait_until(lambda: runner.pipeline.counters["processed"] == 3 * len(GAS), timeout=30)
        wait_until(lambda: get_json(f"{base}/ready")[0] == 200)
        stats = runner.stats()
    finally:
        gate.set()
        run.stop()
    assert stats["mqtt"]["collector_restarts"] == 1 and stats["mqtt"]["collector_last_gap_s"] >= 3.0
    assert stats["mqtt"]["stale_acks"] >= len(GAS)  # the dead child's acks were not sent to the new one
    # the broker redelivered what the dead child had handed over: seen twice, kept once
    assert stats["counters"].get("dead_letter.duplicate", 0) == stats["counters"].get("dead_letters", 0)
    warnings = [r.getMessage() for r in caplog.records if r.name.endswith("collector_process")]
    assert any(f"(pid {pid}) died" in m and "restarting it in 3.0 s" in m for m in warnings), warnings
    assert any("back" in m and "after a gap of" in m for m in warnings), warnings
    store = AlertStore(store_path(settings.data_dir))
    opened = {a.device_id for a in store.alerts("open") if a.rule == "gas_level"}
    store.close()
    assert opened == {d.id for d in GAS}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # paho's thread, on purpose
def test_a_dead_mqtt_thread_stops_the_runner(tmp_path: Path, mosquitto: MosquittoServer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With the collector as a thread (mqtt.collector_process: false), paho's network thread ends when
    a callback raises: the runner must not go on without it."""
    from citywatch.ingest.collector import Collector

    def boom(*args: Any) -> None:
        raise RuntimeError("injected failure in on_message")

    monkeypatch.setattr(Collector, "_on_message", boom)
    monkeypatch.setattr(Collector, "_on_publish_fields", boom)  # FastClient's path for plain publishes
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-thread",
                                                      "collector_process": False})
    run = RunnerThread(settings).start()
    publish_all(mosquitto, [reading(GAS[0], 1, time.time() - 5, 1)])
    run.thread.join(30)
    assert not run.thread.is_alive()
    assert isinstance(run.error, RunnerFailed)
    assert str(run.error) == "fatal: the MQTT collector's network thread died (see the error above); stopping"
