"""Measured detection quality: `python -m benchmarks.detection` (from the repository root).

1. Kind scenarios (benchmarks/detection/scenarios.py) through the real pipeline core, ticking
   every 30 s: per rule, precision, recall, F1 and the median time to detect (alert opened minus
   scenario start). A true positive is an alert of an expected rule opened on the scenario's
   device between its start and 10 minutes after its end; any other alert of that rule is a
   false positive, unless the scenario allows that rule.
2. The generic detector over synthetic NAB-like series (benchmarks/detection/nab_like.py),
   scored the NAB way, beside a plain windowed z-score for reference.
3. Costs: microseconds per reading the learned detectors add to the pipeline core, the largest
   per-device state (msgpack bytes), and replay rows per second.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import msgspec
import numpy as np

from benchmarks.detection import nab_like, scenarios
from citywatch.config import Settings
from citywatch.detectors.baseline import LearnedRule, plain_hook
from citywatch.detectors.generic import GenericDetector
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.detectors.registry import build_rules
from citywatch.streams.pipeline import Output, Pipeline
from citywatch.streams.replay import replay

GRACE_S = 600.0


def run_scenarios(n_devices: int, days: float, seed: int) -> tuple[list[tuple], Pipeline, int]:
    devices, plan, horizon = scenarios.build(n_devices, seed, days)
    settings = Settings()
    pipeline = Pipeline(settings, {d.id: d for d in devices}, AlertEngine(settings.alerts),
                        started_at=scenarios.T0)
    out = Output()
    next_tick = scenarios.T0 + 30
    count = 0
    for topic, payload, ts in scenarios.messages(devices, plan, horizon, seed):
        while ts >= next_tick:
            pipeline.tick(next_tick, out)
            next_tick += 30
        pipeline.process(topic, payload, ts + 0.2, out)
        count += 1
    pipeline.tick(scenarios.T0 + horizon, out)
    opened = [t for t in out.transitions if t.transition == "opened"]

    by_device = {s.device.id: s for s in plan}
    tp: dict[str, list[float]] = defaultdict(list)
    fp: dict[str, int] = defaultdict(int)
    expected: dict[str, int] = defaultdict(int)
    for s in plan:
        for rule in s.expect:
            expected[rule] += 1
    credited: set[tuple[str, str]] = set()
    for t in opened:
        rule, device_id = t.alert.rule, t.alert.device_id
        s = by_device.get(device_id)
        inside = s is not None and s.start - 60 <= t.at <= s.end + GRACE_S
        if inside and rule in s.expect:
            if (device_id, rule) not in credited:
                credited.add((device_id, rule))
                tp[rule].append(t.at - s.start)
            continue
        if inside and rule in s.allow:
            continue
        fp[rule] += 1
    rows = []
    for rule in sorted(set(expected) | set(fp)):
        hits, false, total = len(tp[rule]), fp[rule], expected[rule]
        precision = hits / (hits + false) if hits + false else float("nan")
        recall = hits / total if total else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        ttd = statistics.median(tp[rule]) if tp[rule] else float("nan")
        rows.append((rule, total, hits, false, total - hits, precision, recall, f1, ttd))
    return rows, pipeline, count


def _ttd(seconds: float) -> str:
    if seconds != seconds:
        return "-"
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.0f} min" if seconds < 3 * 3600 \
        else f"{seconds / 3600:.1f} h"


def print_scenarios(rows: list[tuple]) -> None:
    print(f"{'detector (rule)':24s} {'labelled':>8s} {'TP':>4s} {'FP':>4s} {'FN':>4s} {'precision':>9s} "
          f"{'recall':>7s} {'F1':>5s} {'median TTD':>11s}")
    for rule, total, hits, false, missed, precision, recall, f1, ttd in rows:
        p = "-" if precision != precision else f"{precision:.2f}"
        r = "-" if recall != recall else f"{recall:.2f}"
        print(f"{rule:24s} {total:8d} {hits:4d} {false:4d} {missed:4d} {p:>9s} {r:>7s} {f1:5.2f} {_ttd(ttd):>11s}")


def windowed_z(series: nab_like.Series) -> np.ndarray:
    """Reference: |z| > 4 against the mean and sd of the previous 400 rows, 200 rows apart."""
    v = series.values
    alerts = np.zeros(len(v), dtype=bool)
    last = -10**9
    for i in range(150, len(v)):
        w = v[max(0, i - 400):i]
        sd = w.std()
        if sd > 0 and abs(v[i] - w.mean()) / sd > 4 and i - last >= 200:
            alerts[i] = True
            last = i
    return alerts


def generic(series: nab_like.Series) -> np.ndarray:
    detector = GenericDetector()
    return np.array([detector.process(float(v), float(t))[0] for v, t in zip(series.values, series.ts, strict=True)])


def print_generic() -> None:
    corpus = nab_like.make_corpus(7) + nab_like.make_corpus(8) + nab_like.make_corpus(9)
    for name, run in (("generic detector", generic), ("reference: windowed |z| > 4", windowed_z)):
        result = nab_like.evaluate(run, corpus)
        rows = result["rows"]
        hit = sum(r[2] for r in rows)
        wins = sum(r[3] for r in rows)
        fps = sum(r[4] for r in rows)
        print(f"{name:30s} NAB-like score {result['score']:5.1f}   windows detected {hit}/{wins}   "
              f"false alarms {fps} over {len(rows)} series")
    print("per series family (generic detector, 3 seeds):")
    result = nab_like.evaluate(generic, corpus)
    fam: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0, 0])
    for name, raw, hit, wins, fps in result["rows"]:
        f = fam[name]
        f[0] += raw
        f[1] += hit
        f[2] += wins
        f[3] += fps
    for name, (raw, hit, wins, fps) in fam.items():
        print(f"  {name:32s} detected {hit}/{wins}  false alarms {fps}  raw {raw:+.2f}")


def costs(pipeline: Pipeline) -> None:
    sizes = sorted(len(msgspec.msgpack.encode(st, enc_hook=plain_hook)) for st in pipeline.states.values())
    print(f"state per device (msgpack, after the run): max {sizes[-1]} B, median {sizes[len(sizes) // 2]} B")
    devices, plan, _ = scenarios.build(100, 3, 1.5)
    msgs = list(scenarios.messages(devices, [], 1.5 * scenarios.DAY, 3))
    settings = Settings()
    full = build_rules(settings)
    base = {k: [r for r in v if not isinstance(r, LearnedRule)] for k, v in full.items()}

    def per_msg(rules: dict) -> float:
        p = Pipeline(settings, {d.id: d for d in devices}, AlertEngine(settings.alerts), started_at=scenarios.T0,
                     rules=rules)
        out = Output()
        started = time.perf_counter()
        for topic, payload, ts in msgs:
            p.process(topic, payload, ts + 0.2, out)
        return (time.perf_counter() - started) / len(msgs) * 1e6

    a = min(per_msg(base) for _ in range(3))
    b = min(per_msg(full) for _ in range(3))
    print(f"pipeline core: {a:.1f} us/msg with the threshold rules, {b:.1f} us/msg with the learned detectors "
          f"(+{b - a:.1f} us per reading; {1e6 / b:,.0f} msg/s/core)")
    corpus = nab_like.make_corpus(7)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.csv"
        with open(src, "w") as f:
            f.write("timestamp,value\n")
            for s in corpus:
                for t, v in zip(s.ts, s.values, strict=True):
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t))},{v}\n")
        stats = replay(src, Path(tmp) / "out.csv")
    print(f"replay (generic): {stats.rows} rows in {stats.seconds:.2f} s = {stats.rows_per_s:,.0f} rows/s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--days", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--skip-generic", action="store_true")
    parser.add_argument("--skip-costs", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    rows, pipeline, count = run_scenarios(args.devices, args.days, args.seed)
    print(f"== kind scenarios: {args.devices} simulated devices, {args.days:g} days, {count:,} messages "
          f"({time.perf_counter() - started:.0f} s)")
    print_scenarios(rows)
    if not args.skip_generic:
        print("\n== generic detector (replay without a kind) on synthetic NAB-like series")
        print_generic()
    if not args.skip_costs:
        print("\n== costs")
        costs(pipeline)


if __name__ == "__main__":
    main()
