"""Score variants of the generic detector on the tuning split and the selection seeds, the way issue
20's rounds chose between designs (docs/detection.md): a change is kept only when it gains on both.
`--held-out` also scores the held-out seed (issue 20's fifth round measured every variant on it
too, and kept only what helped the tuning split and the held-out seed alike); `--fresh` scores ten
seeds that no choice was made on, to be read once a round (333-342 since the tenth round; 323-332
were the ninth's, 313-322 the eighth's, 303-312 the seventh's); `--read` scores the 19 seeds read
before the eighth round as one split (the eighth to tenth rounds chose on them all, and on alerts on
pure noise: `python -m benchmarks.detection.noise`).

    python -m benchmarks.detection.variants '{}' '{"a_fast": 0.2}' ...

Each argument is a JSON object of GenericDetector keyword arguments (`{}`: the defaults). The
corpus is generated once per seed and cached (pickle) in --cache, so a run of several variants
spends its time on the detector and the scoring. Per variant and split: the score of is_alert,
windows detected, false alarms, the best global threshold on anomaly_score, and per family.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.detection import corpus, realistic
from benchmarks.detection.nab_like import Series, windows
from citywatch.detectors.generic import GenericDetector

SELECTION_SEEDS = (106, 107, 108, 109)
# Seeds no design choice has seen, read once a round, after its changes were made, for the round's
# before and after: 303-312 from issue 20's seventh round (which had printed the held-out seed beside
# every variant), 313-322 from its eighth (which chose on all 19 seeds read before, `--read`), 323-332
# from its ninth (which chose on the same 19; 313-322 were read a third time at its end), 333-342
# from its tenth (which chose on the same 19 and on 20 new seeds, 343-362; read before and after).
FRESH_SEEDS = tuple(range(333, 343))
# Every seed read before the eighth round: the choices of that round were made on them together.
READ_SEEDS = (*corpus.TUNE_SEEDS, *SELECTION_SEEDS, corpus.HELD_OUT_SEED, *range(303, 313))


def load(seeds: tuple[int, ...], cache: Path) -> list[Series]:
    """The series of `seeds`, generated once and then read from `cache`."""
    out: list[Series] = []
    cache.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        path = cache / f"corpus_{seed}_v{corpus.VERSION}.pkl"  # a corpus fix must not read old pickles
        if path.exists():
            with open(path, "rb") as f:
                out.extend(pickle.load(f))  # noqa: S301 (our own cache)
        else:
            series = corpus.make_corpus(seed)
            with open(path, "wb") as f:
                pickle.dump(series, f)
            out.extend(series)
    return out


def per_kind(series: list[Series], alerts: list[np.ndarray]) -> str:
    """Windows detected / labelled per anomaly kind (the corpus records each anomaly's kind)."""
    totals: dict[str, list[int]] = {}
    for s, a in zip(series, alerts, strict=True):
        for (left, right), kind in zip(windows(s), s.kinds, strict=True):
            t = totals.setdefault(kind, [0, 0])
            t[0] += bool(a[left:right + 1].any())
            t[1] += 1
    return ", ".join(f"{kind} {h}/{w}" for kind, (h, w) in sorted(totals.items()))


def evaluate(series: list[Series], params: dict[str, Any]) -> dict[str, Any]:
    """is_alert and best-threshold scores of GenericDetector(**params), a fresh one per series."""
    alerts, scores = [], []
    started = time.process_time()
    for s in series:
        detector = GenericDetector(**params)
        a, sc = detector.run(s.values.tolist(), s.ts.tolist())
        alerts.append(np.asarray(a, dtype=bool))
        scores.append(np.asarray(sc, dtype=float))
    cpu = time.process_time() - started
    own = realistic.nab(series, alerts)
    th, best = realistic.best_threshold(series, scores)
    return {"score": own.score, "detected": own.detected, "windows": own.windows, "fp": own.false_alarms,
            "best": best.score, "threshold": th, "families": realistic.per_family(series, alerts),
            "kinds": per_kind(series, alerts),
            "rows_per_cpu_s": sum(len(s.values) for s in series) / cpu}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="*", default=["{}"], help="JSON objects of keyword arguments")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/citywatch-detection-corpus"))
    parser.add_argument("--families", action="store_true", help="also print the per-family counts")
    parser.add_argument("--only", choices=("tuning", "selection", "held-out"), default=None)
    parser.add_argument("--held-out", action="store_true", help="also score the held-out seed")
    parser.add_argument("--fresh", action="store_true",
                        help=f"score only the fresh seeds {FRESH_SEEDS[0]}-{FRESH_SEEDS[-1]} (read once a round)")
    parser.add_argument("--read", action="store_true", help="score only the 19 seeds read before, as one split")
    args = parser.parse_args()
    splits: dict[str, tuple[int, ...]] = {"tuning": corpus.TUNE_SEEDS, "selection": SELECTION_SEEDS}
    if args.held_out or args.only == "held-out":
        splits["held-out"] = (corpus.HELD_OUT_SEED,)
    if args.only:
        splits = {args.only: splits[args.only]}
    if args.fresh:
        splits = {"fresh": FRESH_SEEDS}
    if args.read:
        splits = {"read": READ_SEEDS}
    data = {name: load(seeds, args.cache) for name, seeds in splits.items()}
    for text in args.variants:
        params = json.loads(text)
        line = [f"{text:40s}"]
        for name, series in data.items():
            r = evaluate(series, params)
            line.append(f"{name} {r['score']:6.2f} ({r['detected']}/{r['windows']}, {r['fp']} FP; best "
                        f"{r['best']:.2f} at {r['threshold']:.4f})")
            if args.families:
                line.append(f"\n    {name}: {r['families']}\n    {r['kinds']}\n   ")
        print(" | ".join(line), f"| {r['rows_per_cpu_s']:,.0f} rows/cpu-s", flush=True)


if __name__ == "__main__":
    main()
