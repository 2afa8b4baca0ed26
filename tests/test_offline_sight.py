"""Our own trouble is never the devices' silence. Found by the 1M-device headline run: when the
pipeline fell about two minutes behind, 90,883 devices that had reported were declared offline in
one tick, and that storm stalled the runner. The same happened to every device during a broker
outage longer than the offline timeout. Now (streams/sight.py):

- behind (a backlog in the hand-off, the collector or the broker): silence is judged as of the
  newest reading taken with nothing left behind it;
- blind (broker or collector down): each device's offline timer restarts when sight returns.

A device that really went silent is still declared offline, once we could have seen it report.
Real processes: `citywatch run`, Mosquitto, a paho publisher for the fleet."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Alert, Device
from citywatch.sinks.store import AlertStore, store_path
from citywatch.streams.sight import Sight
from tests.conftest import wait_until
from tests.mqtt_tools import publish_all
from tests.runner_process import RunnerProcess, get_json
from tests.servers.mosquitto import MosquittoServer

INTERVAL_S = 1.0  # offline after 3 intervals: 3 s of silence
FLEET = [Device(id=f"gas-{i:02d}", kind="gas", district="Nanhu", interval_s=INTERVAL_S) for i in range(12)]
SILENT = FLEET[-1]  # the one that really goes quiet


def test_sight_judges_silence_only_while_watching() -> None:
    sight = Sight(now=100.0)
    assert sight.blind_since == 100.0  # not connected yet
    assert sight.observe(101.0, connected=True, backlog=0, newest_received_at=None) == 101.0  # sight returns
    assert sight.observe(102.0, connected=True, backlog=0, newest_received_at=None, quiet_since=102.0) is None  # once
    assert sight.caught_up_at == 102.0 and sight.lag_s(102.0) == 0.0
    # behind: readings left in the hand-off; the newest taken was received long ago
    sight.observe(110.0, connected=True, backlog=500, newest_received_at=109.9)
    assert sight.caught_up_at == 102.0 and sight.lag_s(110.0) == 8.0
    sight.observe(111.0, connected=True, backlog=0, newest_received_at=104.0)  # more waited upstream
    assert sight.caught_up_at == 104.0
    sight.observe(112.0, connected=True, backlog=0, newest_received_at=111.9)
    assert sight.caught_up_at == 111.9
    sight.observe(113.0, connected=True, backlog=0, newest_received_at=None)  # a stalled wait: no proof
    assert sight.caught_up_at == 111.9
    sight.observe(113.5, connected=True, backlog=0, newest_received_at=None, quiet_since=113.3)  # found none
    assert sight.caught_up_at == 113.3
    # blind: nothing advances; sight returns once, and the blind time is counted
    assert sight.observe(120.0, connected=False, backlog=0, newest_received_at=None) is None
    assert sight.observe(125.0, connected=False, backlog=0, newest_received_at=None) is None
    assert sight.caught_up_at == 113.3 and sight.blind_since == 120.0
    assert sight.observe(130.0, connected=True, backlog=0, newest_received_at=None, quiet_since=129.8) == 130.0
    assert sight.blind_s == 1.0 + 10.0 and sight.caught_up_at == 129.8


class Fleet:
    """The devices report every half interval from a paho client; a device can be told to go quiet.
    While the broker is down a round's readings are lost, as a real device's would be."""

    def __init__(self, broker: MosquittoServer) -> None:
        self.broker = broker
        self.quiet: set[str] = set()
        self.rounds = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.seq = 0

    def _run(self) -> None:
        while not self.stop.wait(INTERVAL_S / 2):
            self.seq += 1
            messages = [(f"citywatch/gas/{d.id}/telemetry",
                         json.dumps({"ts": time.time(), "seq": self.seq, "lel_pct": 0.0, "co_ppm": 1.0}).encode())
                        for d in FLEET if d.id not in self.quiet]
            try:
                publish_all(self.broker, messages)
            except (OSError, AssertionError, ValueError):
                continue  # the broker is down: this round is lost
            self.rounds += 1

    def __enter__(self) -> Fleet:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.fixture()
def runner(tmp_path: Path, mosquitto: MosquittoServer) -> Iterator[RunnerProcess]:
    data_dir = tmp_path / "data"
    registry = Registry(registry_path(data_dir))
    for device in FLEET:
        registry.add(device)
    registry.close()
    # small batches and a fast tick: a backlog takes many turns of the loop to drain, each with a tick
    proc = RunnerProcess(tmp_path, data_dir, mosquitto.url, "cw-sight", ingest={"batch_size": 4},
                         alerts={"tick_s": 0.1}).start()
    try:
        proc.wait_healthy()
        yield proc
    finally:
        proc.stop()


def offline_alerts(data_dir: Path) -> list[Alert]:
    store = AlertStore(store_path(data_dir))
    try:
        return [a for a in store.alerts(None) if a.rule == "device_offline"]
    finally:
        store.close()


def test_a_frozen_runner_with_a_backlog_declares_only_the_silent_device_offline(
        runner: RunnerProcess, mosquitto: MosquittoServer) -> None:
    with Fleet(mosquitto) as fleet:
        wait_until(lambda: fleet.rounds >= 4, 20)
        assert runner.proc is not None
        fleet.quiet.add(SILENT.id)
        runner.proc.send_signal(signal.SIGSTOP)  # a stalled process (VM pause, swap): the fleet goes on
        rounds = fleet.rounds
        wait_until(lambda: fleet.rounds >= rounds + 10, 20)  # 5 s: past every device's 3 s timeout
        runner.proc.send_signal(signal.SIGCONT)
        alerts = wait_until(lambda: offline_alerts(runner.data_dir) or None, 20)
        # the backlog is worked off; then the silent device is alone (a storm would be here by now)
        rounds = fleet.rounds
        wait_until(lambda: fleet.rounds >= rounds + 4, 20)
        alerts = offline_alerts(runner.data_dir)
    assert [a.device_id for a in alerts] == [SILENT.id], [(a.device_id, a.message) for a in alerts]


def test_a_broker_outage_longer_than_the_timeout_opens_no_offline_storm(
        runner: RunnerProcess, mosquitto: MosquittoServer) -> None:
    with Fleet(mosquitto) as fleet:
        wait_until(lambda: fleet.rounds >= 4, 20)
        fleet.quiet.add(SILENT.id)
        mosquitto.stop()
        wait_until(lambda: not get_json(f"{runner.base}/health")[1].get("mqtt_connected", True), 20)
        down_at = time.time()
        time.sleep(5.0)  # the outage itself (not a synchronisation): longer than the 3 s offline timeout
        assert offline_alerts(runner.data_dir) == []  # blind: nobody is declared offline meanwhile
        mosquitto.start()
        wait_until(lambda: get_json(f"{runner.base}/health")[1].get("mqtt_connected", False), 30)
        back_at = time.time()
        alerts = wait_until(lambda: offline_alerts(runner.data_dir) or None, 20)
        rounds = fleet.rounds
        wait_until(lambda: fleet.rounds >= rounds + 4, 20)
        alerts = offline_alerts(runner.data_dir)
    assert [a.device_id for a in alerts] == [SILENT.id], [(a.device_id, a.message) for a in alerts]
    # declared one timeout after sight returned, not at once
    assert alerts[0].opened_at >= back_at - 0.5 + 3 * INTERVAL_S - 1.0 > down_at


def test_a_power_cut_is_declared_in_bounded_ticks_and_no_device_is_lost() -> None:
    """12,000 devices silent at once: 5,000 a tick (one transaction and its webhooks stay bounded, the
    loop keeps turning), every one declared exactly once, oldest first."""
    from citywatch.config import load_settings
    from citywatch.detectors.lifecycle import AlertEngine
    from citywatch.model import Output
    from citywatch.streams.pipeline import OFFLINE_PER_TICK, Pipeline

    settings = load_settings(None, {})
    devices = {f"gas-{i:05d}": Device(id=f"gas-{i:05d}", kind="gas", district="Nanhu", interval_s=60.0)
               for i in range(12_000)}
    t0 = time.time() - 3600
    pipeline = Pipeline(settings, devices, AlertEngine(settings.alerts), started_at=t0)
    out = Output()
    for i, device_id in enumerate(devices):
        payload = json.dumps({"ts": t0 + 1 + i * 0.001, "seq": 1, "lel_pct": 0.0, "co_ppm": 1.0}).encode()
        pipeline.process(f"citywatch/gas/{device_id}/telemetry", payload, t0 + 1 + i * 0.001, out)
    assert pipeline.counters["processed"] == 12_000 and not out.transitions
    declared: list[list[str]] = []
    for tick in range(4):
        out = Output()
        pipeline.tick(t0 + 600 + tick, out)
        declared.append([t.alert.device_id for t in out.transitions if t.alert.rule == "device_offline"])
    assert [len(d) for d in declared] == [OFFLINE_PER_TICK, OFFLINE_PER_TICK, 2_000, 0]
    flat = [device_id for d in declared for device_id in d]
    assert flat == list(devices)  # each once, in the order they went quiet
