"""The Kafka runner's two edges, in messages per second: the bridge (MQTT -> Kafka) and the sink
(transitions -> SQLite store + webhook outbox -> webhooks).

    python -m benchmarks.faust_edges [--messages 100000] [--transitions 20000]

bridge: a real Mosquitto and a local tansu broker; `citywatch bridge` as a real process; the rate is
the bridge's `forwarded` counter (its heartbeat: produced to Kafka, acknowledged by it, then
acknowledged to MQTT) between the first forwarded message and the last. Two ways (`--bridge-mode`):
`drain` (default): the bridge subscribes once and stops, the messages are published (QoS 1) into its
persistent session at Mosquitto, then the bridge starts again and drains them: the bridge's own rate,
the publisher not running beside it. `live`: this process publishes while the bridge forwards (the
publisher, paho in Python on the same two cores, then bounds the rate).

sink: N distinct alert transitions (copies of real ones from the simulated city, each with its own
id) produced to the transitions topic up front; then `citywatch worker --role sink` with a webhook
URL (a real local HTTP receiver); the rate is its stored-transitions counter between first and last,
and the webhook delivery rate is the receiver's count over the same kind of window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from citywatch.config import load_settings  # noqa: E402
from citywatch.detectors.lifecycle import AlertEngine  # noqa: E402
from citywatch.devices.registry import Registry, registry_path  # noqa: E402
from citywatch.ingest.simulator import Simulator, make_devices  # noqa: E402
from citywatch.model import Output, Transition  # noqa: E402
from citywatch.streams.faust_app import encode_transition  # noqa: E402
from citywatch.streams.pipeline import Pipeline  # noqa: E402
from tests.helpers import DictDevices  # noqa: E402
from tests.mqtt_tools import publish_all  # noqa: E402
from tests.servers.mosquitto import MosquittoServer  # noqa: E402
from tests.servers.receiver import WebhookReceiver  # noqa: E402
from tests.servers.tansu import TansuServer  # noqa: E402

SECRET = "whsec_" + "YmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtYmVuY2g="


def heartbeat(data_dir: Path, name: str) -> dict[str, Any]:
    try:
        beat: dict[str, Any] = json.loads((data_dir / "heartbeats" / f"{name}.json").read_text())
        return beat
    except (OSError, ValueError):
        return {}


def rate(count: Any, total: int, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, float]:
    """Poll count() until it reaches total; the rate from the first counted item to the last."""
    first_at = first = None
    started = time.monotonic()
    while True:
        n = int(count())
        now = time.monotonic()
        if first_at is None and n > 0:
            first_at, first = now, n
        if n >= total:
            break
        if now - started > timeout or proc.poll() is not None:
            raise RuntimeError(f"{n}/{total} after {now - started:.0f} s")
        time.sleep(0.1)
    assert first_at is not None and first is not None
    seconds = max(time.monotonic() - first_at, 1e-9)
    return {"items": total - first, "seconds": round(seconds, 1), "per_s": round((total - first) / seconds)}


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "citywatch", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))  # noqa: SIM115


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (the bridge's MQTT collector process)."""
    import psutil

    total = 0.0
    try:
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            times = p.cpu_times()
            total += times.user + times.system
    except psutil.Error:
        pass
    return total


def bench_bridge(tmp: Path, tansu: TansuServer, n: int, timeout: float, mode: str = "drain") -> dict[str, Any]:
    mosquitto = MosquittoServer(tmp / "mosquitto")
    mosquitto.start()
    data_dir = tmp / "bridge-data"
    config = tmp / "bridge.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data_dir), "log_level": "WARNING",
                                      "mqtt": {"url": mosquitto.url, "client_id": "bench", "queue_size": 50_000},
                                      "metrics": {"enabled": False},
                                      "kafka": {"telemetry_topic": "edge-telemetry", "partitions": 4}}))
    env = {**os.environ, "CITYWATCH_CONFIG": str(config), "CITYWATCH_KAFKA__BOOTSTRAP": tansu.bootstrap}
    beat = data_dir / "heartbeats" / "bridge-bench-bridge.json"

    def subscribed_bridge() -> subprocess.Popen[bytes]:
        beat.unlink(missing_ok=True)
        proc = start(["bridge", "--client-id", "bench-bridge"], env, tmp / "bridge.log")
        deadline = time.monotonic() + 60
        while not heartbeat(data_dir, "bridge-bench-bridge").get("subscribed"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"bridge not subscribed: {(tmp / 'bridge.log').read_text()[-2000:]}")
            time.sleep(0.1)
        return proc

    proc = subscribed_bridge()
    try:
        devices = make_devices(max(n // 10, 1), seed=3, interval_s=60)
        sim = Simulator(devices, seed=3, start=time.time() - 3600, incidents=False)
        messages = []
        for topic, payload, _ in sim.messages(3600):
            messages.append((topic, payload))
            if len(messages) >= n:
                break
        published: dict[str, float] = {}

        def publish() -> None:
            t0 = time.perf_counter()
            for i in range(0, len(messages), 10_000):
                publish_all(mosquitto, messages[i:i + 10_000])
            published["seconds"] = time.perf_counter() - t0

        if mode == "drain":  # into the stopped bridge's session; then the bridge alone
            stop(proc)
            publish()
            proc = subscribed_bridge()
            publisher = None
        else:
            publisher = threading.Thread(target=publish, daemon=True)
            publisher.start()
        cpu0 = cpu_seconds(proc.pid)
        result = rate(lambda: heartbeat(data_dir, "bridge-bench-bridge").get("forwarded", 0), len(messages), proc,
                      timeout)
        result["bridge_cpu_us_per_msg"] = round(1e6 * (cpu_seconds(proc.pid) - cpu0) / len(messages), 1)
        if publisher is not None:
            publisher.join(60)
        result["mode"] = mode
        result["published_per_s"] = round(len(messages) / published.get("seconds", float("nan")))
        return result
    finally:
        stop(proc)
        mosquitto.stop()


def transitions_for(n: int, config: Path) -> list[bytes]:
    """n distinct transitions: real ones of a simulated city, copied with their own ids."""
    settings = load_settings(config)
    devices = make_devices(500, seed=9, interval_s=300)
    pipeline = Pipeline(settings, DictDevices({d.id: d for d in devices}), AlertEngine(settings.alerts),
                        started_at=time.time() - 86400)
    out = Output()
    sim = Simulator(devices, seed=9, start=time.time() - 86400, incidents=True, incident_rate=0.2)
    for topic, payload, at in sim.messages(6 * 3600):
        pipeline.process(topic, payload, at, out)
    real = [t for t in out.transitions if t.transition == "opened"] or out.transitions
    assert real, "the simulated city produced no transitions"
    values = []
    for i in range(n):
        t = real[i % len(real)]
        alert_id = f"{t.alert_id}-b{i}"
        copy = msgspec.structs.replace(t, id=f"{alert_id}.1", alert_id=alert_id,
                                       alert=msgspec.structs.replace(t.alert, id=alert_id))
        values.append(encode_transition(copy))
    return values


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 4, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, v, key=msgspec.json.decode(v, type=Transition).alert.device_id.encode())
                   for v in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def bench_sink(tmp: Path, tansu: TansuServer, n: int, timeout: float) -> dict[str, Any]:
    receiver = WebhookReceiver().start()
    data_dir = tmp / "sink-data"
    config = tmp / "sink.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(data_dir), "log_level": "WARNING", "api": {"enabled": False}, "metrics": {"enabled": False},
        "webhooks": {"url": receiver.url, "secret": SECRET},
        "kafka": {"transitions_topic": "edge-transitions", "deadletters_topic": "edge-dl",
                  "telemetry_topic": "edge-telemetry-s", "partitions": 4, "app_id": "edge"}}))
    Registry(registry_path(data_dir)).close()
    values = transitions_for(n, config)
    asyncio.run(produce(tansu.bootstrap, "edge-transitions", values))
    env = {**os.environ, "CITYWATCH_CONFIG": str(config), "CITYWATCH_KAFKA__BOOTSTRAP": tansu.bootstrap}
    proc = start(["worker", "--role", "sink", "--worker-id", "sink", "--loglevel", "warning"], env, tmp / "sink.log")
    try:
        counts: dict[str, Callable[[], int]] = {
                  "stored": lambda: int(heartbeat(data_dir, "worker-sink").get("transitions", 0)),
                  "webhooks": lambda: len(receiver.ids())}
        first: dict[str, tuple[float, int]] = {}
        done: dict[str, float] = {}
        started = time.monotonic()
        while len(done) < len(counts):
            now = time.monotonic()
            for name, count in counts.items():
                c = count()
                if c and name not in first:
                    first[name] = (now, c)
                if c >= n and name not in done:
                    done[name] = now
            if now - started > timeout or proc.poll() is not None:
                raise RuntimeError(f"sink: {[(k, c()) for k, c in counts.items()]} of {n} after {now - started:.0f} s")
            time.sleep(0.1)
        return {name: {"items": n - first[name][1], "seconds": round(done[name] - first[name][0], 1),
                       "per_s": round((n - first[name][1]) / max(done[name] - first[name][0], 1e-9))}
                for name in counts}
    finally:
        stop(proc)
        receiver.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--transitions", type=int, default=20_000)
    parser.add_argument("--only", choices=["bridge", "sink"], default=None)
    parser.add_argument("--bridge-mode", choices=["drain", "live"], default="drain")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cw-faust-edges-") as name:
        tmp = Path(name)
        tansu = TansuServer(tmp / "tansu").start()
        try:
            if args.only in (None, "bridge"):
                result = bench_bridge(tmp, tansu, args.messages, args.timeout, args.bridge_mode)
                print("bridge:", json.dumps(result), flush=True)
            if args.only in (None, "sink"):
                print("sink:", json.dumps(bench_sink(tmp, tansu, args.transitions, args.timeout)), flush=True)
        finally:
            tansu.stop()
        print(f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
