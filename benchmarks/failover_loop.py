"""The failover integration test N times in a row, optionally beside processes that keep every core busy.

    python -m benchmarks.failover_loop [--runs 20] [--burn N] [--test NODEID]

`--burn N` starts N busy-loop processes (default: one per core) at normal priority for the whole
loop, so the brokers, the bridge, the workers and the sink compete for CPU as on a loaded host.
Each run is a fresh pytest process (fresh tansu, Mosquitto and receiver). Prints one line per run
(pass/fail, seconds, the test's own figures) and the pass count at the end; the logs of failed
runs are kept under the printed directory.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/test_faust_integration.py::test_two_workers_lose_one_and_every_transition_arrives_once"


def burn(stop: Any) -> None:
    """Pure CPU: arithmetic in a loop until told to stop."""
    x = 0
    while not stop.is_set():
        for i in range(200_000):
            x = (x * 31 + i) % 1_000_003


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--burn", type=int, default=os.cpu_count() or 2,
                        help="busy-loop processes beside the test (0: none)")
    parser.add_argument("--test", default=TEST)
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="cw-failover-loop-"))
    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=burn, args=(stop,), daemon=True) for _ in range(args.burn)]
    for p in burners:
        p.start()
    print(f"{args.runs} runs of {args.test} beside {args.burn} busy-loop process(es) on {os.cpu_count()} cores; "
          f"logs of failed runs in {logs}", flush=True)
    passed = late = 0
    durations = []
    try:
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-s", "-rs", "-p", "no:cacheprovider",
                                     args.test], cwd=ROOT, capture_output=True, text=True)
            seconds = time.monotonic() - started
            durations.append(seconds)
            ok = result.returncode == 0
            passed += ok
            skipped = ok and "kill landed after" in result.stdout  # too late to test a takeover of pending work
            late += skipped
            figures = next((line.strip() for line in result.stdout.splitlines()
                            if "transitions; groups joined" in line), "")
            if not ok:
                (logs / f"run-{run}.log").write_text(result.stdout + result.stderr)
            verdict = "pass (kill landed late: takeover of pending work not exercised)" if skipped else (
                "pass" if ok else "FAIL")
            print(f"run {run}: {verdict} in {seconds:.0f} s  {figures}", flush=True)
    finally:
        stop.set()
        for p in burners:
            p.join(5)
            if p.is_alive():
                p.terminate()
    print(f"passed {passed} of {args.runs}, {late} of them with the kill too late to test a takeover of pending "
          f"work (burn={args.burn}); run time min {min(durations):.0f} s, "
          f"max {max(durations):.0f} s", flush=True)
    sys.exit(0 if passed == args.runs else 1)


if __name__ == "__main__":
    main()
