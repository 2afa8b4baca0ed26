"""(e) replay rows per second: `citywatch replay` over a generated series (generic and --kind gas).

Usage: python benchmarks/replay_rate.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import results  # noqa: E402
from citywatch.streams.replay import replay  # noqa: E402


def series(path: Path, rows: int, kind: str | None) -> None:
    rng = random.Random(1)
    t0 = 1_790_000_000
    with open(path, "w") as f:
        f.write("timestamp,value\n" if kind is None else "timestamp,lel_pct\n")
        for i in range(rows):
            value = 2 + math.sin(i / 288 * 2 * math.pi) + rng.gauss(0, 0.2)
            f.write(f"{t0 + 300 * i},{max(0.0, value):.3f}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--result", help="also write the figures to this JSON file (run.py)")
    args = parser.parse_args()
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in (None, "gas"):
            src, out = Path(tmp) / "in.csv", Path(tmp) / "out.csv"
            series(src, args.rows, kind)
            stats = replay(src, out, kind=kind)
            print(f"(e) replay {kind or 'generic':<8} {stats.rows:>9,} rows  {stats.rows_per_s:>10,.0f} rows/s")
            rates[kind or "generic"] = stats.rows_per_s
    results.save(args.result, **rates)


if __name__ == "__main__":
    main()
