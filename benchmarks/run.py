"""All performance figures in one command: python benchmarks/run.py [--quick] [--full] [--headline]

(a) core msg/s on one core; (b) end to end through Mosquitto vs the bare broker ceiling, QoS 0
and 1; (c) publish-to-webhook latency; (d)+(f) RSS per device and core msg/s from 1k to 100k (or
1M with --full) devices; (e) replay rows/s; (g) with --headline, 1M devices once a minute for 10
minutes through Mosquitto (about 15 minutes more). Each script prints its own figures as it goes;
references are measured in the same run as the figure they qualify. A table with the targets of
issue 8 closes the run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from citywatch.native import describe  # noqa: E402


def run(script: str, *args: str, result: Path) -> dict[str, Any]:
    print(f"\n== {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args, "--result", str(result)], check=True)
    return json.loads(result.read_text()) if result.exists() else {}


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller runs (a few minutes)")
    parser.add_argument("--full", action="store_true", help="include 1M devices in the cost curve")
    parser.add_argument("--headline", action="store_true", help="also run (g): 1M devices for 10 minutes")
    args = parser.parse_args()
    sizes = "1000,10000,100000,1000000" if args.full else ("1000,10000" if args.quick else "1000,10000,100000")
    print(f"hot path: {describe()}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        core = run("core.py", "--devices", "100000", "--messages", "100000" if args.quick else "300000",
                   result=out / "core.json")
        memory = run("memory.py", "--sizes", sizes, result=out / "memory.json")
        replay = run("replay_rate.py", "--rows", "50000" if args.quick else "200000", result=out / "replay.json")
        e2e = run("e2e.py", "--messages", "20000" if args.quick else "100000",
                  "--latency-samples", "300" if args.quick else "2000", result=out / "e2e.json")
        if args.headline:
            print("\n== headline.py --devices 1000000 --minutes 10", flush=True)
            subprocess.run([sys.executable, str(HERE / "headline.py"), "--devices", "1000000", "--minutes", "10"],
                           check=True)

    per_device = memory["warm_state"] + memory["registry"]
    qos0_ratio = e2e["qos0"] / e2e["qos0_ceiling"]
    rows = [
        ("(a) core, 100k devices, steady", f"{core['steady']:,.0f} msg/s", "100,000", core["steady"] / 100_000,
         verdict(core["steady"] >= 100_000)),
        ("(a) core, 100k devices, first readings", f"{core['cold']:,.0f} msg/s", "", core["cold"] / 100_000, ""),
        ("(b) QoS 0 end to end / bare broker", f"{e2e['qos0']:,.0f} / {e2e['qos0_ceiling']:,.0f} msg/s",
         "ratio 0.80", qos0_ratio, verdict(qos0_ratio >= 0.8)),
        ("(b) QoS 1 end to end / bare broker", f"{e2e['qos1']:,.0f} / {e2e['qos1_ceiling']:,.0f} msg/s",
         "5,000 msg/s", e2e["qos1"] / e2e["qos1_ceiling"], verdict(e2e["qos1"] >= 5000)),
        (f"(c) latency amid {e2e['latency_rate']:,.0f} msg/s",
         f"p50 {e2e['p50_ms']:.1f} ms, p99 {e2e['p99_ms']:.1f} ms", "p99 < 50 ms",
         e2e["p99_ms"] / 50, verdict(e2e["p99_ms"] < 50)),
        ("(d) per device: registry + warm state", f"{per_device:,.0f} B", "2,048 B", per_device / 2048,
         verdict(per_device <= 2048)),
        *[(f"(d/f) {r['devices']:,} devices after {r['msgs'] // r['devices']} readings",
           f"{r['msg_per_s']:,.0f} msg/s, {r['rss_mb']:,.0f} MiB ({r['rss0_mb']:,.0f} with 0 states)", "", None, "")
          for r in memory["rows"]],
        ("(e) replay, generic", f"{replay['generic']:,.0f} rows/s", "100,000", replay["generic"] / 100_000,
         verdict(replay["generic"] >= 100_000)),
        ("(e) replay, --kind gas", f"{replay['gas']:,.0f} rows/s", "100,000", replay["gas"] / 100_000,
         verdict(replay["gas"] >= 100_000)),
    ]
    print(f"\n{'figure':<46}{'measured':<44}{'target':<14}{'ratio':>7}  status")
    for name, value, target, ratio, status in rows:
        print(f"{name:<46}{value:<44}{target:<14}{'' if ratio is None else f'{ratio:.2f}':>7}  {status}")


if __name__ == "__main__":
    main()
