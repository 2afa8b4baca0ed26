"""All performance figures in one command: python benchmarks/run.py [--quick]

(a) core msg/s on one core; (b) end to end through Mosquitto vs the bare broker ceiling, QoS 0
and 1; (c) publish-to-webhook latency; (d)+(f) RSS per device and core msg/s from 1k to 100k (or
1M with --full) devices; (e) replay rows/s. Each script prints its own table; references are
measured in the same run as the figure they qualify.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller runs (a minute or two)")
    parser.add_argument("--full", action="store_true", help="include 1M devices in the cost curve")
    args = parser.parse_args()
    sizes = "1000,10000,100000,1000000" if args.full else "1000,10000,100000"
    runs = [
        ["core.py", "--devices", "100000", "--messages", "100000" if args.quick else "300000"],
        ["memory.py", "--sizes", "1000,10000" if args.quick else sizes],
        ["replay_rate.py", "--rows", "50000" if args.quick else "200000"],
        ["e2e.py", "--messages", "20000" if args.quick else "100000",
         "--latency-samples", "300" if args.quick else "2000"],
    ]
    for script, *rest in runs:
        print(f"== {script} {' '.join(rest)}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *rest], check=True)


if __name__ == "__main__":
    main()
