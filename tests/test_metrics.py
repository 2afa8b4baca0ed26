"""Prometheus /metrics: a real Prometheus (Debian `prometheus`) scrapes a running `citywatch run`;
the figures are what the runner counted; the endpoint is open like /health unless api.metrics_auth;
the Faust worker, the sink and the bridge export theirs too."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from citywatch.apitoken import api_token
from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.mosquitto import MosquittoServer, free_port, wait_port

GAS = Device(id="gas-m1", kind="gas", district="Nanhu", grid="G1")
PROMETHEUS = shutil.which("prometheus")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels); also checks that the text parses."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(url: str, token: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, "", exc.read().decode()


def city(tmp_path: Path, mosquitto: MosquittoServer, **sections: Any) -> Any:
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-metrics"}, **sections)
    registry = Registry(registry_path(settings.data_dir))
    registry.add(GAS)
    registry.close()
    return settings


def traffic(now: float) -> list[tuple[str, bytes]]:
    """6 readings (the last over gas level 1: an alarm opens), 3 malformed, 1 from an unknown device."""
    topic = f"citywatch/gas/{GAS.id}/telemetry"
    readings = [(topic, json.dumps({"ts": now - 10 + i, "seq": i, "lel_pct": 2.0}).encode()) for i in range(5)]
    readings.append((topic, json.dumps({"ts": now - 4, "seq": 5, "lel_pct": 30.0}).encode()))
    bad = [(topic, b"{not json") for _ in range(3)]
    stranger = [("citywatch/gas/nobody/telemetry", json.dumps({"ts": now, "lel_pct": 1.0}).encode())]
    return readings + bad + stranger


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    if PROMETHEUS is None:
        pytest.fail("prometheus is not installed: apt-get install -y prometheus (.ci/run does this)")
    started: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> str:
        port = free_port()
        conf = tmp_path / "prometheus.yml"
        conf.write_text(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
                        f"  - job_name: citywatch\n    static_configs:\n      - targets: ['{target}']\n")
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed with the process)
        started.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={conf}", f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}"], stdout=log, stderr=log))
        wait_port(port, timeout=30)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: get(f"{base}/-/ready")[0] == 200, timeout=30, interval=0.1)  # TSDB open: API answers
        return base

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(20)


def prom_api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def query(base: str, promql: str) -> float | None:
    result = prom_api(base, "query", query=promql)["result"]
    return float(result[0]["value"][1]) if result else None


def test_a_real_prometheus_scrapes_the_runner(tmp_path: Path, mosquitto: MosquittoServer, prometheus: Any) -> None:
    settings = city(tmp_path, mosquitto)
    run = RunnerThread(settings).start()
    runner = run.runner
    assert runner is not None
    try:
        publish_all(mosquitto, traffic(time.time()))
        wait_until(lambda: runner.pipeline.counters["received"] == 10 and runner.batches > 0)
        wait_until(lambda: len(runner.engine.by_id) == 1)
        base = f"http://127.0.0.1:{runner.api_port}"

        status, content_type, text = get(f"{base}/metrics")  # no token: open like /health
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        got = samples(text)
        assert got[("citywatch_messages_received_total", ())] == 10
        assert got[("citywatch_messages_processed_total", ())] == 6
        assert got[("citywatch_dead_letters_total", (("reason", "malformed_json"),))] == 3
        assert got[("citywatch_dead_letters_total", (("reason", "unknown_device"),))] == 1
        assert got[("citywatch_transitions_total", (("kind", "gas"), ("transition", "opened")))] == 1
        assert got[("citywatch_devices", (("state", "online"),))] == 1
        assert got[("citywatch_devices", (("state", "offline"),))] == 0
        assert got[("citywatch_open_alerts", ())] == 1
        assert got[("citywatch_outbox_rows", (("status", "pending"),))] >= 0  # no receiver: stays pending
        assert got[("citywatch_disk_bytes", (("part", "state_db"),))] > 0
        assert got[("citywatch_filesystem_free_bytes", ())] > 0
        assert got[("citywatch_batch_duration_seconds_count", ())] >= 1
        assert got[("citywatch_collector_restarts_total", ())] == 0
        assert got[("citywatch_mqtt_connected", ())] == 1
        assert got[("citywatch_api_connections", ())] >= 1  # this very scrape
        assert got[("process_resident_memory_bytes", ())] > 0

        server = prometheus(f"127.0.0.1:{runner.api_port}")
        wait_until(lambda: any(t["health"] == "up" for t in prom_api(server, "targets")["activeTargets"]),
                   timeout=30, interval=0.2)
        assert wait_until(lambda: query(server, "citywatch_messages_received_total") == 10, timeout=30,
                          interval=0.2)
        assert query(server, 'sum(citywatch_dead_letters_total)') == 4
        assert query(server, 'citywatch_transitions_total{kind="gas",transition="opened"}') == 1
    finally:
        run.stop()


def test_metrics_can_require_the_token(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    settings = city(tmp_path, mosquitto, api={"port": 0, "metrics_auth": True})
    run = RunnerThread(settings).start()
    assert run.runner is not None
    try:
        base = f"http://127.0.0.1:{run.runner.api_port}"
        assert get(f"{base}/metrics")[0] == 401
        assert get(f"{base}/metrics", "wrong-token")[0] == 401
        status, _, text = get(f"{base}/metrics", api_token(settings.api, settings.data_dir, create=False))
        assert status == 200 and ("citywatch_messages_received_total", ()) in samples(text)
        assert get(f"{base}/health")[0] == 200  # still open
    finally:
        run.stop()


def test_a_scrape_runs_no_group_by_on_the_event_loop(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    """The outbox depth is counted on the exporter's own read-only connection in a worker thread: the
    event loop's connections (the store's, the webhook delivery's) see no GROUP BY and no outbox count
    from a scrape beyond the indexed pending count /health makes anyway."""
    settings = city(tmp_path, mosquitto)
    run = RunnerThread(settings).start()
    runner = run.runner
    assert runner is not None
    try:
        statements: list[str] = []
        loop_connections = (runner.store.conn, runner.delivery.conn)
        def trace(callback: Any) -> None:
            for conn in loop_connections:
                conn.set_trace_callback(callback)

        run.call(lambda: trace(statements.append))
        status, _, text = get(f"http://127.0.0.1:{runner.api_port}/metrics")
        run.call(lambda: trace(None))
        assert status == 200 and ("citywatch_outbox_rows", (("status", "held"),)) in samples(text)
        assert not [s for s in statements if "GROUP BY" in s.upper()]
        assert all("status = 'pending'" in s for s in statements if "webhook_outbox" in s), statements
    finally:
        run.stop()


# -- the Kafka runner: process worker, sink, bridge -------------------------------------------------


def render(exporter: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import asyncio

    return samples(asyncio.run(exporter.render()).decode())


def test_a_process_worker_exports_its_pipeline(tmp_path: Path) -> None:
    from citywatch.streams.faust_app import worker_exporter
    from tests.test_faust_agents import GAS as WORKER_GAS
    from tests.test_faust_agents import T0, city_for, feed, telemetry
    from tests.test_faust_agents import settings as worker_settings

    city, rec = city_for(worker_settings(tmp_path))
    try:
        feed(city, [telemetry(WORKER_GAS, T0, 1, lel_pct=30.0), telemetry(WORKER_GAS, T0 + 60, 2, lel_pct=60.0),
                    ("citywatch/gas/gas-7/telemetry", b"{nope", T0 + 61)])
        got = render(worker_exporter(city))
    finally:
        city.close()
    assert got[("citywatch_messages_received_total", ())] == 3
    assert got[("citywatch_messages_processed_total", ())] == 2
    assert got[("citywatch_dead_letters_total", (("reason", "malformed_json"),))] == 1
    assert got[("citywatch_transitions_total", (("kind", "gas"), ("transition", "opened")))] == 1
    assert got[("citywatch_transitions_total", (("kind", "gas"), ("transition", "updated")))] == 1
    assert got[("citywatch_devices", (("state", "online"),))] == 1
    assert got[("citywatch_open_alerts", ())] == 1
    assert ("citywatch_outbox_rows", (("status", "pending"),)) not in got  # the sink's, not a process worker's


def test_the_sink_serves_its_metrics_on_its_api(tmp_path: Path) -> None:
    import asyncio

    from tests.test_faust_agents import LOCK, T0, city_for, feed, telemetry
    from tests.test_faust_agents import settings as worker_settings

    s = worker_settings(tmp_path, api={"enabled": True, "port": 0, "token": "t0ken-t0ken"},
                        webhooks={"url": "http://127.0.0.1:9/hook"})
    city, rec = city_for(s)
    sink_city, _ = city_for(s, worker_id="sink", role="sink")
    try:
        feed(city, [telemetry(LOCK, T0, 1, event="forced_open")])
        assert sink_city.sink is not None
        sink_city.sink.write(rec.transitions + rec.transitions)  # a redelivery: dropped

        async def go() -> tuple[int, str, str]:
            runner = await sink_city.start_sink_api()
            port = next(iter(runner.sites)).port  # type: ignore[attr-defined]  # httpserve's site
            try:
                return await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics")  # no token
            finally:
                await runner.cleanup()

        status, _, text = asyncio.run(go())
    finally:
        city.close()
        sink_city.close()
    assert status == 200
    got = samples(text)
    assert got[("citywatch_sink_transitions_total", ())] == 1
    assert got[("citywatch_sink_duplicates_total", ())] == 1
    assert got[("citywatch_outbox_rows", (("status", "pending"),))] == 1  # the receiver is down
    assert got[("citywatch_api_connections", ())] >= 1


def test_the_bridge_exports_what_it_forwarded(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    """A real bridge: Mosquitto in, a real Kafka-protocol broker (tansu) out, /metrics on metrics.port."""
    import asyncio

    from citywatch.streams.bridge import Bridge
    from tests.servers.tansu import TansuServer

    tansu = TansuServer(tmp_path / "tansu").start()
    try:
        port = free_port()
        s = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-m-bridge"},
                          metrics={"port": port}, kafka={"bootstrap": tansu.bootstrap, "partitions": 2,
                                                         "idempotence": False})
        bridge = Bridge(s, s.kafka, client_id="cw-m-bridge-1")
        topic = f"citywatch/gas/{GAS.id}/telemetry"

        async def go() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            stop = asyncio.Event()
            task = asyncio.create_task(bridge.run(stop))
            try:
                await asyncio.wait_for(bridge.ready.wait(), 30)
                await asyncio.to_thread(publish_all, mosquitto, [(topic, b'{"ts": 1}')] * 5)
                deadline = time.monotonic() + 20
                while bridge.counters["forwarded"] < 5 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                status, _, text = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics")
                assert status == 200
                return samples(text)
            finally:
                stop.set()
                await task

        got = asyncio.run(go())
    finally:
        tansu.stop()
    assert got[("citywatch_bridge_forwarded_total", ())] == 5
    assert got[("citywatch_mqtt_received_total", ())] == 5
    assert got[("citywatch_batch_duration_seconds_count", ())] >= 1
    assert got[("citywatch_mqtt_connected", ())] == 1
