"""Issue 4, end to end through the real runner on a real Mosquitto: webhooks that survive a
receiver outage, a flaky receiver and a `kill -9` of the runner; InfluxDB backpressure that
slows ingestion instead of dropping; `device_status` points carrying battery and rssi.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import SecretStr

from citywatch.config import InfluxSettings
from citywatch.detectors.record import stored_header
from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device, Output, Reading
from citywatch.sinks.influx import InfluxSink, lines_for
from citywatch.sinks.lineprotocol import health_line, reading_line
from citywatch.sinks.store import AlertStore, store_path
from citywatch.streams.device_value import decode_value
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.flaky import Arrival, FlakyReceiver
from tests.servers.influx import InfluxStack
from tests.servers.mosquitto import MosquittoServer, free_port

RECEIVER_DOWN_S = 60  # the acceptance test: the receiver is down for 60 s
SECRET = "whsec_" + "ZTJlLWRlbGl2ZXJ5LXNlY3JldC1rZXktMDAx"
TOKEN = "test-token"
# One cycle per device: 30 %LEL opens (warning), 60 %LEL raises to critical (updated),
# 2 %LEL resolves: three transitions of one alert, which must reach the receiver in this order.
# Cycles are FLAP_WINDOW_MIN + 1 minutes apart in event time, so anti-flapping never merges them.
CYCLE = (30.0, 60.0, 2.0)
FLAP_WINDOW_MIN = 10
CYCLE_GAP_S = (FLAP_WINDOW_MIN + 1) * 60
HOOKS = {"secret": SECRET, "timeout_s": 0.5, "backoff_initial_s": 0.2, "backoff_max_s": 2.0}
ALERTS = {"flap_window_min": FLAP_WINDOW_MIN}


def gas_devices(n: int) -> list[Device]:
    return [Device(id=f"gas-{i:03d}", kind="gas", district=f"D{i % 5}", grid=f"G{i % 11:03d}",
                   address=f"{i} Test Rd", lat=30.7, lon=120.7) for i in range(n)]


def register(data_dir: Path, devices: list[Device]) -> None:
    registry = Registry(registry_path(data_dir))
    for d in devices:
        registry.add(d)
    registry.close()


def cycles(devices: list[Device], first: int, last: int, base: float) -> list[tuple[str, bytes]]:
    """Cycles first..last-1 of every device, interleaved across devices. Event times lie in the past
    (`base` is two hours ago): no deadman or deadline fires meanwhile; seq and ts rise strictly."""
    messages = []
    for c in range(first, last):
        for k, lel in enumerate(CYCLE):
            step = c * len(CYCLE) + k
            for d in devices:
                body = {"ts": round(base + c * CYCLE_GAP_S + k, 3), "seq": step + 1, "battery": 90.0, "rssi": -70.0,
                        "lel_pct": lel}
                messages.append((f"citywatch/gas/{d.id}/telemetry", json.dumps(body).encode()))
    return messages


def check_deliveries(arrivals: list[Arrival], store_dir: Path, gas_cycles: int) -> dict[str, int]:
    """Every stored transition arrived; unique ids == transition ids; per alert, first arrivals in
    transition order; a repeated id is a redelivery of the same bytes. Returns counts for the report.

    `gas_cycles` opened/updated/resolved cycles of gas_level are expected; other rules (health,
    learned detectors) may add transitions of their own, which must arrive just the same."""
    store = AlertStore(store_path(store_dir))
    try:
        transitions = store.transitions()
        outbox = dict(store.conn.execute("SELECT status, COUNT(*) FROM webhook_outbox GROUP BY status").fetchall())
    finally:
        store.close()
    number = {t.id: int(t.id.rsplit(".", 1)[1]) for t in transitions}
    per_alert: dict[str, list[Any]] = defaultdict(list)
    for t in sorted(transitions, key=lambda t: (t.alert_id, number[t.id])):
        per_alert[t.alert_id].append(t)
    gas = [v for v in per_alert.values() if v[0].alert.rule == "gas_level"]
    assert len(gas) == gas_cycles
    assert all([t.transition for t in v] == ["opened", "updated", "resolved"] for v in gas)
    assert all(a.webhook_id == a.body_id for a in arrivals)
    assert {a.webhook_id for a in arrivals} == set(number)  # all arrived; nothing that is not a transition
    first: dict[str, Arrival] = {}
    for a in arrivals:
        if a.webhook_id in first:
            assert a.body == first[a.webhook_id].body, f"{a.webhook_id} redelivered with another body"
        else:
            first[a.webhook_id] = a
    arrived: dict[str, list[int]] = defaultdict(list)
    for a in first.values():  # dicts keep insertion order: first arrivals, in order
        arrived[a.alert_id].append(a.n)
    expected = {alert_id: [number[t.id] for t in v] for alert_id, v in per_alert.items()}
    wrong = {k: v for k, v in arrived.items() if v != expected[k]}
    assert not wrong, f"{len(wrong)} alerts arrived out of order, e.g. {list(wrong.items())[:3]}"
    assert outbox == {"delivered": len(transitions)}
    return {"transitions": len(transitions), "alerts": len(per_alert), "requests_accepted": len(arrivals),
            "duplicates": len(arrivals) - len(first)}


def _read(data_dir: Path, sql: str) -> list[Any]:
    """Read-only, from state.db, safe while a runner (thread or process) writes it."""
    conn = sqlite3.connect(f"file:{store_path(data_dir)}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def stored_transitions(data_dir: Path) -> int:
    return int(_read(data_dir, "SELECT COUNT(*) FROM transitions")[0][0])


def committed_seqs(data_dir: Path) -> dict[str, int | None]:
    """Per device, the seq of the last reading whose batch was committed."""
    rows = _read(data_dir, "SELECT device_id, body FROM device_state")
    return {device_id: stored_header(state)["seq"] for device_id, body in rows if (state := decode_value(body).state)}


# -- (a) receiver down for 60 s, then flaky, during >= 2,000 transitions --------------------------------


@pytest.fixture
def flaky() -> Iterator[FlakyReceiver]:
    receiver = FlakyReceiver(fail_rate=0.3, hang_rate=0.03, hang_s=1.0, seed=4, secret=SECRET)  # not listening yet
    yield receiver
    receiver.stop()


def test_webhooks_survive_receiver_outage_and_flakiness(tmp_path: Path, mosquitto: MosquittoServer,
                                                        flaky: FlakyReceiver) -> None:
    devices = gas_devices(100)
    n_cycles, down_cycles = 7, 4  # 100 devices x 7 cycles x 3 = 2,100 transitions; 1,200 during the outage
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-outage"},
                             webhooks={"url": flaky.url, **HOOKS}, alerts=ALERTS)
    register(settings.data_dir, devices)
    base = time.time() - 7200
    run = RunnerThread(settings).start().subscribed()
    started = time.monotonic()
    try:
        runner = run.runner
        assert runner is not None

        def stats() -> dict[str, Any]:
            return run.call(lambda: {"webhooks": runner.delivery.stats(),
                                     "processed": runner.pipeline.counters.get("processed", 0)})

        first = cycles(devices, 0, down_cycles, base)
        publish_all(mosquitto, first)
        wait_until(lambda: stats()["processed"] == len(first) and stats()["webhooks"]["retrying"] > 50, 30)
        down_until = started + RECEIVER_DOWN_S
        while time.monotonic() < down_until:  # the outage: nothing delivered, nothing dead, attempts go on
            s = stats()["webhooks"]
            assert s["dead"] == 0 and s["delivered"] == 0
            time.sleep(0.5)
        during_outage = wait_until(lambda: (s := stats()["webhooks"])["pending"] == stored_transitions(
            settings.data_dir) and s)  # every transition so far waits in the outbox
        flaky.start()
        up_at = time.monotonic()
        second = cycles(devices, down_cycles, n_cycles, base)
        publish_all(mosquitto, second)

        def done() -> bool:
            s = stats()
            return s["processed"] == len(first) + len(second) and s["webhooks"]["pending"] == 0

        wait_until(done, 90, interval=0.2)
        recovered_s = time.monotonic() - up_at
        final = stats()
    finally:
        run.stop()
    flaky.stop()
    arrivals = flaky.snapshot()
    counts = check_deliveries(arrivals, settings.data_dir, len(devices) * n_cycles)
    assert counts["transitions"] >= 2000
    assert final["webhooks"]["dead"] == 0 and final["webhooks"]["delivered"] == counts["transitions"]
    assert flaky.counts["failed"] > 100 and flaky.counts["hung"] > 10  # it really was flaky
    # kept trying while down, as one paused lane (backoff per endpoint), not a retry loop per alert
    assert 10 <= during_outage["attempts"] < during_outage["pending"]
    assert flaky.counts["bad_signature"] == 0
    print(f"\n[outage] {counts}, receiver {dict(flaky.counts)}, attempts {final['webhooks']['attempts']}, "
          f"attempts while down {during_outage['attempts']}, all delivered {recovered_s:.1f} s after the "
          f"receiver came up, total {time.monotonic() - started:.1f} s")


# -- (a) the runner is killed with SIGKILL while webhooks are pending, then started again ---------------


def presubscribe(server: MosquittoServer, client_id: str) -> None:
    """Create the runner's persistent session (QoS 1 subscription) before it first starts, so
    nothing published before its first connection is lost: what a deployment does once."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", server.port, clean_start=False, properties=props)
    client.loop_start()
    try:
        client.subscribe("citywatch/#", qos=1)
        assert subscribed.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()


def publish_paced(server: MosquittoServer, messages: list[tuple[str, bytes]], per_s: float) -> None:
    """QoS 1 at about `per_s` messages per second (pacing, so a kill lands mid-stream)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-paced")
    client.connect("127.0.0.1", server.port)
    client.loop_start()
    try:
        chunk = max(1, int(per_s / 50))
        for i in range(0, len(messages), chunk):
            infos = [client.publish(topic, payload, qos=1) for topic, payload in messages[i:i + chunk]]
            for info in infos:
                info.wait_for_publish(30)
                assert info.is_published()
            time.sleep(chunk / per_s)
    finally:
        client.disconnect()
        client.loop_stop()


class RunnerProcess:
    """`python -m citywatch --data-dir D run` in a subprocess, configured by CITYWATCH_* only
    (cwd is the test's directory, so no config.yaml is picked up)."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.port = int(env["CITYWATCH_API__PORT"])
        base = {k: v for k, v in os.environ.items() if not k.startswith("CITYWATCH_")}
        self.env = {**base, **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp_path / "runner.log"

    def start(self) -> RunnerProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "citywatch", "--data-dir", str(self.tmp_path / "data"), "run"],
                cwd=self.tmp_path, env=self.env, stdout=log, stderr=log)
        wait_until(lambda: self._health() or self.proc.poll() is not None, 30, 0.05)
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        return self

    def _health(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stats(self) -> dict[str, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/stats",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_kill_9_mid_delivery_then_restart_delivers_every_transition(tmp_path: Path,
                                                                    mosquitto: MosquittoServer) -> None:
    devices = gas_devices(60)
    n_cycles = 6  # 60 x 6 x 3 = 1,080 gas transitions
    register(tmp_path / "data", devices)
    presubscribe(mosquitto, "cw-kill")
    receiver = FlakyReceiver(fail_rate=0.1, delay_s=0.01, seed=9, secret=SECRET).start()
    env = {"CITYWATCH_MQTT__URL": mosquitto.url, "CITYWATCH_MQTT__CLIENT_ID": "cw-kill",
           "CITYWATCH_INGEST__BATCH_SIZE": "50",
           "CITYWATCH_WEBHOOKS__URL": receiver.url, "CITYWATCH_WEBHOOKS__SECRET": SECRET,
           "CITYWATCH_WEBHOOKS__TIMEOUT_S": "0.5", "CITYWATCH_WEBHOOKS__BACKOFF_INITIAL_S": "0.2",
           "CITYWATCH_WEBHOOKS__BACKOFF_MAX_S": "2.0", "CITYWATCH_WEBHOOKS__CONCURRENCY": "2",
           "CITYWATCH_ALERTS__FLAP_WINDOW_MIN": str(FLAP_WINDOW_MIN),
           "CITYWATCH_API__PORT": str(free_port()), "CITYWATCH_API__TOKEN": TOKEN,
           "CITYWATCH_LOG_LEVEL": "WARNING"}
    base = time.time() - 7200
    half = cycles(devices, 0, n_cycles // 2, base)
    rest = cycles(devices, n_cycles // 2, n_cycles, base)
    proc = RunnerProcess(tmp_path, env)
    started = time.monotonic()
    try:
        proc.start()
        publish_all(mosquitto, half)
        wait_until(lambda: len(receiver.unique_ids()) >= 150, 30)
        publisher = threading.Thread(target=publish_paced, args=(mosquitto, rest, 1000))  # in flight at the kill
        publisher.start()
        before = proc.stats()
        wait_until(lambda: proc.stats()["counters"]["received"] > len(half) + 100, 30, 0.01)
        proc.kill()
        killed_at = time.monotonic()
        publisher.join(60)
        seen_at_kill = len(receiver.unique_ids())
        assert before["webhooks"]["pending"] > 0 and seen_at_kill < stored_transitions(tmp_path / "data")
        proc.start()  # the same data dir, the same MQTT session

        last = {d.id: n_cycles * len(CYCLE) for d in devices}

        def done() -> bool:
            return (committed_seqs(tmp_path / "data") == last and proc.stats()["webhooks"]["pending"] == 0
                    and len(receiver.unique_ids()) == stored_transitions(tmp_path / "data"))

        try:
            wait_until(done, 60, 0.2)
        except AssertionError:
            raise AssertionError(f"not all delivered after the restart: {proc.stats()}, unique arrivals "
                                 f"{len(receiver.unique_ids())}/{stored_transitions(tmp_path / 'data')}, "
                                 f"receiver {dict(receiver.counts)}, "
                                 f"log: {proc.log.read_text()[-2000:]}") from None
        after = proc.stats()
        assert proc.terminate() == 0
        recovered_s = time.monotonic() - killed_at
    finally:
        proc.cleanup()
        receiver.stop()
    arrivals = receiver.snapshot()
    counts = check_deliveries(arrivals, tmp_path / "data", len(devices) * n_cycles)
    # Messages committed before the kill but not yet acknowledged come back and are dropped as
    # duplicates by seq; every device ends at its last seq, nothing else was dead-lettered.
    assert committed_seqs(tmp_path / "data") == last
    assert {reason for (reason,) in _read(tmp_path / "data", "SELECT reason FROM dead_letters")} <= {"duplicate"}
    c = after["counters"]
    print(f"\n[kill -9] {counts}, unique at kill {seen_at_kill}, after restart: processed "
          f"{c.get('processed')}, duplicates dropped {c.get('dead_letter.duplicate', 0)}, all delivered "
          f"{recovered_s:.1f} s after the kill, total {time.monotonic() - started:.1f} s")


# -- (b) a slow / blocked InfluxDB slows ingestion; nothing is dropped -------------------------------------


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxStack]:
    stack = InfluxStack(tmp_path / "influx", token=TOKEN).start()
    yield stack
    stack.stop()


def test_slow_influx_slows_ingestion_without_loss(tmp_path: Path, mosquitto: MosquittoServer,
                                                  influx: InfluxStack) -> None:
    devices = gas_devices(50)
    n = 20_000  # ~40,000 lines (kind + device_status per reading): 5x what memory + the 1 MB disk buffer hold
    queue_size = 200
    settings = make_settings(
        tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-slow", "queue_size": queue_size},
        ingest={"batch_size": 100},
        influx={"url": influx.url, "token": TOKEN, "batch_size": 200, "flush_interval_ms": 50,
                "timeout_ms": 2000, "buffer_max_mb": 1})
    register(settings.data_dir, devices)
    base = time.time() - 7200
    messages = [(f"citywatch/gas/{d.id}/status", b"online") for d in devices]
    for i in range(n):
        d = devices[i % len(devices)]
        body = {"ts": round(base + i * 0.01, 3), "seq": i + 1, "battery": 80.0 + i % 10, "rssi": -60.0 - i % 30,
                "lel_pct": 1.0 + i % 5}
        messages.append((f"citywatch/gas/{d.id}/telemetry", json.dumps(body).encode()))
    # The sink fails: its memory, then its 1 MB disk buffer fill; then the runner must wait, the
    # hand-off (200 < receive_maximum 1000) fills and blocks the collector, and the broker keeps the rest.
    influx.bridge.stop()
    run = RunnerThread(settings).start().subscribed()
    try:
        runner = run.runner
        assert runner is not None and runner.influx is not None and runner.collector is not None
        handoff = runner.collector.handoff
        peak = {"handoff": 0}
        sampling = threading.Event()

        def sample() -> None:  # the hand-off length, as often as we can look
            while not sampling.is_set():
                peak["handoff"] = max(peak["handoff"], len(handoff))
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            publisher = threading.Thread(target=publish_all, args=(mosquitto, messages))
            publisher.start()
            wait_until(lambda: runner.influx.stats()["disk_full"], 30)
            publisher.join(120)
            assert not publisher.is_alive()
            # All published and acknowledged by the broker; the runner holds back: the broker keeps the backlog.
            wait_until(lambda: handoff.blocked_puts > 0 and len(handoff) == queue_size, 20)
            blocked = run.call(lambda: dict(runner.pipeline.counters))
            sink_blocked = runner.influx.stats()
            backlog = len(messages) - runner.collector.received
            assert backlog > n // 2, backlog
            assert blocked["processed"] < len(messages) // 2
            assert sink_blocked["buffered_bytes"] <= 1024 * 1024 and sink_blocked["in_memory"] <= 4 * 200 + 100 * 2
            influx.bridge.delay_s = 0.02  # the sink comes back, slow: everything flows at its pace, once
            influx.bridge.start()
            wait_until(lambda: run.call(lambda: runner.pipeline.counters["processed"]) == len(messages), 120, 0.1)
            assert runner.influx.drain(60)
            final = runner.influx.stats()
            counters = run.call(lambda: dict(runner.pipeline.counters))
        finally:
            sampling.set()
            sampler.join()
    finally:
        run.stop()
    assert peak["handoff"] <= queue_size
    assert final["lost_on_close"] == 0 and final["rejected_lines"] == 0
    assert counters.get("dead_letters", 0) == 0 and counters["processed"] == len(messages)
    assert influx.count("gas", "lel_pct") == n
    assert influx.count("device_status", "battery") == n and influx.count("device_status", "rssi") == n
    assert influx.count("device_status", "online") == len(devices)
    assert final["written_lines"] == 2 * n + len(devices) == influx.bridge.accepted_lines  # none doubled
    print(f"\n[slow influx] backlog at broker while blocked {backlog}, processed while blocked "
          f"{blocked['processed']}, peak hand-off {peak['handoff']}/{queue_size}, blocked puts "
          f"{handoff.blocked_puts} ({handoff.blocked_s:.1f} s), sink when blocked: {sink_blocked['buffered_bytes']} B "
          f"on disk, {sink_blocked['in_memory']} lines in memory; blocked adds {final['blocked_adds']} "
          f"({final['blocked_s']:.1f} s), written {final['written_lines']} lines")


# -- (c) device_status carries battery and rssi ---------------------------------------------------------


def test_device_status_point_per_reading_with_battery_or_rssi() -> None:
    d = Device(id="g-1", kind="gas", district="Nan hu", grid="G1")
    z = Device(id="n-1", kind="noise", district="X", zone_class="2")
    out = Output()
    out.accepted += [
        (Reading("g-1", "gas", 1700000000.5, 0, {"lel_pct": 3.0}, seq=1, battery=91, rssi=-70.5), d),
        (Reading("g-1", "gas", 1700000001.0, 0, {"lel_pct": 3.0}, battery=90.0), d),
        (Reading("n-1", "noise", 1700000002.0, 0, {"laeq_db": 50.0}, rssi=-80.0), z),
        (Reading("g-1", "gas", 1700000003.0, 0, {"lel_pct": 3.0}, battery=float("nan"), rssi=-71.0), d),
        (Reading("g-1", "gas", 1700000004.0, 0, {"lel_pct": 3.0}), d),
    ]
    out.statuses.append((d, "online", 1700000005.0))
    assert lines_for(out) == [
        r"gas,device=g-1,district=Nan\ hu,grid=G1,kind=gas lel_pct=3.0,battery=91.0,rssi=-70.5,seq=1i "
        "1700000000500000000",
        r"device_status,device=g-1,district=Nan\ hu,grid=G1,kind=gas battery=91.0,rssi=-70.5 1700000000500000000",
        r"gas,device=g-1,district=Nan\ hu,grid=G1,kind=gas lel_pct=3.0,battery=90.0 1700000001000000000",
        r"device_status,device=g-1,district=Nan\ hu,grid=G1,kind=gas battery=90.0 1700000001000000000",
        "noise,device=n-1,district=X,kind=noise,zone=2 laeq_db=50.0,rssi=-80.0 1700000002000000000",
        "device_status,device=n-1,district=X,kind=noise rssi=-80.0 1700000002000000000",  # no zone tag here
        r"gas,device=g-1,district=Nan\ hu,grid=G1,kind=gas lel_pct=3.0,rssi=-71.0 1700000003000000000",
        r"device_status,device=g-1,district=Nan\ hu,grid=G1,kind=gas rssi=-71.0 1700000003000000000",
        r"gas,device=g-1,district=Nan\ hu,grid=G1,kind=gas lel_pct=3.0 1700000004000000000",
        r"device_status,device=g-1,district=Nan\ hu,grid=G1,kind=gas online=true 1700000005000000000",
    ]
    first, _ = out.accepted[0]
    assert reading_line(first, d) == lines_for(out)[0] and health_line(first, d) == lines_for(out)[1]
    assert health_line(out.accepted[4][0], d) is None


def test_device_status_reads_back_from_influxdb(influx: InfluxStack, tmp_path: Path) -> None:

    d = Device(id="w-1", kind="water", district="Xiuzhou", grid="G3")
    out = Output()
    out.accepted += [(Reading("w-1", "water", 1795000000.0 + i, 0, {"depth_cm": 1.0}, seq=i, battery=50.0 - i,
                              rssi=-90.0 + i), d) for i in range(10)]
    out.statuses.append((d, "offline", 1795000000.0 + 3))  # same series and time as a reading: fields merge
    cfg = InfluxSettings(url=influx.url, token=SecretStr(TOKEN), flush_interval_ms=50, timeout_ms=2000)
    with InfluxSink(cfg, tmp_path / "data") as sink:
        sink.add(lines_for(out))
        assert sink.drain(10)
    rows = influx.query('SELECT battery, rssi, online, device, district, grid, kind FROM "device_status"')
    assert [(r["battery"], r["rssi"], r["online"]) for r in rows][2:5] == [
        (48.0, -88.0, None), (47.0, -87.0, False), (46.0, -86.0, None)]
    assert len(rows) == 10  # the offline announcement joined the reading's point at the same time
    assert {(r["device"], r["district"], r["grid"], r["kind"]) for r in rows} == {("w-1", "Xiuzhou", "G3", "water")}
    keys = {(r["fieldKey"], r["fieldType"]) for r in influx.query('SHOW FIELD KEYS FROM "device_status"')}
    assert keys == {("battery", "float"), ("rssi", "float"), ("online", "boolean")}
