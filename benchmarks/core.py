"""(a) The pipeline core in process: parse, validate, enrich, detect, alert transitions; sinks stubbed.

Usage: python benchmarks/core.py [--devices 100000] [--messages 300000] [--warm-readings 3]
Prints messages per second on one core (this process is single-threaded), twice: while every device
sends its first `warm-readings` messages (cold: each device's state is created), then over the next
`messages` (steady state: a running city, whose devices all have state already).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import results  # noqa: E402
from citywatch.config import load_settings  # noqa: E402
from citywatch.detectors.lifecycle import AlertEngine  # noqa: E402
from citywatch.ingest.simulator import Simulator, make_devices  # noqa: E402
from citywatch.model import Output
from citywatch.native import describe  # noqa: E402
from citywatch.streams.pipeline import Pipeline  # noqa: E402


class Lookup(dict):  # type: ignore[type-arg]
    pass


def build(n_devices: int, n_messages: int) -> tuple[Pipeline, list[tuple[str, bytes, float]]]:
    """A pipeline over `n_devices` simulated devices and their first `n_messages` messages."""
    settings = load_settings(None, {})
    devices = make_devices(n_devices, seed=3)
    start = time.time() - 3 * 86400
    sim = Simulator(devices, seed=3, start=start)
    per_device_s = 60.0
    duration = per_device_s * -(-n_messages // n_devices)  # enough minutes for n_messages
    messages = []
    for topic, payload, ts in sim.messages(duration):
        messages.append((topic, payload, ts + 0.5))
        if len(messages) >= n_messages:
            break
    pipeline = Pipeline(settings, Lookup({d.id: d for d in devices}), AlertEngine(settings.alerts),
                        started_at=start)
    return pipeline, messages


def measure(pipeline: Pipeline, messages: list[tuple[str, bytes, float]], batch: int = 1000) -> float:
    process = pipeline.process
    gc.collect()
    started = time.perf_counter()
    for i in range(0, len(messages), batch):
        out = Output()
        for topic, payload, received_at in messages[i:i + batch]:
            process(topic, payload, received_at, out)
        pipeline.alerts.take_dirty()
        pipeline.take_dirty()
    return len(messages) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--warm-readings", type=int, default=3)
    parser.add_argument("--result", help="also write the figures to this JSON file (run.py)")
    args = parser.parse_args()
    n_warm = args.devices * args.warm_readings
    pipeline, messages = build(args.devices, n_warm + args.messages)
    cold = measure(pipeline, messages[:n_warm]) if n_warm else 0.0
    rate = measure(pipeline, messages[n_warm:])
    c = pipeline.counters
    print(f"core ({describe()}): {args.devices:,} devices; first {args.warm_readings} readings each "
          f"(state created): {cold:,.0f} msg/s; next {len(messages) - n_warm:,} messages (steady state): "
          f"{rate:,.0f} msg/s on one core (processed {c['processed']}, dead {c['dead_letters']}, transitions "
          f"{sum(v for k, v in c.items() if k.startswith('transitions.'))})")
    results.save(args.result, devices=args.devices, cold=cold, steady=rate, build=describe())


if __name__ == "__main__":
    main()
