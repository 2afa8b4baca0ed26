"""INTEGRATION (real Kafka protocol, slow): the Faust runner's trouble is never the devices' silence.

A Faust worker used to judge silence by its wall clock: a stopped bridge, a Kafka outage or consumer
lag longer than a device's offline timeout declared every device of its partitions offline. Now the
bridges' watermarks say how far they have forwarded, and the worker judges only that far
(streams/watermark.py). Real processes: tansu, Mosquitto, `citywatch bridge`, one `citywatch worker
--role all` (pipeline and sink: alerts land in its store), and test_offline_sight's fleet of twelve
devices reporting twice a second with a 3 s offline timeout, one of which really goes quiet.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from citywatch.devices.registry import Registry, registry_path
from tests.conftest import wait_until
from tests.servers.mosquitto import MosquittoServer
from tests.servers.tansu import TansuServer
from tests.test_faust_integration import JOIN_S, Procs, heartbeat, owned
from tests.test_offline_sight import FLEET, SILENT, Fleet, offline_alerts

pytestmark = pytest.mark.timeout(300)

PARTITIONS = 2
BRIDGE = "cw-sight-bridge"


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuServer]:
    server = TansuServer(tmp_path_factory.mktemp("tansu")).start()
    yield server
    server.stop()


class City:
    """The bridge and one worker (role all) of a run, with their data dir."""

    def __init__(self, tmp_path: Path, procs: Procs, data_dir: Path) -> None:
        self.tmp_path, self.procs, self.data_dir = tmp_path, procs, data_dir

    def worker(self) -> dict[str, Any]:
        return heartbeat(self.data_dir, "worker-w") or {}

    def processed(self) -> int:
        self.procs.check_alive()
        return int(self.worker().get("counters", {}).get("processed", 0))

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.procs.procs[name].send_signal(sig)

    def fail(self, exc: AssertionError) -> AssertionError:
        logs = "\n".join(f"--- {name}\n{self.procs.logs(name)}" for name in self.procs.procs)
        alerts = [(a.device_id, a.message, a.opened_at) for a in offline_alerts(self.data_dir)]
        return AssertionError(f"{exc}\noffline alerts: {alerts}\nworker: {self.worker()}\n{logs}")


@pytest.fixture
def city(request: pytest.FixtureRequest, tmp_path: Path, tansu: TansuServer,
         mosquitto: MosquittoServer) -> Iterator[City]:
    run = f"cw-sight-{request.node.name.split('_')[2]}"  # topics and groups of their own on the module's broker
    data_dir = tmp_path / "data"
    registry = Registry(registry_path(data_dir))
    for device in FLEET:
        registry.add(device)
    registry.close()
    config = {
        "data_dir": str(data_dir), "log_level": "WARNING",
        "kafka": {"telemetry_topic": f"{run}-telemetry", "transitions_topic": f"{run}-transitions",
                  "deadletters_topic": f"{run}-deadletters"},
        "mqtt": {"url": mosquitto.url, "client_id": "cw-sight"},
        "api": {"enabled": False}, "metrics": {"port": 0},
        "alerts": {"tick_s": 0.2},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "CITYWATCH_CONFIG": str(config_path), "CITYWATCH_KAFKA__BOOTSTRAP": tansu.bootstrap,
           "CITYWATCH_KAFKA__PARTITIONS": str(PARTITIONS), "CITYWATCH_KAFKA__APP_ID": run,
           "CITYWATCH_KAFKA__EXACT_HIGH_WATERMARK": "false", "PYTHONUNBUFFERED": "1"}
    procs = Procs(tmp_path, env)
    c = City(tmp_path, procs, data_dir)
    try:
        procs.start("bridge", "bridge", "--client-id", BRIDGE)
        procs.start("worker", "worker", "--role", "all", "--worker-id", "w", "--loglevel", "warning")

        def joined() -> bool:
            procs.check_alive()
            bridge = heartbeat(data_dir, f"bridge-{BRIDGE}") or {}
            return (owned(data_dir, "w") == set(range(PARTITIONS)) and bridge.get("subscribed") is True
                    and c.worker().get("offline_checks", {}).get("as_of") is not None)  # watermarks read

        try:
            wait_until(joined, timeout=JOIN_S, interval=0.2)
        except AssertionError as exc:
            raise c.fail(exc) from None
        yield c
    finally:
        for proc in procs.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a stopped process cannot handle the terminate
        procs.stop_all()


def settle_then_silence(city: City, fleet: Fleet) -> None:
    """Every device reported and was processed (its offline timer runs), then one goes quiet."""
    wait_until(lambda: fleet.rounds >= 4 and city.processed() >= 3 * len(FLEET), 30)
    assert offline_alerts(city.data_dir) == []
    fleet.quiet.add(SILENT.id)


def only_the_silent_device(city: City, fleet: Fleet) -> list[str]:
    """Wait for the silent device's alert, then two more seconds of the fleet (a storm would be here)."""
    wait_until(lambda: city.processed() and offline_alerts(city.data_dir), 30)
    rounds = fleet.rounds
    wait_until(lambda: fleet.rounds >= rounds + 4, 20)
    processed = city.processed()
    wait_until(lambda: city.processed() > processed, 20)  # what the fleet sent meanwhile was judged with it
    return [a.device_id for a in offline_alerts(city.data_dir)]


def test_a_stopped_bridge_opens_no_offline_storm(city: City, mosquitto: MosquittoServer) -> None:
    try:
        with Fleet(mosquitto) as fleet:
            settle_then_silence(city, fleet)
            city.signal("bridge", signal.SIGSTOP)  # nothing reaches Kafka: the fleet goes on meanwhile
            stopped_at = time.time()
            rounds = fleet.rounds
            wait_until(lambda: fleet.rounds >= rounds + 10, 20)  # 5 s: past every device's 3 s timeout
            assert offline_alerts(city.data_dir) == []  # the worker cannot see: nobody declared meanwhile
            city.signal("bridge", signal.SIGCONT)
            declared = only_the_silent_device(city, fleet)
            behind = city.worker().get("offline_checks_behind_s")
    except AssertionError as exc:
        raise city.fail(exc) from None
    assert declared == [SILENT.id]
    assert offline_alerts(city.data_dir)[0].opened_at > stopped_at
    assert behind is not None and behind < 5.0  # caught up again


def test_a_frozen_worker_that_lags_declares_only_the_silent_device(city: City, mosquitto: MosquittoServer) -> None:
    try:
        with Fleet(mosquitto) as fleet:
            settle_then_silence(city, fleet)
            rebuilds = city.worker().get("rebuilds")
            city.signal("worker", signal.SIGSTOP)  # a VM pause: Kafka holds what the bridge forwards
            rounds = fleet.rounds
            wait_until(lambda: fleet.rounds >= rounds + 10, 20)  # 5 s: past every timeout, within the session
            city.signal("worker", signal.SIGCONT)
            declared = only_the_silent_device(city, fleet)
            beat = city.worker()
    except AssertionError as exc:
        raise city.fail(exc) from None
    assert declared == [SILENT.id]
    assert beat.get("rebuilds") == rebuilds  # no rebalance: the lag, not a takeover, was under test
