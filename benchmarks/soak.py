"""Soak: `citywatch run` under steady load with faults injected on a schedule; counts what was lost.

Usage: python benchmarks/soak.py --minutes 10 --rate 5000 [--devices 20000] [--fault-every 60]

Everything is real and local: Mosquitto (persistence on), the runner as a subprocess (so it can be
SIGKILLed), a webhook receiver that goes down and comes back on the same port, and a publisher
process with a persistent QoS 1 session. Faults cycle: broker restart, receiver down 20 s,
runner SIGKILL + restart. At the end it prints:
sent, processed (unique: readings committed, counted by the runner in each batch commit), dead-lettered,
lost (= sent - processed - dead letters other than redeliveries; must be 0), alert transitions,
webhook deliveries, unique webhook ids, duplicates beyond redelivery (the same transition under
two different ids; must be 0) and the runner's RSS at start and end.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from citywatch.devices.registry import Registry, registry_path  # noqa: E402
from citywatch.ingest.simulator import Simulator, make_devices  # noqa: E402
from tests.servers.mosquitto import MosquittoServer, free_port  # noqa: E402

SECRET = "soak-webhook-secret"


class Receiver:
    """A webhook receiver that can be taken down and brought back on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ids: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def up(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.ids[self.headers["webhook-id"]] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def publisher(port: int, n_devices: int, rate: float, seconds: float, sent: Any, stop: Any) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    devices = make_devices(n_devices, seed=11)
    speed = rate * 60.0 / n_devices  # simulated seconds per real second, so that all devices report at `rate`
    sim_seconds = seconds * speed
    # simulated time ends near now: timestamps are never in the future, whatever the speed
    sim = Simulator(devices, seed=11, start=time.time() - sim_seconds - 120, incident_rate=0.02,
                    horizon_s=sim_seconds * 0.8)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-publisher", clean_session=False)
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(1, 2)
    acked = 0
    lock = threading.Lock()

    def on_publish(*_: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1
            sent.value = acked

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    t0 = time.monotonic()
    for i, (topic, payload, _ts) in enumerate(sim.messages(sim_seconds)):
        if stop.is_set() or time.monotonic() - t0 > seconds:
            break
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        client.publish(topic, payload, qos=1)
    deadline = time.monotonic() + 120
    while client._out_messages and time.monotonic() < deadline:
        time.sleep(0.1)
    client.disconnect()
    client.loop_stop()


class Runner:
    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir, self.env = data_dir, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(data_dir.parent / "runner.log", "ab")  # noqa: SIM115

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "citywatch", "run"], env=self.env,
                                     stdout=self.log, stderr=self.log)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20 if self.proc else 0.0


def store_figures(data_dir: Path) -> dict[str, Any]:
    conn = sqlite3.connect(data_dir / "state.db", timeout=30)
    try:
        # readings committed, counted in the same transaction as the batch (device state may be
        # checkpointed later: ingest.state_checkpoint_s)
        row = conn.execute("SELECT value FROM counters WHERE name = 'readings'").fetchone()
        processed = row[0] if row else 0
        dead = dict(conn.execute("SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason").fetchall())
        transitions = conn.execute("SELECT id, alert_id, transition, at FROM transitions").fetchall()
        pending = conn.execute("SELECT COUNT(*) FROM webhook_outbox WHERE status = 'pending'").fetchone()[0]
    finally:
        conn.close()
    return {"processed": processed, "dead": dead, "transitions": transitions, "pending": pending}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--devices", type=int, default=20000)
    parser.add_argument("--fault-every", type=float, default=60, help="seconds between faults")
    args = parser.parse_args()
    seconds = args.minutes * 60
    tmp = Path(tempfile.mkdtemp(prefix="citywatch-soak-"))
    data_dir = tmp / "data"
    broker = MosquittoServer(tmp / "broker")
    broker.start()
    receiver = Receiver(free_port())
    receiver.up()
    registry = Registry(registry_path(data_dir))
    registry.add_many([(d, None) for d in make_devices(args.devices, seed=11)])
    registry.close()
    env = dict(os.environ, CITYWATCH_DATA_DIR=str(data_dir), CITYWATCH_MQTT__URL=broker.url,
               CITYWATCH_MQTT__CLIENT_ID="cw-soak", CITYWATCH_WEBHOOKS__URL=f"http://127.0.0.1:{receiver.port}/h",
               CITYWATCH_WEBHOOKS__SECRET=SECRET, CITYWATCH_WEBHOOKS__BACKOFF_MAX_S="2",
               CITYWATCH_API__PORT=str(free_port()), CITYWATCH_LOG_LEVEL="WARNING")
    runner = Runner(data_dir, env)
    runner.start()
    time.sleep(3)  # let the runner subscribe (its persistent session then queues everything)
    rss_start = runner.rss_mb()
    ctx = mp.get_context("spawn")
    sent, stop = ctx.Value("l", 0), ctx.Event()
    pub = ctx.Process(target=publisher, args=(broker.port, args.devices, args.rate, seconds, sent, stop))
    pub.start()
    faults: Counter[str] = Counter()
    t0 = time.monotonic()
    cycle = 0
    while time.monotonic() - t0 < seconds and pub.is_alive():
        time.sleep(min(args.fault_every, max(0.0, seconds - (time.monotonic() - t0))))
        if time.monotonic() - t0 >= seconds:
            break
        kind = ("broker_restart", "receiver_down", "runner_kill")[cycle % 3]
        cycle += 1
        faults[kind] += 1
        if kind == "broker_restart":
            broker.restart()
        elif kind == "receiver_down":
            receiver.down()
            time.sleep(20)
            receiver.up()
        else:
            runner.kill()
            runner.start()
        print(f"[{time.monotonic() - t0:6.0f} s] fault: {kind}; sent so far {sent.value}", flush=True)
    pub.join(180)
    rss_end = runner.rss_mb()
    # let the runner finish the backlog and the outbox, then stop it cleanly
    last, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 10:
        figures = store_figures(data_dir)
        done = figures["processed"] + sum(v for k, v in figures["dead"].items() if k != "duplicate")
        if done != last or figures["pending"]:
            last, stable_since = done, time.monotonic()
        time.sleep(1)
    runner.stop()
    receiver.down()
    broker.stop()
    figures = store_figures(data_dir)
    dead = figures["dead"]
    redelivered = dead.get("duplicate", 0) + dead.get("out_of_order", 0)
    dead_other = sum(dead.values()) - redelivered
    transitions = figures["transitions"]
    ids = {t[0] for t in transitions}
    logical = Counter((t[1], t[2], round(t[3], 3)) for t in transitions)
    received = receiver.ids
    print()
    print(f"duration                 {args.minutes:g} min at {args.rate:g} msg/s, {args.devices} devices")
    print(f"faults                   {dict(faults)}")
    print(f"messages sent            {sent.value}")
    print(f"processed (unique)       {figures['processed']}")
    print(f"dead-lettered            {dead_other} (+{redelivered} redeliveries recognised by seq)")
    print(f"lost                     {sent.value - figures['processed'] - dead_other}")
    print(f"alert transitions        {len(transitions)}")
    print(f"webhook deliveries       {sum(received.values())}")
    print(f"unique webhook ids       {len(set(received))} (missing: {len(ids - set(received))})")
    print(f"duplicates beyond redelivery {sum(n - 1 for n in logical.values() if n > 1)}")
    print(f"runner RSS               start {rss_start:.0f} MiB, end {rss_end:.0f} MiB")
    print(f"work dir                 {tmp}")


if __name__ == "__main__":
    main()
