"""Synthetic NAB-like labelled series and a NAB-style scorer, to sanity-check the generic detector.

The series imitate the families of the public benchmark (server metrics, road traffic, ad
clicks, social-media volume, machine temperature, artificial ones with and without anomalies):
level shifts, spikes, drifts, daily rhythms with an anomalous day, variance changes, dense
spikes, irregular timestamps with gaps, and five series with no anomaly at all. They are made
here (seeded), not downloaded: their scores are indicative only.

Scoring follows NAB's standard profile: windows of 10% of the series' length split among its
anomalies, centred on each; the first detection in a window earns 2/(1+e^(5y))-1 (y from -1 at
the window's start to 0 at its end, normalised so the earliest is 1); a window with no
detection costs 1; a detection outside windows costs 0.11 (less just after a window); nothing
in the probationary period (the first 15%, at most 750 rows) counts. The final score is
100 * (raw - null) / (perfect - null) over all series.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

A_TP, A_FP, A_FN = 1.0, -0.11, -1.0
STEP = 300.0  # five-minute rows
T0 = 1_396_310_400.0  # 2014-04-01 00:00 UTC


@dataclass
class Series:
    name: str
    ts: np.ndarray
    values: np.ndarray
    anomalies: list[int]  # row indices of the labelled anomalies
    kinds: list[str] = field(default_factory=list)  # what each anomaly is (when known)


def _daily(n: int, period: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n)
    return np.sin(2 * np.pi * t / period - math.pi / 2)


def _ts(n: int, step: float = STEP, rng: np.random.Generator | None = None, gaps: bool = False) -> np.ndarray:
    deltas = np.full(n, step)
    if rng is not None and gaps:
        deltas *= rng.uniform(0.8, 1.2, n)
        for _ in range(8):
            deltas[rng.integers(1, n)] *= rng.integers(5, 40)
    return T0 + np.cumsum(deltas) - deltas[0]


def _ar1(n: int, phi: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    e = rng.normal(0, sigma, n)
    out = np.empty(n)
    acc = 0.0
    for i in range(n):
        acc = phi * acc + e[i]
        out[i] = acc
    return out


def make_corpus(seed: int = 7) -> list[Series]:
    rng = np.random.default_rng(seed)
    out: list[Series] = []

    def add(name: str, values: np.ndarray, anomalies: list[int], gaps: bool = False, step: float = STEP) -> None:
        out.append(Series(name, _ts(len(values), step, rng, gaps), values.astype(float), anomalies))

    n = 4032
    day = 288
    # artificial with anomalies
    base = np.where(_daily(n, day, rng) > 0, 80.0, 20.0) + rng.normal(0, 2, n)
    v = base.copy()
    v[2900:2900 + 144] += 40  # the plateau goes higher for half a day
    add("art_daily_jumpsup", v, [2900])
    v = base.copy()
    v[3100:3100 + 144] -= 35  # the plateau sags for half a day
    add("art_daily_jumpsdown", v, [3100])
    v = 50 + 30 * _daily(n, day, rng) + rng.normal(0, 1.5, n)
    v[2600:2750] = 50 + rng.normal(0, 1.5, 150)  # the rhythm flattens
    add("art_daily_flatmiddle", v, [2600])
    v = 20 + rng.normal(0, 1, n)
    spikes = list(range(700, 2800, 300)) + list(range(2900, 3300, 25))
    for i in spikes:
        v[i] += 60
    add("art_increase_spike_density", v, [2900])
    v = 30 + 5 * _daily(n, day, rng) + rng.normal(0, 1, n)
    v[1800] += 45
    v[3300:3310] += 25
    add("art_load_balancer_spikes", v, [1800, 3300])
    # server metrics
    v = 40 + _ar1(n, 0.6, 2.0, rng) + (rng.random(n) < 0.01) * rng.uniform(5, 15, n)
    v[2500:2600] += 35
    add("aws_cpu_sustained_high", v, [2500])
    v = np.exp(rng.normal(math.log(40), 0.15, n))
    v[2200:] *= 2.0
    add("ec2_latency_level_shift", v, [2200])
    v = 0.1 + rng.exponential(0.05, n)
    v[1500] = 3.0
    v[3400] = 2.5
    add("aws_disk_write_spikes", v, [1500, 3400])
    v = 55 + _ar1(n, 0.95, 0.5, rng)
    v[2000:2200] += np.linspace(0, -18, 200)  # drift down towards a failure ...
    v[2200:2260] = 20 + rng.normal(0, 1, 60)  # ... and the failure
    v[2260:] += 0
    v[3500:3520] = 10 + rng.normal(0, 1, 20)
    add("machine_temperature_failure", v, [2150, 3500], gaps=True)
    v = 12 + _ar1(n, 0.5, 1.0, rng)
    v[2800:] += rng.normal(0, 4.0, n - 2800)  # variance grows
    add("rogue_agent_variance", v, [2800])
    # social media volume (counts with a rhythm and heavy-tailed bursts)
    lam = 30 + 20 * _daily(n, day, rng)
    counts = rng.poisson(lam) + (rng.random(n) < 0.02) * rng.poisson(40, n)
    counts[3000:3012] += rng.poisson(400, 12)
    add("tweets_burst", counts.astype(float), [3000])
    # taxi-like: half-hourly, daily + weekly rhythm, an anomalous low day
    m = 4320
    t = np.arange(m)
    lam = 15000 + 8000 * np.sin(2 * np.pi * t / 48 - 2) + 2000 * np.sin(2 * np.pi * t / 336)
    v = lam + rng.normal(0, 600, m)
    v[3000:3048] *= 0.45  # a holiday
    v[3900] += 12000  # a marathon-like spike
    add("nyc_taxi_like", v, [3000, 3900], step=1800.0)
    # road traffic: irregular timestamps, speed drops
    v = 62 + rng.normal(0, 4, n) - 15 * (rng.random(n) < 0.01)
    v[1900:1930] = 18 + rng.normal(0, 3, 30)
    v[3600:3640] = 25 + rng.normal(0, 3, 40)
    add("traffic_speed_drops", v, [1900, 3600], gaps=True)
    v = 8 + np.abs(rng.normal(0, 3, n)) + 10 * (rng.random(n) < 0.02)
    v[2400:2460] += 40
    add("traffic_occupancy_jam", v, [2400], gaps=True)
    # ad clicks: hourly, short
    k = 1600
    v = 0.3 + 0.05 * np.sin(2 * np.pi * np.arange(k) / 24) + rng.normal(0, 0.03, k)
    v[900] += 0.5
    v[1300:1310] += 0.25
    add("adexchange_cpc", v, [900, 1300], step=3600.0)
    v = rng.gamma(2.0, 0.5, k) + 1
    v[1100:1105] += 12
    add("adexchange_cpm_spike", v, [1100], step=3600.0)
    # harder ones: anomalies near the noise, random walks, heavy tails, several of unequal size
    v = 30 + np.cumsum(rng.normal(0, 0.3, n))  # a wandering metric ...
    v[1700:1720] += 12  # ... with a short burst
    v[3300:] += 8  # ... and a lasting step
    add("rds_cpu_random_walk", v, [1700, 3300])
    v = np.exp(rng.normal(2.0, 0.6, n))  # heavy-tailed network bytes, normal bursts included
    v[2600:2700] = np.exp(rng.normal(3.6, 0.3, 100))
    add("ec2_network_in_heavy_tail", v, [2600])
    v = 40 + _ar1(n, 0.8, 1.5, rng)
    v[1200:] += np.clip((np.arange(n - 1200) - 0) * 0.01, 0, 10)  # a slow creep up by 10 ...
    v[3200:3230] += 18  # ... then a burst
    add("asg_misconfiguration_creep", v, [1250, 3200])
    v = 60 + 15 * _daily(n, day, rng) + rng.normal(0, 2, n)
    for a, size in ((1500, -20), (2300, 25), (3400, -12)):
        v[a:a + 30] += size
    add("machine_temp_three_events", v, [1500, 2300, 3400])
    v = 50 + 30 * _daily(n, day, rng) + rng.normal(0, 2, n)
    v[3000:3000 + 100] = v[3000 - day:3000 - day + 100][::-1]  # the day's shape runs backwards
    add("art_daily_shape_change", v, [3000])
    lam = 200 + 150 * _daily(n, day, rng)
    v = rng.poisson(lam).astype(float) * rng.lognormal(0, 0.2, n)
    v[2000:2050] *= 1.8
    add("tweets_moderate_surge", v, [2000], gaps=True)
    v = 5 + rng.normal(0, 0.5, n)
    v[::37] += 6  # a job every 37 rows
    v[2700] += 20
    add("cron_spikes_and_outlier", v, [2700])
    # no anomaly
    add("art_daily_no_noise", 50 + 30 * _daily(n, day, rng), [])
    add("art_daily_perfect_square_wave", np.where(_daily(n, day, rng) > 0, 80.0, 20.0), [])
    add("art_daily_small_noise", 50 + 30 * _daily(n, day, rng) + rng.normal(0, 1, n), [])
    add("art_flatline", np.full(n, 42.0), [])
    add("art_noisy", rng.normal(30, 5, n), [])
    add("art_noisy_heavy_tail", 30 + rng.standard_t(3, n) * 3, [])
    return out


def windows(series: Series) -> list[tuple[int, int]]:
    n = len(series.values)
    if not series.anomalies:
        return []
    width = int(0.10 * n / len(series.anomalies))
    return [(max(0, a - width // 2), min(n - 1, a + width // 2)) for a in series.anomalies]


def _scaled_sigmoid(y: float) -> float:
    return -1.0 if y > 3.0 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def score_series(series: Series, alerts: np.ndarray) -> tuple[float, int, int, int]:
    """(raw NAB score, windows detected, windows, false positives) for one series."""
    n = len(series.values)
    probation = int(min(math.floor(0.15 * n), 0.15 * 5000))
    wins = windows(series)
    max_tp = _scaled_sigmoid(-1.0)
    raw = 0.0
    detected = [False] * len(wins)
    fps = 0
    prev_right: int | None = None
    prev_width = 0
    win_i = 0
    for index in np.flatnonzero(alerts):
        i = int(index)
        while win_i < len(wins) and i > wins[win_i][1]:
            prev_right, prev_width = wins[win_i][1], wins[win_i][1] - wins[win_i][0] + 1
            win_i += 1
        if i < probation:
            continue
        if win_i < len(wins) and wins[win_i][0] <= i <= wins[win_i][1]:
            if not detected[win_i]:
                left, right = wins[win_i]
                width = right - left + 1
                raw += A_TP * _scaled_sigmoid(-(right - i + 1) / width) / max_tp
                detected[win_i] = True
            continue
        fps += 1
        if prev_right is None:
            raw += A_FP
        else:
            raw += -A_FP * _scaled_sigmoid(abs(prev_right - i) / max(prev_width - 1, 1))
    raw += A_FN * detected.count(False)
    return raw, sum(detected), len(wins), fps


def evaluate(run: Callable[[Series], np.ndarray], corpus: list[Series] | None = None) -> dict[str, object]:
    """Score a detector (series -> boolean alerts per row) over the corpus (default: seeds 7, 8, 9)."""
    corpus = corpus if corpus is not None else make_corpus(7) + make_corpus(8) + make_corpus(9)
    rows = []
    total = null = perfect = 0.0
    for s in corpus:
        alerts = run(s)
        raw, hit, wins, fps = score_series(s, alerts)
        total += raw
        null += A_FN * wins
        perfect += A_TP * wins
        rows.append((s.name, raw, hit, wins, fps))
    return {"score": 100.0 * (total - null) / (perfect - null), "rows": rows}
