"""`citywatch replay` end to end: the whole command's wall time, process start to exit (issue 20 item
4: at least 20,000 rows/s on a 5,000-row file, so at most 0.25 s).

Usage: python benchmarks/replay_cli.py [--rows 5000] [--runs 21] [--command "python -m citywatch"]

Writes a `timestamp,value` series (a daily rhythm with noise, 5-minute steps), runs one warm-up (it
fills the bytecode cache an installed package has, in a temporary directory, and the compiled message
catalog a user's second run has), then times `--runs` runs of the real
command in a directory with no config.yaml and prints the median (and min, max) wall time and rows/s.
Then one `python -X importtime` run of the same command lists what the process imported, by module
tree, costliest first: what to cut when the figure slips. Other processes on the machine move the
figure: the interpreter's bare start (`python -c pass`) is measured in the same run for reference,
and the CPU time (user + system) the command used is printed too, which load moves much less.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import results  # noqa: E402


def series(path: Path, rows: int) -> None:
    """The rows benchmarks/replay_rate.py replays (same rhythm, noise and seed)."""
    rng = random.Random(1)
    t0 = 1_790_000_000
    with open(path, "w") as f:
        f.write("timestamp,value\n")
        for i in range(rows):
            value = 2 + math.sin(i / 288 * 2 * math.pi) + rng.gauss(0, 0.2)
            f.write(f"{t0 + 300 * i},{max(0.0, value):.3f}\n")


def default_command() -> list[str]:
    """The installed console script beside this Python, else `python -m citywatch`."""
    script = Path(sys.executable).with_name("citywatch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "citywatch"]


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one run of `argv`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    return elapsed, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def imports(argv: list[str], cwd: Path, env: dict[str, str], top: int) -> list[tuple[int, str]]:
    """(cumulative microseconds, module) of the top-level imports of one run (`-X importtime`). The
    command module the CLI loads lazily (importlib.import_module, which -X importtime does not time)
    shows as its imports' own trees, not under its name."""
    script = argv[1:] if argv[0] == sys.executable else argv  # a console script runs under this Python
    done = subprocess.run([sys.executable, "-X", "importtime", *script], cwd=cwd, env=env,
                          capture_output=True, text=True, check=True)
    found = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and not line.startswith("import time: self"):
            _, cumulative, name = line.removeprefix("import time:").split("|")
            if not name.startswith("  "):  # top level: the costs of its own imports are inside
                found.append((int(cumulative), name.strip()))
    return sorted(found, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--command", default=None,
                        help='the citywatch command to time (default: the console script beside this Python), '
                             'e.g. "python -m citywatch"')
    parser.add_argument("--top", type=int, default=12, help="top-level imports to list")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="compile every module from source on every run (PYTHONDONTWRITEBYTECODE and no "
                             "__pycache__ of the source tree), instead of caching bytecode as an installed "
                             "package has it")
    parser.add_argument("--result", help="also write the figures to this JSON file (run.py)")
    args = parser.parse_args()
    command = shlex.split(args.command) if args.command else default_command()
    if command[0] == "python":
        command[0] = sys.executable
    env = {k: v for k, v in os.environ.items() if k not in ("CITYWATCH_CONFIG", "PYTHONDONTWRITEBYTECODE")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.no_bytecode_cache:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:  # bytecode kept in the temporary directory: the source tree is left as it is
            env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        series(work / "in.csv", args.rows)
        argv = [*command, "replay", "in.csv", "--out", "out.csv"]
        timed(argv, work, env)  # warm-up: bytecode and the compiled message catalog, as on a second run
        bare = statistics.median(timed([sys.executable, "-c", "pass"], work, env)[0] for _ in range(5))
        runs = [timed(argv, work, env) for _ in range(args.runs)]
        walls, cpus = [wall for wall, _ in runs], [cpu for _, cpu in runs]
        rows = len((work / "out.csv").read_text().splitlines()) - 1
        if rows != args.rows:
            raise SystemExit(f"the output has {rows} rows, not {args.rows}")
        top = imports(argv, work, env, args.top)
    median = statistics.median(walls)
    print(f"{shlex.join(argv)}  ({args.rows:,} rows, {args.runs} runs, "
          f"{'no bytecode cache' if args.no_bytecode_cache else 'bytecode cached'}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f})")
    print(f"  wall time: median {median * 1000:.0f} ms (min {min(walls) * 1000:.0f}, max {max(walls) * 1000:.0f}); "
          f"bare `python -c pass` {bare * 1000:.0f} ms")
    print(f"  end to end: {args.rows / median:,.0f} rows/s median (best {args.rows / min(walls):,.0f}); "
          f"target 20,000 rows/s")
    print(f"  CPU time (user + system; what an idle machine's wall time would be, nearly): median "
          f"{statistics.median(cpus) * 1000:.0f} ms, {args.rows / statistics.median(cpus):,.0f} rows/s")
    print("  top-level imports of one run (cumulative ms):")
    for micros, name in top:
        print(f"    {micros / 1000:7.1f}  {name}")
    results.save(args.result, median_s=median, min_s=min(walls), rows_per_s=args.rows / median,
                 cpu_s=statistics.median(cpus), bare_python_s=bare)


if __name__ == "__main__":
    main()
