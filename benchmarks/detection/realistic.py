"""Score a generic detector on the realistic corpus (benchmarks/detection/corpus.py) the NAB way.

Two figures per detector and split: the normalised score of its own decisions (`is_alert`), and
the best score a single global threshold on its `anomaly_score` reaches (every row at or above
the threshold is a detection, as NAB counts them), with that threshold. 0 is the null detector
(never alerts), 100 is perfect.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.detection.nab_like import A_FN, A_TP, Series, score_series


@dataclass
class Run:
    """One detector's output per series, and its speed."""

    alerts: list[np.ndarray]
    scores: list[np.ndarray]
    rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else float("inf")


def run(factory: Callable[[], Any], corpus: Sequence[Series]) -> Run:
    """A fresh detector per series; `process(value, ts)` per row, timed."""
    alerts, scores = [], []
    rows, seconds = 0, 0.0
    for s in corpus:
        detector = factory()
        process = detector.process
        values, ts = s.values.tolist(), s.ts.tolist()
        out_a, out_s = [], []
        started = time.perf_counter()
        for v, t in zip(values, ts, strict=True):
            a, sc = process(v, t)
            out_a.append(a)
            out_s.append(sc)
        seconds += time.perf_counter() - started
        rows += len(values)
        alerts.append(np.asarray(out_a, dtype=bool))
        scores.append(np.asarray(out_s, dtype=float))
    return Run(alerts, scores, rows, seconds)


@dataclass
class Score:
    score: float
    detected: int
    windows: int
    false_alarms: int
    per_series: list[tuple[str, float, int, int, int]]


def nab(corpus: Sequence[Series], alerts: Sequence[np.ndarray]) -> Score:
    total = null = perfect = 0.0
    hit = wins = fps = 0
    rows = []
    for s, a in zip(corpus, alerts, strict=True):
        raw, h, w, f = score_series(s, a)
        total += raw
        null += A_FN * w
        perfect += A_TP * w
        hit, wins, fps = hit + h, wins + w, fps + f
        rows.append((s.name, raw, h, w, f))
    return Score(100.0 * (total - null) / (perfect - null), hit, wins, fps, rows)


def best_threshold(corpus: Sequence[Series], scores: Sequence[np.ndarray],
                   thresholds: Sequence[float] | None = None) -> tuple[float, Score]:
    """The global threshold on the scores that scores best (and its Score)."""
    if thresholds is None:
        pooled = np.concatenate(scores)
        qs = np.concatenate([np.linspace(0.9, 0.999, 45), np.linspace(0.999, 0.99999, 40)])
        thresholds = sorted(set(np.quantile(pooled, qs).tolist()) | {0.5})
    best: tuple[float, Score] | None = None
    for th in thresholds:
        result = nab(corpus, [sc >= th for sc in scores])
        if best is None or result.score > best[1].score:
            best = (th, result)
    assert best is not None
    return best


def per_family(corpus: Sequence[Series], alerts: Sequence[np.ndarray]) -> str:
    """Windows detected / labelled and false alarms per family (a series' name less its number)."""
    totals: dict[str, list[int]] = {}
    for s, a in zip(corpus, alerts, strict=True):
        _, hit, wins, fps = score_series(s, a)
        t = totals.setdefault(s.name.rsplit("_", 1)[0], [0, 0, 0])
        t[0], t[1], t[2] = t[0] + hit, t[1] + wins, t[2] + fps
    return ", ".join(f"{name} {h}/{w} {f} FP" for name, (h, w, f) in totals.items())


def report(name: str, corpus: Sequence[Series], result: Run) -> dict[str, float]:
    own = nab(corpus, result.alerts)
    th, swept = best_threshold(corpus, result.scores)
    at_half = nab(corpus, [sc >= 0.5 for sc in result.scores])
    print(f"  {name:34s} is_alert {own.score:6.1f} ({own.detected}/{own.windows} windows, {own.false_alarms} FP)"
          f" | best threshold {swept.score:6.1f} at {th:.4f} | score>=0.5 {at_half.score:6.1f}"
          f" | {result.rows_per_s:,.0f} rows/s")
    return {"is_alert": own.score, "best": swept.score, "threshold": th, "at_half": at_half.score,
            "rows_per_s": result.rows_per_s}
