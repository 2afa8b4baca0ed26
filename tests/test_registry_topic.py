"""The device registry over Kafka (`kafka.registry: topic`), against a real tansu broker.

The topic round trip (records, disabled devices, tombstones, the background consumer), what `citywatch
devices ...` publishes after its SQLite commit, a publishing failure (the change kept, the command fails
and names `devices publish`), `devices publish` (the whole registry, removals included), and one real
`process` worker on a data dir of its own (no registry file): it reads the whole topic before it takes
telemetry that was waiting for it, and follows CLI changes while it runs (added: processed; disabled:
device_disabled; removed: unknown_device). Readiness is polled from the worker's heartbeat and its
registry status file, never assumed. On tansu the group join takes longer than reading the registry, so
that the registry comes first is proven without one (test_run_worker_reads_the_whole_registry_before_...).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from citywatch.cli import main
from citywatch.config import KafkaSettings
from citywatch.devices.registry import Registry, registry_path
from citywatch.devices.registry_topic import TopicRegistry, publish_devices
from citywatch.model import Device
from citywatch.streams.bridge import ensure_topics, start_producer
from citywatch.streams.faust_app import FaustCity
from tests.conftest import make_settings, wait_until
from tests.servers.mosquitto import free_port
from tests.servers.tansu import TansuServer

pytestmark = pytest.mark.timeout(300)

JOIN_S = 150.0  # group joins on tansu are slow (tests/test_faust_integration.py)


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuServer]:
    server = TansuServer(tmp_path_factory.mktemp("tansu")).start()  # fresh broker: see platform.md
    yield server
    server.stop()


_topics = iter(range(1_000_000))


def kafka_for(bootstrap: str, **more: Any) -> KafkaSettings:
    """Settings of a registry topic of its own (tests share the broker)."""
    return KafkaSettings(bootstrap=bootstrap, registry="topic", registry_topic=f"reg-{next(_topics)}-{os.getpid()}",
                         exact_high_watermark=False, **more)


def read_topic(kafka: KafkaSettings) -> dict[str, Device]:
    async def go() -> dict[str, Device]:
        reg = TopicRegistry(kafka)
        await reg.start()
        await reg.stop()
        return {d.id: d for d in reg.snapshot()}
    return asyncio.run(go())


def write_config(tmp_path: Path, data_dir: Path, kafka: KafkaSettings) -> Path:
    path = tmp_path / f"config-{data_dir.name}.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(data_dir), "mqtt": {"url": "mqtt://broker.test:1883"},
                                    "kafka": json.loads(kafka.model_dump_json())}))
    return path


def cli(config: Path, *args: str, code: int = 0, stdin: str | None = None) -> Result:
    result = CliRunner().invoke(main, ["--config", str(config), *args], input=stdin)
    assert result.exit_code == code, (result.output, result.exception)
    return result


# -- the topic ---------------------------------------------------------------------------------------


def test_records_disabled_devices_and_tombstones_round_trip_and_are_followed(tansu: TansuServer) -> None:
    kafka = kafka_for(tansu.bootstrap)
    gas = Device(id="gas-1", kind="gas", district="Nanhu", grid="G1", thresholds={"gas.level1_pct": 20.0})
    lock = Device(id="lock-1", kind="lock", tenants=2)

    async def go() -> None:
        await publish_devices(kafka, [(gas.id, gas), (lock.id, lock), ("gone-1", Device(id="gone-1", kind="gas"))])
        disabled_lock = Device(id="lock-1", kind="lock", tenants=2, enabled=False)
        await publish_devices(kafka, [("gone-1", None), (lock.id, disabled_lock)])
        reg = TopicRegistry(kafka)
        await reg.start()
        follower = asyncio.create_task(reg.follow())
        try:
            assert reg.get("gas-1") == gas and reg.get("gone-1") is None and len(reg) == 2
            disabled = reg.get("lock-1")
            assert disabled is not None and disabled.enabled is False and disabled.tenants == 2
            await publish_devices(kafka, [("noise-1", Device(id="noise-1", kind="noise", zone_class="2")),
                                          ("gas-1", None)])
            deadline = time.monotonic() + 30
            while reg.get("noise-1") is None or reg.get("gas-1") is not None:
                assert time.monotonic() < deadline, "the follower did not apply the new records"
                await asyncio.sleep(0.05)
            assert sorted(d.id for d in reg.snapshot()) == ["lock-1", "noise-1"]
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    asyncio.run(go())


def test_a_worker_with_the_topic_opens_no_registry_file(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "worker", api={"enabled": False})
    city = FaustCity(settings, KafkaSettings(registry="topic", partitions=2, table_store="memory"), role="process",
                     worker_id="w1")
    try:
        assert isinstance(city.devices, TopicRegistry) and city.registry is None
        assert not registry_path(settings.data_dir).exists()
    finally:
        city.close()


def test_run_worker_reads_the_whole_registry_before_faust_starts(
        tmp_path: Path, tansu: TansuServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order, without a group join: when Faust's worker starts (here a stand-in that only looks), the
    worker's registry already holds every device the topic had, and its follower is one of the app's tasks."""
    import faust

    from citywatch.streams import faust_app

    kafka = kafka_for(tansu.bootstrap, partitions=2, table_store="memory")
    devices = [Device(id=f"gas-{i}", kind="gas") for i in range(300)]
    asyncio.run(publish_devices(kafka, [(d.id, d) for d in devices[:150]]))
    asyncio.run(publish_devices(kafka, [(d.id, d) for d in devices[150:]]))  # another batch: read to its end
    seen: dict[str, Any] = {}

    class LookingWorker:
        def __init__(self, app: Any, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
            self.app, self.loop = app, loop

        def execute_from_commandline(self) -> None:
            city = seen["city"] = created[0]
            assert city.registry_feed is not None
            seen["devices"] = len(city.registry_feed)
            seen["tasks"] = [getattr(t, "__name__", "") for t in self.app._app_tasks]
            self.loop.run_until_complete(city.registry_feed.stop())

    created: list[FaustCity] = []
    real = faust_app.FaustCity

    def recording(*args: Any, **kwargs: Any) -> FaustCity:
        created.append(real(*args, **kwargs))
        return created[0]

    monkeypatch.setattr(faust, "Worker", LookingWorker)
    monkeypatch.setattr(faust_app, "FaustCity", recording)
    faust_app.run_worker(make_settings(tmp_path / "worker", api={"enabled": False}), kafka, "process", "w1")
    assert seen["devices"] == 300
    assert "follow" in seen["tasks"]


# -- what the CLI publishes --------------------------------------------------------------------------


def test_every_cli_change_is_published_after_its_commit(tmp_path: Path, tansu: TansuServer) -> None:
    kafka = kafka_for(tansu.bootstrap)
    config = write_config(tmp_path, tmp_path / "admin", kafka)
    cli(config, "devices", "add", "gas-1", "--kind", "gas", "--district", "Nanhu")
    cli(config, "devices", "add", "gas-2", "--kind", "gas")
    cli(config, "devices", "update", "gas-1", "--grid", "G7")
    cli(config, "devices", "disable", "gas-2")
    csv = tmp_path / "street.csv"
    csv.write_text("id,kind,district\nnoise-1,noise,Nanhu\nnoise-2,noise,Beihu\n")
    cli(config, "devices", "import", str(csv), "--secrets-out", str(tmp_path / "secrets.csv"))
    cli(config, "devices", "remove", "noise-2", "--yes")

    topic = read_topic(kafka)
    registry = Registry(registry_path(tmp_path / "admin"))
    try:
        assert topic == {d.id: d for d in registry.all()}
    finally:
        registry.close()
    assert set(topic) == {"gas-1", "gas-2", "noise-1"}
    assert topic["gas-1"].grid == "G7" and topic["gas-1"].district == "Nanhu"
    assert topic["gas-2"].enabled is False

    cli(config, "devices", "enable", "gas-2")
    assert read_topic(kafka)["gas-2"].enabled is True


def test_a_failed_publish_keeps_the_change_fails_the_command_and_names_the_way_back(
        tmp_path: Path, tansu: TansuServer) -> None:
    good = kafka_for(tansu.bootstrap)
    down = good.model_copy(update={"bootstrap": f"127.0.0.1:{free_port()}"})  # nothing listens there
    config = write_config(tmp_path, tmp_path / "admin", down)
    result = cli(config, "devices", "add", "gas-1", "--kind", "gas", code=1)
    assert "password" in result.output  # printed once: the device is registered, its config shown
    assert "citywatch devices publish" in result.output and "registry.db" in result.output
    registry = Registry(registry_path(tmp_path / "admin"))
    try:
        assert registry.get("gas-1") is not None
    finally:
        registry.close()
    assert "publishing the registry to Kafka failed" in cli(config, "devices", "publish", code=1).output

    fixed = write_config(tmp_path, tmp_path / "admin", good)
    cli(fixed, "devices", "publish")
    assert set(read_topic(good)) == {"gas-1"}


def test_publish_sends_the_whole_registry_and_removes_what_it_no_longer_has(
        tmp_path: Path, tansu: TansuServer) -> None:
    kafka = kafka_for(tansu.bootstrap)
    asyncio.run(publish_devices(kafka, [("old-1", Device(id="old-1", kind="gas"))]))  # e.g. before a restore
    config = write_config(tmp_path, tmp_path / "admin", kafka.model_copy(update={"registry": "file"}))
    cli(config, "devices", "add", "gas-1", "--kind", "gas")  # file mode: nothing published
    cli(config, "devices", "add", "lock-1", "--kind", "lock", "--tenants", "1")
    assert set(read_topic(kafka)) == {"old-1"}
    out = cli(config, "devices", "publish").output
    assert "2 devices, 1 removed" in out
    assert set(read_topic(kafka)) == {"gas-1", "lock-1"}


# -- a real worker -----------------------------------------------------------------------------------


def heartbeat(path: Path) -> dict[str, Any]:
    try:
        beat: dict[str, Any] = json.loads(path.read_text())
        return beat
    except (OSError, ValueError):
        return {}


def send_telemetry(kafka: KafkaSettings, device: str, seq: int) -> None:
    """What the bridge would forward for one reading (key = device id, headers topic and received_at)."""
    topic = f"citywatch/gas/{device}/telemetry"
    now = time.time()

    async def go() -> None:
        producer = await start_producer(kafka, deadline_s=30)
        try:
            await producer.send_and_wait(kafka.telemetry_topic, json.dumps({"ts": now, "seq": seq, "lel_pct": 1.0})
                                         .encode(), key=device.encode(),
                                         headers=[("topic", topic.encode()), ("received_at", repr(now).encode())])
        finally:
            await producer.stop()
    asyncio.run(go())


@pytest.mark.timeout(420)
def test_a_worker_on_another_host_reads_the_registry_from_kafka(tmp_path: Path, tansu: TansuServer) -> None:
    kafka = kafka_for(tansu.bootstrap, partitions=2, table_store="memory", app_id=f"cw-reg-{os.getpid()}")
    admin = write_config(tmp_path, tmp_path / "admin", kafka)  # where `citywatch devices` runs
    worker_dir = tmp_path / "worker"  # the worker's own disk: no registry.db there, ever
    worker_config = write_config(tmp_path, worker_dir, kafka)
    asyncio.run(ensure_topics(kafka))

    # Changes made, and telemetry waiting, before the worker starts: it must read the registry first.
    cli(admin, "devices", "add", "gas-early", "--kind", "gas")
    cli(admin, "devices", "add", "gas-gone", "--kind", "gas")
    cli(admin, "devices", "remove", "gas-gone", "--yes")
    send_telemetry(kafka, "gas-early", 1)
    send_telemetry(kafka, "gas-gone", 1)

    env = {**os.environ, "CITYWATCH_CONFIG": str(worker_config), "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "worker.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "citywatch.streams.faust_cli", "worker", "--role", "process",
                                 "--worker-id", "w1", "--loglevel", "warning"], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=tmp_path)
    beat_path = worker_dir / "heartbeats" / "worker-w1.json"
    status_path = worker_dir / "heartbeats" / "registry-w1.json"

    def counters() -> dict[str, int]:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        found: dict[str, int] = heartbeat(beat_path).get("counters", {})
        return found

    def position() -> int:
        return int(sum(heartbeat(status_path).get("positions", {}).values()))

    def followed(before: int) -> None:
        """Wait until the worker's registry consumer read past `before` (the CLI's change)."""
        wait_until(lambda: counters() and position() > before, timeout=30, interval=0.05)

    try:
        wait_until(lambda: counters().get("received", 0) >= 2, timeout=JOIN_S, interval=0.2)
        assert counters().get("processed") == 1, counters()  # gas-early: registered before the worker started
        assert counters().get("dead_letter.unknown_device") == 1, counters()  # gas-gone: removed before it
        assert heartbeat(status_path)["caught_up"] is True and heartbeat(status_path)["devices"] == 1
        assert not registry_path(worker_dir).exists()

        at = position()
        cli(admin, "devices", "add", "gas-late", "--kind", "gas")  # while it runs
        followed(at)
        send_telemetry(kafka, "gas-late", 1)
        wait_until(lambda: counters().get("received", 0) >= 3, timeout=30, interval=0.05)
        assert counters().get("processed") == 2 and counters().get("dead_letter.unknown_device") == 1, counters()

        at = position()
        cli(admin, "devices", "disable", "gas-late")
        followed(at)
        send_telemetry(kafka, "gas-late", 2)
        wait_until(lambda: counters().get("received", 0) >= 4, timeout=30, interval=0.05)
        assert counters().get("dead_letter.device_disabled") == 1, counters()

        at = position()
        cli(admin, "devices", "remove", "gas-early", "--yes")
        followed(at)
        send_telemetry(kafka, "gas-early", 2)
        wait_until(lambda: counters().get("received", 0) >= 5, timeout=30, interval=0.05)
        assert counters().get("dead_letter.unknown_device") == 2 and counters().get("processed") == 2, counters()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
