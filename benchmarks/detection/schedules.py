"""False alarms of the generic detector on series with no anomaly whose daily pattern is exact or
nearly so: a pump or a light on a timer (a square wave), a ramped schedule (trapezoids), a smooth day
(a sine), a flat line. Real IoT has such series, and so do the public benchmark's artificial ones.
Issue 20's sixth round found that a sharp daily edge at 5-minute rows alerts day after day: the
season is 24 hourly buckets read linearly between their centres, so an edge between two rows is
smeared over an hour and the rows beside it are surprising every day (with noise, about every other
day). The noise-free square wave's daily alert had another cause, found in the seventh round: its
first 94 rows after being taken for counts were one value, and the detector learned nothing after
them (a series that starts flat now starts afresh at its first change: 12 alerts, now 0).

    python -m benchmarks.detection.schedules

Prints the alerts after the probationary period (15%, at most 750 rows) of 4,032 rows (14 days at
5 minutes), per shape and noise level, and the noise-free shapes at 1 minute and 1 hour too.
"""

from __future__ import annotations

import math

import numpy as np

from citywatch.detectors.generic import GenericDetector

T0 = 1_420_070_400.0 + 3 * 3600.0  # a Thursday, 03:00 UTC
ROWS = 4032


def shape(name: str, hours: np.ndarray) -> np.ndarray:
    """One day's pattern by the hour of day, between 20 and 80."""
    if name == "square":  # on at midnight, off at noon: edges between two rows
        return np.where(hours < 12, 80.0, 20.0)
    if name == "ramp 1 h":
        return 20 + 60 * np.clip(np.minimum(hours - 6, 18 - hours), 0, 1)
    if name == "ramp 3 h":
        return 20 + 60 * np.clip(np.minimum(hours - 6, 18 - hours) / 3, 0, 1)
    if name == "sine":
        return 50 + 30 * np.sin(2 * math.pi * hours / 24)
    return np.full(len(hours), 42.0)  # flat


def false_alarms(step: float, name: str, sd: float, seed: int = 0) -> int:
    ts = T0 + step * np.arange(ROWS)
    values = shape(name, (ts % 86400) / 3600)
    if sd:
        values = values + np.random.default_rng(seed).normal(0, sd, ROWS)
    alerts, _ = GenericDetector().run(values.tolist(), ts.tolist())
    probation = min(int(0.15 * ROWS), 750)
    return sum(alerts[probation:])


def main() -> None:
    shapes = ("square", "ramp 1 h", "ramp 3 h", "sine", "flat")
    print(f"alerts after probation on {ROWS:,} rows without an anomaly (lower is better; 0 is right)")
    print("5-minute rows, by noise sd (the pattern spans 20..80):")
    for sd in (0.0, 0.5, 2.0, 5.0):
        print(f"  sd {sd:3.1f}: " + ", ".join(f"{name} {false_alarms(300.0, name, sd)}" for name in shapes))
    for step, label in ((60.0, "1-minute"), (3600.0, "1-hour")):
        print(f"{label} rows, no noise: " + ", ".join(f"{name} {false_alarms(step, name, 0.0)}" for name in shapes))


if __name__ == "__main__":
    main()
