"""Where the generic detector's missing points are: calibration or ranking (issue 20, fifth round).

    python -m benchmarks.detection.gap [--split tuning|selection|held-out] ['{json kwargs}']

Prints the split's score at one threshold (0.5: is_alert), at the best of a few thresholds per
family and per series (the last is hindsight: it knows where the windows are), and, for every
missed window, how many separate runs of rows of the same series outside every window (and outside
each window's wake, where a false alarm costs little) score at least as high as the window's best
row. A window beaten by no such run would be found by a lower threshold on its series alone; one
beaten by many needs a feature that ranks it higher, not a threshold.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from benchmarks.detection import corpus
from benchmarks.detection.nab_like import Series, score_series, windows
from benchmarks.detection.variants import SELECTION_SEEDS, load
from citywatch.detectors.generic import GenericDetector

THRESHOLDS = (0.40, 0.43, 0.46, 0.48, 0.50, 0.52, 0.54, 0.57, 0.60, 0.65)
SPLITS = {"tuning": corpus.TUNE_SEEDS, "selection": SELECTION_SEEDS, "held-out": (corpus.HELD_OUT_SEED,)}


def family(name: str) -> str:
    """`aws_cpu_3` -> `aws_cpu`: the corpus names each series after its family and a number."""
    head, _, tail = name.rpartition("_")
    return head if tail.isdigit() else name


def beaten_by(series: Series, alerts: np.ndarray, scores: np.ndarray) -> list[tuple[str, int]]:
    """(kind, ordinary runs scoring at least the window's best) for each window `alerts` missed."""
    n = len(scores)
    ordinary = np.ones(n, dtype=bool)
    ordinary[:int(min(0.15 * n, 750))] = False  # the probationary period is not scored
    spans = windows(series)
    for left, right in spans:
        ordinary[left:right + 1 + (right - left + 1)] = False  # the window and its wake
    out = []
    for (left, right), kind in zip(spans, series.kinds, strict=True):
        if alerts[left:right + 1].any():
            continue
        above = ordinary & (scores >= scores[left:right + 1].max())
        out.append((kind, int(above[0]) + int(np.sum(above[1:] & ~above[:-1]))))
    return out


def bucket(runs: int) -> str:
    return "0" if runs == 0 else "1-2" if runs <= 2 else "3-10" if runs <= 10 else ">10"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("params", nargs="?", default="{}", help="JSON keyword arguments of GenericDetector")
    parser.add_argument("--split", choices=tuple(SPLITS), default="tuning")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/citywatch-detection-corpus"))
    args = parser.parse_args()
    params = json.loads(args.params)
    series = load(SPLITS[args.split], args.cache)
    raws: list[np.ndarray] = []  # per series: raw NAB score at each threshold
    misses: dict[str, Counter[str]] = defaultdict(Counter)
    for s in series:
        alerts, scores = GenericDetector(**params).run(s.values.tolist(), s.ts.tolist())
        score_array = np.asarray(scores, dtype=float)
        raws.append(np.array([score_series(s, score_array >= th)[0] for th in THRESHOLDS]))
        for kind, runs in beaten_by(s, np.asarray(alerts, dtype=bool), score_array):
            misses[kind][bucket(runs)] += 1
    wins = sum(len(s.anomalies) for s in series)

    def normalised(raw: float) -> float:  # 0: never alerts (every window missed); 100: perfect
        return 100.0 * (raw + wins) / (2 * wins)

    at_half = THRESHOLDS.index(0.5)
    by_family: dict[str, list[np.ndarray]] = defaultdict(list)
    for s, r in zip(series, raws, strict=True):
        by_family[family(s.name)].append(r)
    print(f"{args.split}: {len(series)} series, {wins} windows, {len(by_family)} families")
    print(f"  one threshold (0.5, is_alert)   {normalised(sum(r[at_half] for r in raws)):6.2f}")
    per_family = sum(max(np.sum(v, axis=0)) for v in by_family.values())
    print(f"  one threshold per family         {normalised(per_family):6.2f}")
    print(f"  one threshold per series (hindsight) {normalised(sum(max(r) for r in raws)):6.2f}")
    total = Counter[str]()
    print("  missed windows, by how many ordinary runs of their own series score as high:")
    for kind, counts in sorted(misses.items()):
        total.update(counts)
        print(f"    {kind:10s} " + ", ".join(f"{b}: {counts[b]}" for b in ("0", "1-2", "3-10", ">10")))
    print("    all        " + ", ".join(f"{b}: {total[b]}" for b in ("0", "1-2", "3-10", ">10")))


if __name__ == "__main__":
    main()
