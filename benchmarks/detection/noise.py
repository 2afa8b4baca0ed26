"""What sensitivity costs where nothing happens: alerts of the generic detector on pure noise.

    python -m benchmarks.detection.noise '{}' '{"threshold": 4.0}' ...

Each argument is a JSON object of GenericDetector keyword arguments (`{}`: the defaults). Per
variant and noise kind, the mean number of alerts on ten 30-day series of 1-minute rows (43,200
rows each, seeds 0-9). Every one of them is a false alarm. The labelled corpus (`variants`) scores
a variant by windows found and false alarms paid; it rewards sensitivity, and issue 20's eighth
round found every gain it offered was bought here. Read the two side by side.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.detection.nab_like import _ar1
from citywatch.detectors.generic import GenericDetector

T0 = 1_420_070_400.0  # 2015-01-01 00:00 UTC
ROWS = 43_200  # 30 days of 1-minute rows
SEEDS = range(10)


KINDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "gaussian": lambda rng, n: rng.normal(0.0, 1.0, n),
    "student_t3": lambda rng, n: rng.standard_t(3, n),  # heavy tails: about 1 row in 500 beyond 6 sd
    "poisson_3": lambda rng, n: rng.poisson(3.0, n).astype(float),  # counts, read through their square root
    "random_walk": lambda rng, n: np.cumsum(rng.normal(0.0, 0.05, n)) + rng.normal(0.0, 1.0, n),
    "ar_0.9": lambda rng, n: _ar1(n, 0.9, 1.0, rng),  # a slowly wandering sensor, unit innovations
}


def alerts_per_series(params: dict[str, Any], kind: str) -> float:
    """Mean alerts of GenericDetector(**params) over the ten series of `kind`."""
    stamps = (T0 + 60.0 * np.arange(ROWS)).tolist()
    total = 0
    for seed in SEEDS:
        values = KINDS[kind](np.random.default_rng(seed), ROWS)
        decided, _ = GenericDetector(**params).run(values.tolist(), stamps)
        total += sum(decided)
    return total / len(SEEDS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="*", default=["{}"], help="JSON objects of keyword arguments")
    args = parser.parse_args()
    print(f"alerts per 30-day series of 1-minute rows ({ROWS:,} rows), mean of {len(SEEDS)} seeds")
    print(f"{'variant':40s} " + " ".join(f"{kind:>12s}" for kind in KINDS))
    for text in args.variants:
        params = json.loads(text)
        print(f"{text[:40]:40s} " + " ".join(f"{alerts_per_series(params, kind):12.1f}" for kind in KINDS), flush=True)


if __name__ == "__main__":
    main()
