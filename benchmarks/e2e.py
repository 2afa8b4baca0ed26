"""(b) end to end through Mosquitto against the bare broker ceiling, and (c) publish-to-webhook latency.

Usage: python benchmarks/e2e.py [--messages 100000]

Each figure is measured in the same run as its reference:
- ceiling: paho publishes (another process) -> Mosquitto -> a paho subscriber that does nothing else;
- citywatch: the same publisher -> Mosquitto -> the embedded runner (validate, detect, commit, ack).
Latency: one life-safety alarm (a gas detector's first reading, at level-2) at a time at half the
measured QoS 1 rate, timed from publish to the arrival of its gas_level `opened` webhook at a local
HTTP receiver (p50, p99).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import results  # noqa: E402

# CPU µs per message in each process of the figures above (what limits each rate), filled as measured
CPU_US: dict[str, float] = {}


def _cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) of a process; 0.0 if unknown (psutil is a test dependency)."""
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except Exception:  # noqa: BLE001  # only a figure reported on the side
        return 0.0
from citywatch.config import load_settings  # noqa: E402
from citywatch.devices.registry import Registry, registry_path  # noqa: E402
from citywatch.ingest.simulator import Simulator, make_devices  # noqa: E402
from citywatch.streams.embedded import EmbeddedRunner  # noqa: E402
from tests.servers.mosquitto import MosquittoServer, free_port  # noqa: E402


def _publisher(port: int, messages: list[tuple[str, bytes]], qos: int, rate: float | None, started: Any) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{time.time_ns()}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started.set()
    interval = 1.0 / rate if rate else 0.0
    t0 = time.perf_counter()
    infos = []
    for i, (topic, payload) in enumerate(messages):
        if interval:
            delay = t0 + i * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        infos.append(client.publish(topic, payload, qos=qos))
        # bounded client memory, and fewer than 65,535 QoS 1 messages in flight (message ids wrap)
        while len(client._out_packet) > 5000 or len(client._out_messages) > 20000:
            time.sleep(0.001)
    for info in infos[-1000:]:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def publish_in_process(port: int, messages: list[tuple[str, bytes]], qos: int,
                       rate: float | None = None) -> mp.Process:
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    proc = ctx.Process(target=_publisher, args=(port, messages, qos, rate, started), daemon=True)
    proc.start()
    started.wait(30)
    return proc


def bare_ceiling(broker: MosquittoServer, messages: list[tuple[str, bytes]], qos: int) -> float:
    received = 0
    first = last = 0.0
    done = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        nonlocal received, first, last
        if received == 0:
            first = time.perf_counter()
        received += 1
        last = time.perf_counter()
        if received >= len(messages):
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{qos}", protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("citywatch/#", qos=qos)
    sub.loop_start()
    time.sleep(0.5)
    cpu0 = time.process_time()  # this process: only the subscriber's paho thread works meanwhile
    proc = publish_in_process(broker.port, messages, qos)
    done.wait(300)
    CPU_US[f"bare QoS {qos}: subscriber"] = (time.process_time() - cpu0) / max(1, received) * 1e6
    proc.join(60)
    sub.disconnect()
    sub.loop_stop()
    return received / (last - first) if last > first else 0.0


def runner_rate(broker: MosquittoServer, data_dir: Path, messages: list[tuple[str, bytes]], qos: int,
                devices: list[Any]) -> float:
    settings = load_settings(None, {"data_dir": data_dir, "api": {"enabled": False},
                                    "mqtt": {"url": broker.url, "qos": qos, "client_id": f"cw-bench-{qos}"}})
    registry = Registry(registry_path(data_dir))
    if not registry.all():
        for d in devices:
            registry.add(d)
    registry.close()
    result: dict[str, float] = {}

    async def main() -> None:
        stop = asyncio.Event()
        runner = EmbeddedRunner(settings)
        task = asyncio.create_task(runner.run(stop))
        await runner.ready.wait()
        proc = publish_in_process(broker.port, messages, qos)
        counters = runner.pipeline.counters
        child = getattr(runner.collector, "pid", None)  # the collector process, if it runs in one
        first = 0.0
        cpu0 = (0.0, 0.0)
        while counters["received"] < len(messages):
            if not first and counters["received"]:
                first = time.perf_counter()
                cpu0 = (time.process_time(), _cpu_s(child) if child else 0.0)
            await asyncio.sleep(0.005)
        result["rate"] = (counters["received"] - 1) / (time.perf_counter() - first)
        n = max(1, counters["received"] - 1)
        CPU_US[f"citywatch QoS {qos}: runner"] = (time.process_time() - cpu0[0]) / n * 1e6
        if child:
            CPU_US[f"citywatch QoS {qos}: collector process"] = (_cpu_s(child) - cpu0[1]) / n * 1e6
        stop.set()
        await task
        await asyncio.to_thread(proc.join, 60)

    asyncio.run(main())
    return result["rate"]


class Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if body["transition"] == "opened" and body["alert"]["rule"] == "gas_level":  # a safety alarm
                    outer.arrivals.setdefault(body["device"]["id"], time.time())
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def latency(broker: MosquittoServer, data_dir: Path, rate: float, samples: int, devices: list[Any],
            messages: list[tuple[str, bytes]]) -> tuple[float, float]:
    """Publish-to-webhook latency of alarms (50 per second) while normal telemetry from another
    process runs at `rate` msg/s: the operator's view of a busy city."""
    from citywatch.model import Device

    receiver = Receiver()
    alarm_devices = [Device(id=f"lat-{i:05d}", kind="gas") for i in range(samples)]
    registry = Registry(registry_path(data_dir))
    registry.add_many([(d, None) for d in [*devices, *alarm_devices]])
    registry.close()
    settings = load_settings(None, {"data_dir": data_dir, "api": {"enabled": False},
                                    "mqtt": {"url": broker.url, "client_id": "cw-bench-lat"},
                                    "webhooks": {"url": receiver.url, "secret": "bench-secret"}})
    sent: dict[str, float] = {}

    async def main() -> None:
        stop = asyncio.Event()
        runner = EmbeddedRunner(settings)
        task = asyncio.create_task(runner.run(stop))
        await runner.ready.wait()
        background = publish_in_process(broker.port, messages, 1, rate)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-lat-pub")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for d in alarm_devices:
            payload = json.dumps({"ts": time.time(), "lel_pct": 60}).encode()
            sent[d.id] = time.time()
            pub.publish(f"citywatch/gas/{d.id}/telemetry", payload, qos=1)
            await asyncio.sleep(1 / 50)
        deadline = time.time() + 30
        while len(receiver.arrivals) < samples and time.time() < deadline:
            await asyncio.sleep(0.01)
        pub.disconnect()
        pub.loop_stop()
        background.terminate()
        stop.set()
        await task

    asyncio.run(main())
    receiver.server.shutdown()
    lat = sorted((receiver.arrivals[k] - sent[k]) * 1000 for k in receiver.arrivals)
    return statistics.median(lat), lat[max(0, int(len(lat) * 0.99) - 1)]


def latency_in_fresh_process(rate: float, samples: int, n_messages: int) -> tuple[float, float]:
    """(c) in a process of its own: the runners of (b) leave their heap and threads behind, which
    is not what a runner serving alarms looks like."""
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        subprocess.run([sys.executable, __file__, "--latency-only", "--rate", str(rate), "--messages", str(n_messages),
                        "--latency-samples", str(samples), "--result", result.name], check=True)
        figures = json.loads(Path(result.name).read_text())
    return figures["p50_ms"], figures["p99_ms"]


def city(n_messages: int) -> tuple[list[Any], list[tuple[str, bytes]]]:
    devices = make_devices(10_000, seed=5)
    sim = Simulator(devices, seed=5, start=time.time() - 7200, incidents=False)
    return devices, [(t, p) for t, p, _ in sim.messages(7000)][:n_messages]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--latency-samples", type=int, default=2000)
    parser.add_argument("--result", help="also write the figures to this JSON file (run.py)")
    parser.add_argument("--latency-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    devices, messages = city(args.messages)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = MosquittoServer(Path(tmp) / "broker", port=free_port())
        broker.start()
        try:
            if args.latency_only:
                p50, p99 = latency(broker, Path(tmp) / "lat", args.rate, args.latency_samples, devices, messages)
                results.save(args.result, p50_ms=p50, p99_ms=p99)
                return
            for qos in (0, 1):
                ceiling = bare_ceiling(broker, messages, qos)
                ours = runner_rate(broker, Path(tmp) / f"data{qos}", messages, qos, devices)
                rows.append((f"(b) end to end QoS {qos}", ours, ceiling))
        finally:
            broker.stop()
    half = max(50.0, rows[1][1] / 2)
    p50, p99 = latency_in_fresh_process(half, args.latency_samples, args.messages)
    print(f"{'figure':<28}{'citywatch msg/s':>18}{'bare broker msg/s':>20}{'ratio':>8}")
    for name, ours, ceiling in rows:
        print(f"{name:<28}{ours:>18,.0f}{ceiling:>20,.0f}{ours / ceiling:>8.2f}")
    print("CPU per message (µs): " + ", ".join(f"{k} {v:.0f}" for k, v in CPU_US.items()))
    print(f"(c) publish->webhook latency of safety alarms (gas_level opened) amid {half:,.0f} msg/s "
          f"(half the QoS 1 rate): "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    results.save(args.result, qos0=rows[0][1], qos0_ceiling=rows[0][2], qos1=rows[1][1], qos1_ceiling=rows[1][2],
                 latency_rate=half, p50_ms=p50, p99_ms=p99)


if __name__ == "__main__":
    main()
