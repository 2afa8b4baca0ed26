"""Measured detection quality: `python -m benchmarks.detection` (from the repository root).

1. Kind scenarios (benchmarks/detection/scenarios.py) through the real pipeline core, ticking
   every 30 s: per rule, precision, recall, F1 and the median time to detect (alert opened minus
   scenario start). A true positive is an alert of an expected rule opened on the scenario's
   device between its start and 10 minutes after its end; any other alert of that rule is a
   false positive, unless the scenario allows that rule.
2. The generic detector over the realistic NAB-like corpus (benchmarks/detection/corpus.py: a
   tuning and a held-out split), scored the NAB way (benchmarks/detection/realistic.py), before
   and after issue 20, as decided (is_alert) and at the best global threshold on anomaly_score,
   beside a plain windowed z-score; its speed in-process and through `citywatch replay` (the
   real CLI, a subprocess) on a 5,000-row CSV. `--generic-only` runs just this part.
3. Costs: microseconds per reading the learned detectors add to the pipeline core, the largest
   per-device state (msgpack bytes), and replay rows per second.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.detection import corpus, nab_like, realistic, scenarios
from benchmarks.detection.generic_v1 import GenericDetector as GenericV1
from citywatch.config import Settings
from citywatch.detectors.baseline import LearnedRule
from citywatch.detectors.generic import GenericDetector
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.detectors.registry import build_rules
from citywatch.model import Output
from citywatch.streams.pipeline import Pipeline
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
        found = by_device.get(device_id)
        if found is None:
            fp[rule] += 1
            continue
        s = found
        inside = s.start - 60 <= t.at <= s.end + GRACE_S
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


def print_generic() -> dict[str, float]:
    """The realistic corpus (benchmarks/detection/corpus.py), a tuning and a held-out split: the
    detector before issue 20 (generic_v1) and now, each as decided (is_alert) and at the best
    global threshold on anomaly_score; the simple NAB-like corpus and a windowed z for reference."""
    figures: dict[str, float] = {}
    for label, seeds in (("tuning split", corpus.TUNE_SEEDS), ("held-out split", (corpus.HELD_OUT_SEED,))):
        series = [s for seed in seeds for s in corpus.make_corpus(seed)]
        n_rows = sum(len(s.values) for s in series)
        n_windows = sum(len(s.anomalies) for s in series)
        print(f"{label} (seeds {', '.join(map(str, seeds))}): {len(series)} series, {n_rows:,} rows, "
              f"{n_windows} labelled windows")
        for name, factory in (("before (generic_v1)", GenericV1), ("generic detector", GenericDetector)):
            run = realistic.run(factory, series)
            result = realistic.report(name, series, run)
            for key, value in result.items():
                figures[f"{label}/{name}/{key}"] = value
        print(f"    per family (generic detector): {realistic.per_family(series, run.alerts)}")
        z = realistic.nab(series, [windowed_z(s) for s in series])
        print(f"  {'reference: windowed |z| > 4':34s} is_alert {z.score:6.1f} ({z.detected}/{z.windows} windows, "
              f"{z.false_alarms} FP)")
    simple = nab_like.make_corpus(7) + nab_like.make_corpus(8) + nab_like.make_corpus(9)
    simple_score = nab_like.evaluate(generic, simple)["score"]
    print(f"simple NAB-like corpus (nab_like.py, 3 seeds): generic detector {simple_score:.1f}")
    return figures


def generic_speed(rows: int = 5000) -> None:
    """In-process rows/s of GenericDetector.process, and `citywatch replay` on a `rows`-row CSV run
    as a subprocess (the real CLI): wall time end to end, and the same less the interpreter's start
    and imports (`citywatch --help`)."""
    series = [s for s in corpus.make_corpus(corpus.TUNE_SEED) if len(s.values) >= 10000]
    values = np.concatenate([s.values for s in series]).tolist()
    ts = np.concatenate([s.ts + i * 1e7 for i, s in enumerate(series)]).tolist()
    best = best_cpu = 0.0
    for _ in range(3):
        process = GenericDetector().process
        started, cpu = time.perf_counter(), time.process_time()
        for v, t in zip(values, ts, strict=True):
            process(v, t)
        best = max(best, len(values) / (time.perf_counter() - started))
        best_cpu = max(best_cpu, len(values) / (time.process_time() - cpu))
    print(f"in-process: {best:,.0f} rows/s wall, {best_cpu:,.0f} rows/s of CPU time (GenericDetector.process, "
          f"{len(values):,} rows, best of 3; wall falls below CPU when other work shares the cores)")
    cli = Path(sys.executable).parent / "citywatch"
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.csv", Path(tmp) / "out.csv"
        with open(src, "w") as f:
            f.write("timestamp,value\n")
            for t, v in zip(ts[:rows], values[:rows], strict=True):
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(t))},{v:.6g}\n")
        walls, starts = [], []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([str(cli), "replay", str(src), "--out", str(out)], check=True, capture_output=True)
            walls.append(time.perf_counter() - started)
            started = time.perf_counter()
            subprocess.run([str(cli), "replay", "--help"], check=True, capture_output=True)
            starts.append(time.perf_counter() - started)
        assert len(out.read_text().splitlines()) == rows + 1
    wall, start = min(walls), min(starts)
    print(f"citywatch replay (subprocess, {rows:,}-row CSV): {wall:.2f} s wall = {rows / wall:,.0f} rows/s end to end; "
          f"interpreter start and imports {start:.2f} s, so {rows / max(wall - start, 1e-9):,.0f} rows/s of replay")


def costs(pipeline: Pipeline) -> None:
    sizes = sorted(len(pipeline.codec.encode(record)) for record in pipeline.records.values())
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
    parser.add_argument("--generic-only", action="store_true", help="only the generic detector's sections")
    args = parser.parse_args()
    if args.generic_only:
        print("== generic detector (replay without a kind), NAB scoring (0 = never alerts, 100 = perfect)")
        print_generic()
        print("\n== generic detector speed")
        generic_speed()
        return
    started = time.perf_counter()
    rows, pipeline, count = run_scenarios(args.devices, args.days, args.seed)
    print(f"== kind scenarios: {args.devices} simulated devices, {args.days:g} days, {count:,} messages "
          f"({time.perf_counter() - started:.0f} s)")
    print_scenarios(rows)
    if not args.skip_generic:
        print("\n== generic detector (replay without a kind), NAB scoring (0 = never alerts, 100 = perfect)")
        print_generic()
        print("\n== generic detector speed")
        generic_speed()
    if not args.skip_costs:
        print("\n== costs")
        costs(pipeline)


if __name__ == "__main__":
    main()
