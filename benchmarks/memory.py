"""(d) memory per device and (f) the cost curve: msg/s of the core and RSS per device from 1k to 1M devices.

Usage: python benchmarks/memory.py [--sizes 1000,10000,100000] [--readings 3]

Each size runs in a fresh process (RSS of one size must not include another's). RSS is read with
the registry of N devices loaded as the runner loads it (a SQLite registry read into RegistryCache)
and no device state (the "0 devices' state" figure); then the
messages to send are made, and RSS is read again before and after every device has sent `readings`
messages through the real pipeline core (all detectors on). The growth is the devices' state; the
RSS reported is registry + state, without the benchmark's own message list.

A few readings leave most of a device's 48 seasonal buckets cold, so the same script also measures
a *fully warm* record (eight simulated days of one device per kind, incidents included, measured by
RSS over 20,000 copies) and projects the RSS of N such devices: registry + warm record.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def warm_state_bytes(copies: int = 20_000) -> float:
    """Mean in-memory size of a fully warm device record, weighted by the simulator's mix of kinds.

    Per kind, one device runs eight simulated days (incidents included); its record is then decoded
    from its stored form `copies` times and kept: the RSS growth per copy is what one warm record
    holds in this build (compiled records keep numbers unboxed, so counting objects would not do)."""
    from collections import Counter

    import psutil

    from citywatch.ingest.simulator import Simulator, make_devices
    from citywatch.model import Output
    from tests.helpers import T0, make_pipeline

    mix = Counter(d.kind for d in make_devices(10_000, seed=3))
    sizes: dict[str, float] = {}
    kept: list[list[object]] = []
    for kind in mix:
        device = next(d for d in make_devices(50, seed=4) if d.kind == kind)
        pipeline = make_pipeline(device)
        out = Output()
        for topic, payload, ts in Simulator([device], seed=4, start=T0, incident_rate=1.0,
                                            horizon_s=7 * 86400).messages(8 * 86400):
            pipeline.process(topic, payload, ts + 0.2, out)
        stored = pipeline.codec.encode(pipeline.records[device.id])
        gc.collect()
        before = psutil.Process().memory_info().rss
        kept.append([pipeline.codec.decode(stored, kind) for _ in range(copies)])
        gc.collect()
        sizes[kind] = (psutil.Process().memory_info().rss - before) / copies  # all kept: no memory reused
    print("fully warm record in memory, B: " + ", ".join(f"{k} {v:,.0f}" for k, v in sizes.items()))
    return sum(sizes[k] * n for k, n in mix.items()) / sum(mix.values())


def one(n: int, readings: int) -> dict[str, float]:
    import psutil

    from citywatch.config import load_settings
    from citywatch.detectors.lifecycle import AlertEngine
    from citywatch.devices.registry import Registry, RegistryCache
    from citywatch.ingest.simulator import Simulator, make_devices
    from citywatch.model import Output
    from citywatch.streams.pipeline import Pipeline

    settings = load_settings(None, {})
    tmp = tempfile.TemporaryDirectory()
    registry = Registry(Path(tmp.name) / "registry.db")
    registry.add_many([(d, None) for d in make_devices(n, seed=3)])
    gc.collect()
    rss_empty = psutil.Process().memory_info().rss
    cache = RegistryCache(registry)  # the devices as the runner holds them, looked up by id
    devices = cache.snapshot()
    start = time.time() - 2 * 86400
    pipeline = Pipeline(settings, cache, AlertEngine(settings.alerts), started_at=start)
    gc.collect()
    rss_registry = psutil.Process().memory_info().rss
    messages = [(t, p, ts + 0.5) for t, p, ts in Simulator(devices, seed=3, start=start).messages(60.0 * readings)]
    gc.collect()
    rss0 = psutil.Process().memory_info().rss  # + the messages to send (held until after rss1)
    process = pipeline.process
    t0 = time.perf_counter()
    for i in range(0, len(messages), 1000):
        out = Output()
        for topic, payload, received in messages[i:i + 1000]:
            process(topic, payload, received, out)
        pipeline.alerts.take_dirty()
        pipeline.take_dirty()
    seconds = time.perf_counter() - t0
    gc.collect()
    rss1 = psutil.Process().memory_info().rss
    del messages
    encoded = [len(pipeline.codec.encode(record)) for record in pipeline.records.values()]
    t1 = time.perf_counter()
    gc.collect()  # the pause a full collection costs with this many device records (gcpolicy.py)
    full_gc_s = time.perf_counter() - t1
    return {"devices": n, "msgs": pipeline.counters["received"], "msg_per_s": pipeline.counters["received"] / seconds,
            "rss_mb": (rss_registry + rss1 - rss0) / 2**20, "rss0_mb": rss_registry / 2**20,
            "registry_bytes_per_device": (rss_registry - rss_empty) / n,
            "state_bytes_per_device_rss": (rss1 - rss0) / n,
            "state_bytes_per_device_msgpack": sum(encoded) / max(1, len(encoded)),
            "full_gc_s": full_gc_s, "gc_objects": len(gc.get_objects())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--readings", type=int, default=3)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", help="also write the figures to this JSON file (run.py)")
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.readings)))
        return
    from benchmarks import results

    print(f"{'devices':>9} {'msg/s (core)':>13} {'RSS MiB, 0 states':>18} {'RSS MiB':>9} {'B/device registry':>18}"
          f" {'B/device state (RSS)':>21} {'B/device (stored)':>18} {'full GC s':>10} {'GC objects':>11}")
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        result = subprocess.run([sys.executable, __file__, "--one", str(n), "--readings", str(args.readings)],
                                capture_output=True, text=True, check=True, cwd=ROOT)
        r = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{n:>9,} {r['msg_per_s']:>13,.0f} {r['rss0_mb']:>18,.0f} {r['rss_mb']:>9,.0f}"
              f" {r['registry_bytes_per_device']:>18,.0f} {r['state_bytes_per_device_rss']:>21,.0f}"
              f" {r['state_bytes_per_device_msgpack']:>18,.0f} {r['full_gc_s']:>10.2f} {r['gc_objects']:>11,}")
    warm = warm_state_bytes()
    registry = rows[-1]["registry_bytes_per_device"]
    print(f"fully warm device state in memory (8 simulated days, mix-weighted): {warm:,.0f} B; "
          f"with the registry entry: {warm + registry:,.0f} B per device "
          f"= {(warm + registry) * 1e6 / 2**30:.2f} GiB for 1M devices")
    results.save(args.result, rows=rows, warm_state=warm, registry=registry)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
