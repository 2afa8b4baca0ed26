"""The garbage-flood scenario of issue 17, shared by tests/test_flood.py and benchmarks/flood.py.

A real `citywatch run` (subprocess) with its data dir on a small tmpfs, a real Mosquitto, a real
HTTP webhook receiver. For `seconds`: one client publishes invalid payloads as fast as the broker
takes them (malformed JSON on registered and real city topics, spoofed unknown device ids, topics
of no known kind, wrong types; each about `garbage_bytes`), a second client publishes normal city
traffic at `city_rate`, and `alarms` registered gas detectors each raise one alarm at an evenly
spaced moment. A monitor samples the data dir's size and the runner's /stats every `sample_s`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from citywatch.devices.registry import Registry, registry_path
from citywatch.ingest.simulator import Simulator, make_devices
from citywatch.model import Device
from tests.servers.mosquitto import MosquittoServer, free_port

ROOT = Path(__file__).resolve().parent.parent
API_TOKEN = "flood-test-token"
SECRET = "whsec_" + "Zmxvb2QtdGVzdC1zZWNyZXQta2V5LTAwMDAx"
NOISY = [Device(id=f"noisy-{i:02d}", kind="gas") for i in range(20)]  # registered, send only garbage


@dataclass
class FloodConfig:
    seconds: float = 30.0
    alarms: int = 40
    city_devices: int = 300
    city_rate: float = 200.0  # normal messages per second
    garbage_bytes: int = 1200
    garbage_qos: int = 1  # 1: as fast as the broker acknowledges (in-flight window 100); 0: as fast as the socket takes
    sample_s: float = 0.5
    drain_timeout_s: float = 30.0  # after the flood, how long the last alarms may take
    retention_interval_s: float = 5.0
    env: dict[str, str] = field(default_factory=dict)  # more CITYWATCH_* settings for the runner


@dataclass
class FloodResult:
    config: FloodConfig
    garbage_sent: int = 0
    garbage_s: float = 0.0
    city_sent: int = 0
    alarms_sent: int = 0
    latencies: dict[str, float] = field(default_factory=dict)  # device -> publish-to-webhook s
    samples: list[tuple[float, int, str | None]] = field(default_factory=list)  # (t, data dir bytes, storage_error)
    stats: dict[str, Any] = field(default_factory=dict)  # the runner's /stats at the end
    tmpfs_bytes: int = 0
    runner_rc: int | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds used during the flood, per process

    @property
    def garbage_rate(self) -> float:
        return self.garbage_sent / self.garbage_s if self.garbage_s else 0.0

    @property
    def max_data_dir(self) -> int:
        return max((b for _, b, _ in self.samples), default=0)

    @property
    def storage_errors(self) -> list[str]:
        return [e for _, _, e in self.samples if e]

    def percentile(self, q: float) -> float:
        values = sorted(self.latencies.values())
        if not values:
            return float("nan")
        return values[min(len(values) - 1, max(0, round(q * len(values) + 0.5) - 1))]

    def summary(self) -> str:
        c = self.config
        dead = self.stats.get("storage", {}).get("disk", {})
        counters = self.stats.get("counters", {})
        lat = sorted(self.latencies.values())
        return "\n".join([
            f"flood {c.seconds:.0f} s: garbage {self.garbage_sent} msgs ({c.garbage_bytes} B, QoS {c.garbage_qos}) at "
            f"{self.garbage_rate:,.0f} msg/s; city traffic {self.city_sent} msgs at {c.city_rate:.0f} msg/s",
            f"data dir max {self.max_data_dir / 1e6:.1f} MB (tmpfs {self.tmpfs_bytes / 1e6:.0f} MB); at the end: "
            f"state.db {dead.get('state_db', 0) / 1e6:.1f} MB, wal {dead.get('state_wal', 0) / 1e6:.1f} MB; "
            f"storage errors seen: {len(self.storage_errors)}",
            f"dead letters counted {counters.get('dead_letters', 0)}; alarms delivered {len(self.latencies)}/"
            f"{self.alarms_sent}; publish-to-webhook p50 {self.percentile(0.5) * 1000:.0f} ms, "
            f"p99 {self.percentile(0.99) * 1000:.0f} ms, max {(lat[-1] if lat else float('nan')) * 1000:.0f} ms",
            "CPU during the flood: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.cpu_s.items())
            + f" (of {c.seconds:.0f} s; machine load average {os.getloadavg()[0]:.1f})",
        ])


# -- the receiver -----------------------------------------------------------------------------------------

class TimedReceiver:
    """Webhook receiver recording each request's arrival time (wall clock) and JSON body."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                at = time.time()
                with receiver.lock:
                    receiver.arrivals.append((at, self.headers.get("webhook-id", ""), json.loads(body)))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def opened(self, prefix: str) -> dict[str, float]:
        """Device id -> first arrival of its gas_level `opened` webhook, for devices named prefix*."""
        out: dict[str, float] = {}
        with self.lock:
            for at, _, body in self.arrivals:
                alert = body.get("alert", {})
                device = body.get("device", {}).get("id", "")
                if (device.startswith(prefix) and alert.get("rule") == "gas_level"
                        and body.get("transition") == "opened" and device not in out):
                    out[device] = at
        return out

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- publishers (child processes) -------------------------------------------------------------------------

def garbage_messages(n: int, size: int, city: list[str]) -> list[tuple[str, bytes]]:
    """`n` invalid messages of about `size` bytes, cycling through the kinds of garbage."""
    pad = "x" * max(0, size - 80)
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        k = i % 5
        noisy = f"citywatch/gas/{NOISY[i % len(NOISY)].id}/telemetry"
        if k == 0:  # malformed JSON from a registered device
            out.append((noisy, ('{"ts": 17000, "lel_pct": ' + pad).encode()))
        elif k == 1:  # a spoofed, never registered device id: a new one each time
            body = {"ts": time.time(), "lel_pct": 1, "p": pad}
            out.append((f"citywatch/gas/ghost-{i}/telemetry", json.dumps(body).encode()))
        elif k == 2:  # a topic of no known kind
            out.append((f"citywatch/reactor/core-{i % 100}/telemetry", json.dumps({"ts": 1, "p": pad}).encode()))
        elif k == 3:  # wrong types from a registered device
            out.append((noisy, json.dumps({"ts": "soon", "lel_pct": "high", "p": pad}).encode()))
        else:  # garbage on a real city device's topic (spoofing it)
            out.append((f"citywatch/{city[i % len(city)]}/telemetry", (b"\x00\xff" * (size // 2))))
    return out


def _garbage_process(port: int, seconds: float, size: int, qos: int, city: list[str], ready: Any, go: Any,
                     result: Any) -> None:
    batch = garbage_messages(20_000, size, city)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flooder", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(200)  # publish() refuses beyond it: we wait for acks instead of buffering
    client.connect("127.0.0.1", port)
    client.loop_start()
    ready.set()
    go.wait()
    sent, t0 = 0, time.monotonic()
    last: deque[mqtt.MQTTMessageInfo] = deque(maxlen=400)
    while time.monotonic() - t0 < seconds:
        topic, payload = batch[sent % len(batch)]
        info = client.publish(topic, payload, qos=qos)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            time.sleep(0.0005)
            continue
        last.append(info)
        sent += 1
    elapsed = time.monotonic() - t0
    for info in last:  # QoS 1: wait for the last acknowledgements (earlier ones made room for these)
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()
    result.put((sent, elapsed))


def _city_process(port: int, topics_and_payloads: list[tuple[str, bytes]], rate: float, go: Any, result: Any) -> None:
    from citywatch.ingest.publisher import publish_sync

    go.wait()
    result.put(publish_sync(f"mqtt://127.0.0.1:{port}", topics_and_payloads, qos=1, rate=rate,
                            client_id="city-traffic"))


# -- the runner -------------------------------------------------------------------------------------------

def start_runner(data_dir: Path, work: Path, broker: MosquittoServer, receiver: TimedReceiver, api_port: int,
                 cfg: FloodConfig) -> subprocess.Popen[bytes]:
    config = work / "config.yaml"
    config.write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CITYWATCH_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(CITYWATCH_CONFIG=str(config), CITYWATCH_DATA_DIR=str(data_dir), CITYWATCH_MQTT__URL=broker.url,
               CITYWATCH_MQTT__CLIENT_ID="cw-flood", CITYWATCH_WEBHOOKS__URL=receiver.url,
               CITYWATCH_WEBHOOKS__SECRET=SECRET, CITYWATCH_API__PORT=str(api_port), CITYWATCH_API__TOKEN=API_TOKEN,
               CITYWATCH_LOG_LEVEL="WARNING", CITYWATCH_RETENTION__INTERVAL_S=str(cfg.retention_interval_s))
    env.update(cfg.env)
    log = open(work / "runner.log", "ab")  # noqa: SIM115 (the child keeps it)
    return subprocess.Popen([sys.executable, "-m", "citywatch", "run"], env=env, stdout=log, stderr=log)


def get_json(port: int, path: str, timeout: float = 2.0) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {API_TOKEN}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the runner exited with {proc.returncode}")
        try:
            if get_json(port, "/stats")["mqtt"]["connected"]:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the runner did not connect")


def cpu_seconds(pid: int, children: bool = False) -> float:
    import psutil

    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)] if children else [proc]
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def used_bytes(mount: Path) -> int:
    fs = os.statvfs(mount)
    return (fs.f_blocks - fs.f_bfree) * fs.f_frsize


def publish_alarm(client: mqtt.Client, device: Device, seq: int, lel: float) -> float:
    at = time.time()
    body = json.dumps({"ts": round(at, 3), "seq": seq, "lel_pct": lel}).encode()
    client.publish(f"citywatch/gas/{device.id}/telemetry", body, qos=1).wait_for_publish(30)
    return at


def run_flood(mount: Path, work: Path, cfg: FloodConfig, log: Any = None) -> FloodResult:
    """The whole scenario; `mount` is the (small tmpfs) directory holding the data dir."""
    result = FloodResult(cfg, tmpfs_bytes=os.statvfs(mount).f_blocks * os.statvfs(mount).f_frsize)
    data_dir = mount / "data"
    city = make_devices(cfg.city_devices, seed=17, prefix="city")
    alarms = [Device(id=f"alarm-{i:03d}", kind="gas", district="Nanhu", address=f"{i} Flood Rd") for i in
              range(cfg.alarms)]
    registry = Registry(registry_path(data_dir))
    registry.add_many([(d, None) for d in [*city, *alarms, *NOISY]])
    registry.close()
    broker = MosquittoServer(work / "mosquitto")
    broker.start()
    receiver = TimedReceiver()
    api_port = free_port()
    proc = start_runner(data_dir, work, broker, receiver, api_port, cfg)
    ctx = mp.get_context("spawn")
    procs: list[Any] = []
    try:
        wait_ready(proc, api_port)
        alarm_client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="alarms")
        alarm_client.connect("127.0.0.1", broker.port)
        alarm_client.loop_start()
        for d in alarms:  # a normal reading first, two minutes earlier in event time
            body = json.dumps({"ts": round(time.time() - 120, 3), "seq": 1, "lel_pct": 1.0}).encode()
            alarm_client.publish(f"citywatch/gas/{d.id}/telemetry", body, qos=1).wait_for_publish(30)
        n_city = int(cfg.city_rate * cfg.seconds)
        history_s = 60.0 * (n_city // cfg.city_devices + 2)  # one reading a minute per device, in the past
        sim = Simulator(city, seed=17, start=time.time() - history_s)
        city_messages = [(t, p) for t, p, _ in sim.messages(history_s)][:n_city]
        go, ready = ctx.Event(), ctx.Event()
        garbage_out, city_out = ctx.Queue(), ctx.Queue()
        city_topics = sorted({t.rsplit("/", 1)[0].split("/", 1)[1] for t, _ in city_messages[:2000]})
        procs = [ctx.Process(target=_garbage_process, args=(broker.port, cfg.seconds, cfg.garbage_bytes,
                                                            cfg.garbage_qos, city_topics, ready, go, garbage_out)),
                 ctx.Process(target=_city_process, args=(broker.port, city_messages, cfg.city_rate, go, city_out))]
        for p in procs:
            p.start()
        ready.wait(60)
        stop_monitor = threading.Event()
        t_start = time.time()

        def monitor() -> None:
            while not stop_monitor.is_set():
                try:
                    error = get_json(api_port, "/stats", timeout=5)["storage_error"]
                except OSError as exc:
                    error = None if proc.poll() is None else f"runner exited: {exc}"
                result.samples.append((time.time() - t_start, used_bytes(mount), error))
                if log:
                    t, b, e = result.samples[-1]
                    log(f"  t={t:5.1f} s  data dir {b / 1e6:6.1f} MB  storage_error={e}")
                stop_monitor.wait(cfg.sample_s)

        watcher = threading.Thread(target=monitor, daemon=True)
        assert broker.proc is not None
        runner_cpu0, broker_cpu0 = cpu_seconds(proc.pid, children=True), cpu_seconds(broker.proc.pid)
        go.set()
        watcher.start()
        sent_at: dict[str, float] = {}
        for i, d in enumerate(alarms):
            due = t_start + (i + 0.5) * cfg.seconds / len(alarms)
            time.sleep(max(0.0, due - time.time()))
            sent_at[d.id] = publish_alarm(alarm_client, d, 2, 30.0)
        result.alarms_sent = len(sent_at)
        result.garbage_sent, result.garbage_s = garbage_out.get(timeout=cfg.seconds + 120)
        result.city_sent = city_out.get(timeout=cfg.seconds + 120)
        deadline = time.monotonic() + cfg.drain_timeout_s
        while len(receiver.opened("alarm-")) < len(sent_at) and time.monotonic() < deadline:
            time.sleep(0.1)
        while time.monotonic() < deadline:  # every garbage message counted (the last ones may be in flight)
            if get_json(api_port, "/stats", timeout=10)["counters"].get("dead_letters", 0) >= result.garbage_sent:
                break
            time.sleep(0.2)
        stop_monitor.set()
        watcher.join(10)
        opened = receiver.opened("alarm-")
        result.latencies = {d: opened[d] - at for d, at in sent_at.items() if d in opened}
        alarm_client.loop_stop()
        alarm_client.disconnect()
        result.stats = get_json(api_port, "/stats", timeout=10)
        result.cpu_s = {"runner (with its collector)": cpu_seconds(proc.pid, children=True) - runner_cpu0,
                        "mosquitto": cpu_seconds(broker.proc.pid) - broker_cpu0}
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
        proc.terminate()
        try:
            result.runner_rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            result.runner_rc = proc.wait()
        receiver.stop()
        broker.stop()
    return result
