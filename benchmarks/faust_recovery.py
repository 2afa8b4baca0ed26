"""How fast a Faust process worker is ready again with N devices' state, per table store.

    python -m benchmarks.faust_recovery [--sizes 100000,300000,1000000] [--stores memory,rocksdict,python-rocksdb]

A local tansu broker (memory storage), 4 partitions. For each size N, the `devices` Table's changelog
gets N records (one per registered device, produced straight to `<app_id>-devices-changelog` in the Table's
own raw format, partition = the device's; each value is a real record: WorkerCore over the first 500
simulated devices, about 6 readings each, whose bytes are reused for devices of the same kind). Then,
per store (`kafka.table_store`), real `citywatch worker --role process` processes:

1. cold: a worker with an empty data dir joins and builds its state from the whole changelog;
2. restart: it is stopped (SIGTERM), 1% of N newer records are appended to the changelog (what other
   workers wrote meanwhile), and it starts again with the same worker id and data dir: memory replays
   the whole changelog again, RocksDB reads its own files and only the tail;
3. move: a second worker (empty data dir) joins: two of the four partitions move to it, which
   rebuilds them from the changelog (half the state).

Per phase: `join` = process start (or the second worker's start) to its partitions assigned (tansu's
consumer-group join: not the store's cost), `recovery` = assigned to the state rebuilt in memory
(changelog read, store, WorkerCore rebuild; the worker processes events from then on), `total`.
Times come from the workers' heartbeats (assigned_at, rebuild.at, rebuild.seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from citywatch.config import load_settings  # noqa: E402
from citywatch.devices.registry import Registry, registry_path  # noqa: E402
from citywatch.ingest.simulator import Simulator, make_devices  # noqa: E402
from citywatch.model import Device, Output  # noqa: E402
from citywatch.streams.bridge import partition_for  # noqa: E402
from citywatch.streams.faust_app import WorkerCore  # noqa: E402
from tests.helpers import DictDevices  # noqa: E402
from tests.servers.tansu import TansuServer  # noqa: E402

PARTITIONS = 4
SAMPLE = 500


def record_templates(config: Path, devices: list[Device]) -> dict[str, list[bytes]]:
    """Real Table values by device kind: WorkerCore over SAMPLE of the devices, ~6 readings each."""
    settings = load_settings(config)
    sample = devices[:SAMPLE]
    table: dict[bytes, bytes] = {}
    core = WorkerCore(settings, DictDevices({d.id: d for d in sample}), table, PARTITIONS)
    sim = Simulator(sample, seed=5, start=time.time() - 7200, incidents=False)
    out = Output()
    for topic, payload, at in sim.messages(3600):
        core.process(topic, payload, at, out)
    core.commit()
    by_kind: dict[str, list[bytes]] = {}
    for d in sample:
        if d.id.encode() in table:
            by_kind.setdefault(d.kind, []).append(table[d.id.encode()])
    return by_kind


async def produce_changelog(bootstrap: str, topic: str, devices: list[Device], templates: dict[str, list[bytes]],
                            create: bool) -> float:
    """One record per device, in the device's partition (what the workers' Table writes)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    if create:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, PARTITIONS, 1, topic_configs={"cleanup.policy": "compact"})])
        finally:
            await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=1024 * 1024)
    await producer.start()
    t0 = time.perf_counter()
    try:
        pending = []
        for i, d in enumerate(devices):
            key = d.id.encode()
            values = templates[d.kind]
            pending.append(await producer.send(topic, values[i % len(values)], key=key,
                                               partition=partition_for(key, PARTITIONS)))
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    await wait_highwaters(bootstrap, topic)
    return time.perf_counter() - t0


async def wait_highwaters(bootstrap: str, topic: str, timeout: float = 120.0) -> None:
    """Until the broker's end offsets stop moving. (tansu 0.6 reports the last batch's base offset + 1
    as high watermark: Faust's recovery stops there, and the worker reads the rest itself afterwards,
    FaustCity.read_changelog_tail.)"""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        last: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ends = await consumer.end_offsets(tps)
            if ends == last:
                return
            last = ends
            await asyncio.sleep(1.0)
    finally:
        await consumer.stop()


def beat(data_dir: Path, name: str) -> dict[str, Any]:
    try:
        value: dict[str, Any] = json.loads((data_dir / "heartbeats" / f"worker-{name}.json").read_text())
        return value
    except (OSError, ValueError):
        return {}


class Worker:
    def __init__(self, name: str, config: Path, env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "citywatch", "worker", "--role", "process", "--worker-id", name,
             "--loglevel", os.environ.get("BENCH_LOGLEVEL", "warning")],
            cwd=ROOT, env={**env, "CITYWATCH_CONFIG": str(config)},
            stdout=subprocess.DEVNULL, stderr=open(logs / f"{name}.log", "ab"))  # noqa: SIM115

    def wait_ready(self, data_dir: Path, after: float, owned: int, timeout: float) -> dict[str, float]:
        """Until the heartbeat shows a rebuild ending after `after` with `owned` partitions."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}")
            b = beat(data_dir, self.name)
            rebuild = b.get("rebuild") or {}
            if (rebuild.get("at", 0) > after and len(b.get("owned") or ()) == owned
                    and (b.get("assigned_at") or 0) > after):
                assigned = float(b["assigned_at"])
                return {"join_s": round(assigned - after, 1), "recovery_s": round(rebuild["at"] - assigned, 1),
                        "rebuild_s": round(rebuild["seconds"], 1), "total_s": round(rebuild["at"] - after, 1),
                        "devices": int(rebuild["devices"])}
            time.sleep(0.2)
        raise RuntimeError(f"worker {self.name} not ready within {timeout} s")

    def stop(self, sig: str = "term") -> None:
        if self.proc.poll() is None:
            self.proc.terminate() if sig == "term" else self.proc.kill()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--stores", default="memory,rocksdict,python-rocksdb")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--no-move", action="store_true", help="skip phase 3 (a partition moves)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cw-faust-recovery-"))
    print(f"work dir {tmp}; {os.cpu_count()} cores; {PARTITIONS} partitions", flush=True)
    tansu = TansuServer(tmp / "tansu").start()
    try:
        for size in (int(x) for x in args.sizes.split(",")):
            t0 = time.perf_counter()
            devices = make_devices(size, seed=7, interval_s=600)
            registry_file = tmp / f"registry-{size}.db"
            registry = Registry(registry_file)
            registry.add_many([(d, None) for d in devices])
            registry.close()
            print(f"\n{size} devices registered in {time.perf_counter() - t0:.1f} s", flush=True)
            for store in args.stores.split(","):
                app_id = f"rec{size}-{store}"
                data_dir = tmp / app_id
                data_dir.mkdir(parents=True)
                shutil.copy(registry_file, registry_path(data_dir))
                config = tmp / f"{app_id}.yaml"
                config.write_text(yaml.safe_dump({
                    "data_dir": str(data_dir), "log_level": "WARNING", "api": {"enabled": False},
                    "metrics": {"enabled": False},
                    "kafka": {"app_id": app_id, "telemetry_topic": f"{app_id}-telemetry",
                              "transitions_topic": f"{app_id}-transitions", "deadletters_topic": f"{app_id}-dl",
                              "standby_replicas": 0, "table_store": store, "exact_high_watermark": False},
                    "alerts": {"review_deadline_h": 1000, "response_deadline_h": 1000},
                    "rules": {"health": {"offline_intervals": 10_000}}}))
                templates = record_templates(config, devices)
                sizes = [len(v) for values in templates.values() for v in values]
                changelog = f"{app_id}-devices-changelog"
                seconds = asyncio.run(produce_changelog(tansu.bootstrap, changelog, devices, templates, True))
                print(f"{size} devices, store {store}: changelog of {size} records "
                      f"(values {min(sizes)}-{max(sizes)} B, "
                      f"mean {sum(sizes) / len(sizes):.0f} B) produced in {seconds:.1f} s", flush=True)
                env = {**os.environ, "CITYWATCH_KAFKA__BOOTSTRAP": tansu.bootstrap,
                       "CITYWATCH_KAFKA__PARTITIONS": str(PARTITIONS)}
                result: dict[str, Any] = {"devices": size, "store": store}
                w1 = Worker("w1", config, env, tmp)
                try:
                    result["cold"] = w1.wait_ready(data_dir, w1.started, PARTITIONS, args.timeout)
                    print(f"  cold:    {json.dumps(result['cold'])}", flush=True)
                    w1.stop()
                    tail = max(size // 100, 1)
                    asyncio.run(produce_changelog(tansu.bootstrap, changelog, devices[:tail], templates, False))
                    w1 = Worker("w1", config, env, tmp)
                    result["restart"] = w1.wait_ready(data_dir, w1.started, PARTITIONS, args.timeout)
                    result["restart"]["tail_records"] = tail
                    print(f"  restart: {json.dumps(result['restart'])}", flush=True)
                    if not args.no_move:
                        w2 = Worker("w2", config, env, tmp)
                        try:
                            result["move"] = w2.wait_ready(data_dir, w2.started, PARTITIONS // 2, args.timeout)
                            print(f"  move:    {json.dumps(result['move'])}  (the new worker, its 2 partitions)",
                                  flush=True)
                        finally:
                            w2.stop()
                finally:
                    w1.stop()
                store_dir = data_dir / "workers" / "w1" / "faust"
                size_mb = sum(f.stat().st_size for f in store_dir.rglob("*") if f.is_file()) / 1e6 \
                    if store_dir.exists() else 0.0
                result["disk_mb_w1"] = round(size_mb, 1)
                print(json.dumps(result), flush=True)
                shutil.rmtree(data_dir, ignore_errors=True)
    finally:
        tansu.stop()


if __name__ == "__main__":
    main()
