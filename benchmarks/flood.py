"""Garbage flood (issue 17): tests/test_flood.py's scenario, longer, with the data dir's size over time.

One client publishes invalid payloads as fast as the broker takes them beside normal city traffic,
while gas detectors raise alarms; the data dir lives on a small tmpfs (root needed to mount it;
--no-tmpfs uses a plain temporary directory). Prints the data dir's size as it goes, then garbage
msg/s achieved, the largest data dir size, alarms delivered/sent and publish-to-webhook p50/p99.

    python benchmarks/flood.py --seconds 300 [--alarms 100] [--garbage-qos 0] [--tmpfs-mb 48] [--dead-letters-max-mb 8]

The data dir stays under: the live data + retention.dead_letters.max_mb + the WAL between checkpoints
(about 4 MB) + one retention interval of stored samples (total_per_s x interval_s rows).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.flood_scenario import FloodConfig, run_flood  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="how long the flood lasts")
    parser.add_argument("--alarms", type=int, default=100, help="gas alarms, evenly spread over the flood")
    parser.add_argument("--garbage-qos", type=int, default=1, choices=(0, 1),
                        help="1: as fast as the broker acknowledges; 0: as fast as the socket takes")
    parser.add_argument("--garbage-bytes", type=int, default=1200)
    parser.add_argument("--city-devices", type=int, default=300)
    parser.add_argument("--city-rate", type=float, default=200.0, help="normal messages per second")
    parser.add_argument("--tmpfs-mb", type=int, default=48)
    parser.add_argument("--no-tmpfs", action="store_true", help="do not mount a tmpfs (no root needed)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="how often the data dir size is printed")
    parser.add_argument("--dead-letters-max-mb", type=float, default=8.0,
                        help="retention.dead_letters.max_mb (the default 64 is for a real disk, not a 48 MB tmpfs)")
    args = parser.parse_args()
    cfg = FloodConfig(seconds=args.seconds, alarms=args.alarms, city_devices=args.city_devices,
                      city_rate=args.city_rate, garbage_bytes=args.garbage_bytes, garbage_qos=args.garbage_qos,
                      sample_s=args.sample_s, drain_timeout_s=120.0,
                      env={"CITYWATCH_RETENTION__DEAD_LETTERS__MAX_MB": str(args.dead_letters_max_mb)})
    with tempfile.TemporaryDirectory(prefix="citywatch-flood-") as tmp:
        mount = Path(tmp) / "small"
        mount.mkdir()
        mounted = False
        if not args.no_tmpfs:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.tmpfs_mb}m", "tmpfs", str(mount)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"cannot mount a tmpfs ({done.stderr.strip()}): run as root or use --no-tmpfs")
            mounted = True
        try:
            where = f"a {args.tmpfs_mb} MB tmpfs" if mounted else "disk"
            print(f"flooding for {cfg.seconds:.0f} s; data dir on {where}", flush=True)
            result = run_flood(mount, Path(tmp), cfg, log=lambda line: print(line, flush=True))
        finally:
            if mounted:
                subprocess.run(["umount", "-l", str(mount)], check=False)
    sizes = [b for _, b, _ in result.samples]
    print()
    print(f"garbage msg/s achieved      {result.garbage_rate:,.0f} ({result.garbage_sent} in {result.garbage_s:.0f} s)")
    last = sizes[-1] / 1e6 if sizes else 0.0
    print(f"data dir size, max          {max(sizes, default=0) / 1e6:.1f} MB (last {last:.1f} MB)")
    print(f"storage errors seen         {len(result.storage_errors)}")
    print(f"alarms delivered / sent     {len(result.latencies)} / {result.alarms_sent}")
    print(f"publish-to-webhook latency  p50 {result.percentile(0.5) * 1000:.0f} ms, p99 "
          f"{result.percentile(0.99) * 1000:.0f} ms")
    print(result.summary())


if __name__ == "__main__":
    main()
