"""Backpressure, measured: a slow InfluxDB slows ingestion; memory stays bounded; nothing is dropped.

    python benchmarks/backpressure.py [--messages 50000] [--delay 0.2] [--scenarios fast,slow]

Each scenario starts a real Mosquitto, a real influxd 1.6.7 behind the v2-write bridge of the test
suite (its `delay_s` makes every write request slow), and the embedded runner in this process with
an InfluxDB sink of small buffers (batch 500 lines, 1 MB disk buffer). A separate process publishes
`--messages` QoS 1 telemetry messages as fast as the broker takes them (each reading becomes two
points: its kind measurement and `device_status`). Every `--sample` seconds it records what was
published, what the runner received and processed, the hand-off length, the backlog the broker
holds (published - received), the sink's memory and disk buffer, the points written, and this
process's RSS. At the end it checks processed == published and InfluxDB's point counts == readings.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import multiprocessing as mp
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from citywatch.devices.registry import Registry, registry_path  # noqa: E402
from citywatch.model import Device  # noqa: E402
from tests.conftest import RunnerThread, make_settings  # noqa: E402
from tests.servers.influx import InfluxStack  # noqa: E402
from tests.servers.mosquitto import MosquittoServer  # noqa: E402

TOKEN = "bench-token"


class CountLogs(logging.Handler):
    """Counts WARNING+ records by message template instead of printing them mid-table."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname} {str(record.msg)[:70]}"] += 1


LOGS = CountLogs()


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def publish(port: int, n: int, n_devices: int, base: float, published: Any) -> None:
    """Child process: QoS 1 as fast as the broker acknowledges; `published` counts PUBACKs."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(2000)  # publish() blocks past this: bounded on our side too
    acked = 0

    def on_publish(*args: Any) -> None:
        nonlocal acked
        acked += 1
        if acked % 100 == 0 or acked == n:
            published.value = acked

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    for i in range(n):
        body = {"ts": round(base + i * 0.001, 3), "seq": i // n_devices + 1, "battery": 80.0 + i % 10,
                "rssi": -60.0 - i % 30, "lel_pct": 1.0 + i % 7}
        topic = f"citywatch/gas/gas-{i % n_devices:04d}/telemetry"
        while True:
            info = client.publish(topic, json.dumps(body).encode(), qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                break
            time.sleep(0.001)  # paho's queue is full: wait for PUBACKs
    while acked < n:
        time.sleep(0.01)
    published.value = acked
    client.disconnect()
    client.loop_stop()


@dataclass
class Result:
    name: str
    delay_s: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def run_scenario(name: str, delay_s: float, args: argparse.Namespace) -> Result:
    result = Result(name, delay_s)
    LOGS.counts.clear()
    n, n_devices = args.messages, args.devices
    with tempfile.TemporaryDirectory(prefix="cw-bench-") as tmp:
        root = Path(tmp)
        broker = MosquittoServer(root / "mosquitto")
        broker.start()
        influx = InfluxStack(root / "influx", token=TOKEN).start()
        influx.bridge.delay_s = delay_s
        try:
            settings = make_settings(
                root / "data", log_level="WARNING",
                mqtt={"url": broker.url, "client_id": f"bench-{name}", "queue_size": args.queue_size,
                      "receive_maximum": args.receive_maximum},
                influx={"url": influx.url, "token": TOKEN, "batch_size": args.influx_batch,
                        "flush_interval_ms": 100, "timeout_ms": 10_000, "buffer_max_mb": args.buffer_mb})
            registry = Registry(registry_path(settings.data_dir))
            for i in range(n_devices):
                registry.add(Device(id=f"gas-{i:04d}", kind="gas", district=f"D{i % 7}", grid=f"G{i % 31:03d}"))
            registry.close()
            run = RunnerThread(settings).start()
            runner = run.runner
            assert runner is not None and runner.collector is not None and runner.influx is not None
            handoff = runner.collector.handoff
            rss_start = rss_mb()
            published = mp.get_context("spawn").Value("q", 0)
            publisher = mp.get_context("spawn").Process(
                target=publish, args=(broker.port, n, n_devices, time.time() - 86400, published))
            started = time.monotonic()
            publisher.start()
            next_sample = started
            peak_handoff = 0
            last: dict[str, Any] | None = None
            while True:
                peak_handoff = max(peak_handoff, len(handoff))  # looked at often, between samples too
                now = time.monotonic()
                if now >= next_sample:
                    next_sample += args.sample
                    s = runner.influx.stats()
                    row = {"t": now - started, "published": published.value, "received": runner.collector.received,
                           "processed": runner.pipeline.counters["processed"], "handoff": len(handoff),
                           "mem_lines": s["in_memory"], "disk_kb": s["buffered_bytes"] / 1024,
                           "written": s["written_lines"], "rss": rss_mb()}
                    row["backlog"] = row["published"] - row["received"]
                    if last is not None:
                        dt = row["t"] - last["t"]
                        row["in_rate"] = (row["processed"] - last["processed"]) / dt
                        row["out_rate"] = (row["written"] - last["written"]) / dt
                    result.rows.append(row)
                    last = row
                    if row["processed"] >= n and row["written"] >= 2 * n:
                        break
                    if now - started > args.max_s:
                        print(f"{name}: gave up after {args.max_s} s", file=sys.stderr)
                        break
                time.sleep(0.005)
            publisher.join(30)
            elapsed = time.monotonic() - started
            drained = runner.influx.drain(60)
            sink = runner.influx.stats()
            collector_blocked = (handoff.blocked_puts, handoff.blocked_s)
            run.stop()
            gas = influx.count("gas", "lel_pct")
            status = influx.count("device_status", "battery")
            rows = result.rows
            publish_done = next((r["t"] for r in rows if r["published"] >= n), elapsed)
            result.summary = {
                "logs": dict(LOGS.counts),
                "published": published.value, "processed": runner.pipeline.counters["processed"],
                "dead_letters": runner.pipeline.counters["dead_letters"],
                "influx_gas_points": gas, "influx_device_status_points": status, "drained": drained,
                "elapsed_s": elapsed, "publish_s": publish_done,
                "publish_rate": n / publish_done if publish_done else 0.0,
                "ingest_rate": n / elapsed, "sink_lines_per_s": sink["written_lines"] / elapsed,
                "rss_start": rss_start, "rss_peak": max(r["rss"] for r in rows), "rss_end": rows[-1]["rss"],
                "handoff_peak": peak_handoff, "backlog_peak": max(r["backlog"] for r in rows),
                "disk_peak_kb": max(r["disk_kb"] for r in rows), "mem_lines_peak": max(r["mem_lines"] for r in rows),
                "collector_blocked": collector_blocked, "blocked_adds": sink["blocked_adds"],
                "lost_on_close": sink["lost_on_close"], "bridge_requests": influx.bridge.requests,
            }
        finally:
            influx.stop()
            broker.stop()
    return result


def print_result(r: Result, args: argparse.Namespace, every: int) -> None:
    print(f"\n== {r.name}: InfluxDB write requests delayed {r.delay_s:g} s each; influx batch {args.influx_batch} "
          f"lines, disk buffer {args.buffer_mb} MB, mqtt.queue_size {args.queue_size}, receive_maximum "
          f"{args.receive_maximum}")
    print(f"{'t s':>6} {'published':>9} {'received':>8} {'backlog':>7} {'hand-off':>8} {'processed':>9} "
          f"{'in msg/s':>8} {'sink mem':>8} {'disk KB':>7} {'written':>8} {'out pt/s':>8} {'RSS MB':>6}")
    for i, row in enumerate(r.rows):
        if i % every and i != len(r.rows) - 1:
            continue
        print(f"{row['t']:6.1f} {row['published']:9d} {row['received']:8d} {row['backlog']:7d} {row['handoff']:8d} "
              f"{row['processed']:9d} {row.get('in_rate', 0):8.0f} {row['mem_lines']:8d} {row['disk_kb']:7.0f} "
              f"{row['written']:8d} {row.get('out_rate', 0):8.0f} {row['rss']:6.1f}")
    s = r.summary
    n = args.messages
    ok = (s["processed"] == s["published"] == n and s["influx_gas_points"] == n
          and s["influx_device_status_points"] == n and s["dead_letters"] == 0 and s["lost_on_close"] == 0)
    print(f"published {s['published']} in {s['publish_s']:.1f} s ({s['publish_rate']:.0f}/s); processed "
          f"{s['processed']} in {s['elapsed_s']:.1f} s ({s['ingest_rate']:.0f} msg/s; sink {s['sink_lines_per_s']:.0f} "
          f"points/s over {s['bridge_requests']} write requests)")
    print(f"RSS MB start/peak/end: {s['rss_start']:.1f} / {s['rss_peak']:.1f} / {s['rss_end']:.1f}; peaks: hand-off "
          f"{s['handoff_peak']}, broker backlog {s['backlog_peak']}, sink memory {s['mem_lines_peak']} lines, disk "
          f"{s['disk_peak_kb']:.0f} KB; collector blocked {s['collector_blocked'][0]} times "
          f"({s['collector_blocked'][1]:.1f} s); sink add() blocked {s['blocked_adds']} times")
    print(f"InfluxDB: gas points {s['influx_gas_points']}, device_status points {s['influx_device_status_points']} "
          f"(expected {n} each); dead letters {s['dead_letters']}; lost on close {s['lost_on_close']} -> "
          f"{'OK: nothing dropped' if ok else 'MISMATCH'}")
    for message, count in sorted(s["logs"].items(), key=lambda kv: -kv[1]):
        print(f"log x{count}: {message}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--devices", type=int, default=500)
    p.add_argument("--delay", type=float, default=0.2, help="seconds added to every write in the slow scenario")
    p.add_argument("--scenarios", default="fast,slow")
    p.add_argument("--influx-batch", type=int, default=500)
    p.add_argument("--buffer-mb", type=int, default=1)
    p.add_argument("--queue-size", type=int, default=20_000, help="mqtt.queue_size (the production default)")
    p.add_argument("--receive-maximum", type=int, default=1000)
    p.add_argument("--sample", type=float, default=0.5)
    p.add_argument("--every", type=int, default=4, help="print every Nth sample")
    p.add_argument("--max-s", type=float, default=600)
    args = p.parse_args()
    logging.getLogger().addHandler(LOGS)
    delays = {"fast": 0.0, "slow": args.delay}
    results = [run_scenario(name, delays[name], args) for name in args.scenarios.split(",")]
    for r in results:
        print_result(r, args, args.every)
    if len(results) == 2:
        a, b = results[0].summary, results[1].summary
        print(f"\n{results[1].name} vs {results[0].name}: ingestion {b['ingest_rate']:.0f} vs {a['ingest_rate']:.0f} "
              f"msg/s follows the sink ({b['sink_lines_per_s'] / 2:.0f} vs {a['sink_lines_per_s'] / 2:.0f} "
              f"readings/s); RSS peak {b['rss_peak']:.1f} vs {a['rss_peak']:.1f} MB")
    bad = [r.name for r in results if not (r.summary["processed"] == args.messages
                                           and r.summary["influx_gas_points"] == args.messages)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
