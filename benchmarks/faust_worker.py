"""Faust process workers against a real Kafka-protocol broker: messages per second, 1 then 2 workers.

    python -m benchmarks.faust_worker [--devices 100000] [--messages 200000] [--partitions 4]

A local tansu broker (the tests' Kafka-protocol server, memory storage), N registered devices, and M
telemetry messages produced to the telemetry topic up front (as the bridge would: key = device id,
headers topic and received_at). Then `citywatch worker --role process` as real processes (1, then 2
in a fresh consumer group) consume them; the rate is counted from the workers' heartbeats (readings
and dead letters processed, written every tick) between the first processed message and the last,
so the group's join is not counted. Transitions go to Kafka as in production (no sink runs).

Besides the rate, the CPU seconds the workers and the broker used over the same window, per message
(`worker_cpu_us_per_msg`, `broker_cpu_us_per_msg`): on a machine shared with other jobs the rate
depends on the load, the CPU cost per message much less. `--batch-size` sets kafka.batch_size,
`--checkpoint-s` ingest.state_checkpoint_s (note: the benchmark replays ~2 readings per device within
seconds, so a checkpoint of minutes leaves almost every record unwritten in the measured window; in a
city the saving is readings per device per checkpoint interval, see docs/capacity.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from citywatch.devices.registry import Registry, registry_path  # noqa: E402
from citywatch.ingest.simulator import Simulator, make_devices  # noqa: E402
from tests.servers.tansu import TansuServer  # noqa: E402


async def produce(bootstrap: str, topic: str, partitions: int, messages: list[tuple[str, str, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        now = repr(time.time()).encode()
        pending = []
        for device_id, mqtt_topic, payload in messages:
            pending.append(await producer.send(topic, payload, key=device_id.encode(),
                                               headers=[("topic", mqtt_topic.encode()), ("received_at", now)]))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def processed(data_dir: Path, workers: list[str]) -> int:
    total = 0
    for name in workers:
        try:
            beat = json.loads((data_dir / "heartbeats" / f"worker-{name}.json").read_text())
        except (OSError, ValueError):
            continue
        counters = beat.get("counters", {})
        total += int(counters.get("received", 0))  # every message the core took (readings, dead letters)
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def run_workers(n: int, base: dict[str, Any], tmp: Path, bootstrap: str, partitions: int, total: int,
                timeout_s: float, broker_pid: int) -> dict[str, float]:
    app_id = f"bench-{n}w"
    data_dir = Path(base["data_dir"])
    config = tmp / f"config-{n}.yaml"
    config.write_text(yaml.safe_dump(base))
    env = {**os.environ, "CITYWATCH_CONFIG": str(config), "CITYWATCH_KAFKA__BOOTSTRAP": bootstrap,
           "CITYWATCH_KAFKA__PARTITIONS": str(partitions), "CITYWATCH_KAFKA__APP_ID": app_id}
    names = [f"{app_id}-{i}" for i in range(n)]
    procs = [subprocess.Popen([sys.executable, "-m", "citywatch", "worker", "--role", "process", "--worker-id", name,
                               "--loglevel", "warning"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=open(tmp / f"{name}.log", "wb"))  # noqa: SIM115 (lives with the process)
             for name in names]
    first_at = first_count = None
    cpu: dict[str, float] = {}
    started = time.monotonic()
    try:
        while True:
            count = processed(data_dir, names)
            now = time.monotonic()
            if first_at is None and count > 0:
                first_at, first_count = now, count
                cpu = {"workers": cpu_seconds([p.pid for p in procs]), "broker": cpu_seconds([broker_pid])}
            if count >= total:
                cpu = {"workers": cpu_seconds([p.pid for p in procs]) - cpu["workers"],
                       "broker": cpu_seconds([broker_pid]) - cpu["broker"]}
                break
            if now - started > timeout_s or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{n} worker(s): {count}/{total} processed after {now - started:.0f} s; "
                                   f"see {tmp}")
            time.sleep(0.2)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    assert first_at is not None and first_count is not None
    elapsed = max(time.monotonic() - first_at, 1e-9)
    counted = max(total - first_count, 1)
    return {"workers": n, "messages": total - first_count, "seconds": round(elapsed, 2),
            "msg_per_s": round((total - first_count) / elapsed),
            "worker_cpu_us_per_msg": round(1e6 * cpu["workers"] / counted, 1),
            "broker_cpu_us_per_msg": round(1e6 * cpu["broker"] / counted, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--workers", default="1,2", help="worker counts to run, e.g. 1,2")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--batch-size", type=int, default=None, help="kafka.batch_size (default: the config's)")
    parser.add_argument("--checkpoint-s", type=float, default=None,
                        help="ingest.state_checkpoint_s (default: the config's, 0: every record with its batch)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cw-faust-bench-") as tmp_name:
        tmp = Path(tmp_name)
        tansu = TansuServer(tmp / "tansu").start()
        try:
            results = []
            for n in (int(x) for x in args.workers.split(",")):
                data_dir = tmp / f"data-{n}"
                devices = make_devices(args.devices, seed=7, interval_s=600)
                registry = Registry(registry_path(data_dir))
                registry.add_many([(d, None) for d in devices])
                registry.close()
                sim = Simulator(devices, seed=7, start=time.time() - 86400, incidents=True, incident_rate=0.001)
                span = 600.0 * args.messages / args.devices + 600.0
                messages = []
                for topic, payload, _ in sim.messages(span):
                    messages.append((topic.split("/")[2], topic, payload))
                    if len(messages) >= args.messages:
                        break
                telemetry = f"bench-telemetry-{n}"
                t0 = time.perf_counter()
                asyncio.run(produce(tansu.bootstrap, telemetry, args.partitions, messages))
                print(f"produced {len(messages)} messages for {args.devices} devices in "
                      f"{time.perf_counter() - t0:.1f} s", flush=True)
                base = {"data_dir": str(data_dir), "log_level": "WARNING", "api": {"enabled": False},
                        "metrics": {"enabled": False},
                        "kafka": {"telemetry_topic": telemetry, "transitions_topic": f"bench-transitions-{n}",
                                  "deadletters_topic": f"bench-deadletters-{n}", "standby_replicas": 0},
                        "alerts": {"review_deadline_h": 1000, "response_deadline_h": 1000},
                        "rules": {"health": {"offline_intervals": 10_000}}}
                if args.batch_size:
                    base["kafka"]["batch_size"] = args.batch_size
                if args.checkpoint_s is not None:
                    base["ingest"] = {"state_checkpoint_s": args.checkpoint_s}
                assert tansu.proc is not None
                result = run_workers(n, base, tmp, tansu.bootstrap, args.partitions, len(messages), args.timeout,
                                     tansu.proc.pid)
                results.append(result)
                print(json.dumps(result), flush=True)
            if len(results) == 2:
                print(f"2 workers / 1 worker: {results[1]['msg_per_s'] / results[0]['msg_per_s']:.2f}x "
                      f"({os.cpu_count()} cores on this machine)")
            print(f"load average {os.getloadavg()[0]:.1f} at the end")
        finally:
            tansu.stop()


if __name__ == "__main__":
    main()
