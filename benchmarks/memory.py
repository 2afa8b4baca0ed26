"""(d) memory per device and (f) the cost curve: msg/s of the core and RSS per device from 1k to 1M devices.

Usage: python benchmarks/memory.py [--sizes 1000,10000,100000] [--readings 3]
Each size runs in a fresh process (RSS of one size must not include another's). Every device sends
`readings` messages through the real pipeline core (all detectors on), so each holds real state.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one(n: int, readings: int) -> dict[str, float]:
    import psutil

    from citywatch.config import load_settings
    from citywatch.detectors.lifecycle import AlertEngine
    from citywatch.ingest.simulator import Simulator, make_devices
    from citywatch.streams.pipeline import Output, Pipeline

    settings = load_settings(None, {})
    devices = make_devices(n, seed=3)
    start = time.time() - 2 * 86400
    messages = [(t, p, ts + 0.5) for t, p, ts in Simulator(devices, seed=3, start=start).messages(60.0 * readings)]
    pipeline = Pipeline(settings, {d.id: d for d in devices}, AlertEngine(settings.alerts), started_at=start)
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    process = pipeline.process
    t0 = time.perf_counter()
    for i in range(0, len(messages), 1000):
        out = Output()
        for topic, payload, received in messages[i:i + 1000]:
            process(topic, payload, received, out)
        pipeline.alerts.take_dirty()
        pipeline.take_dirty_states()
    seconds = time.perf_counter() - t0
    del messages
    gc.collect()
    rss1 = psutil.Process().memory_info().rss
    import msgspec


    encoded = [len(msgspec.msgpack.encode(s)) for s in pipeline.states.values()]
    return {"devices": n, "msgs": pipeline.counters["received"], "msg_per_s": pipeline.counters["received"] / seconds,
            "rss_mb": rss1 / 2**20, "state_bytes_per_device_rss": (rss1 - rss0) / n,
            "state_bytes_per_device_msgpack": sum(encoded) / max(1, len(encoded))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--readings", type=int, default=3)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.readings)))
        return
    print(f"{'devices':>9} {'msg/s (core)':>13} {'RSS MiB':>9} {'B/device (RSS)':>15} {'B/device (stored)':>18}")
    for n in (int(s) for s in args.sizes.split(",")):
        result = subprocess.run([sys.executable, __file__, "--one", str(n), "--readings", str(args.readings)],
                                capture_output=True, text=True, check=True, cwd=ROOT)
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"{n:>9,} {r['msg_per_s']:>13,.0f} {r['rss_mb']:>9,.0f} {r['state_bytes_per_device_rss']:>15,.0f}"
              f" {r['state_bytes_per_device_msgpack']:>18,.0f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
