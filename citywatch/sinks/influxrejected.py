"""`<data_dir>/influx-rejected/`: lines InfluxDB refused, or whose time it cannot hold, kept for a
person and sent again by `citywatch influx replay-rejected`.

Each set-aside is two files named alike: `<seq>.lp` (the lines, line protocol) and `<seq>.err`
(`line N: reason`, one per line of the .lp). Both are written to a temporary name and renamed, so a
replay running beside the sink never reads half a file. The directory is capped
(`influx.rejected_max_mb`): past it, lines are dropped with an error in the log, counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from citywatch.sinks.influxwrite import RETRY, InfluxWriter, in_range

log = logging.getLogger(__name__)

SUFFIX = ".lp"
OUT_OF_RANGE = "timestamp outside InfluxDB's range (1677-09-21 .. 2262-04-11): never sent"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _err_text(lines: list[tuple[bytes, str]]) -> bytes:
    return "".join(f"line {n}: {why}\n" for n, (_, why) in enumerate(lines, 1)).encode("utf-8", "replace")


class RejectedDir:
    """Thread-safe: the sender and the producer side both set lines aside."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._bytes: int | None = None  # running total; rescanned when it says full (a replay may have freed room)

    def _size(self) -> int:
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat().st_size
        return total

    def keep(self, seq: int, lines: list[tuple[bytes, str]]) -> bool:
        """Set lines aside with their reasons; False (and nothing written) if the cap is reached."""
        if not lines:
            return True
        data = b"".join(line + b"\n" for line, _ in lines)
        err = _err_text(lines)
        with self._lock:
            if self._bytes is None or self._bytes + len(data) + len(err) > self.max_bytes:
                self._bytes = self._size()
            if self._bytes + len(data) + len(err) > self.max_bytes:
                return False
            self.root.mkdir(parents=True, exist_ok=True)
            name, n = f"{seq:020d}", 0
            while (self.root / (name + SUFFIX)).exists():
                n += 1
                name = f"{seq:020d}-{n}"
            _atomic_write(self.root / (name + ".err"), err)
            _atomic_write(self.root / (name + SUFFIX), data)
            self._bytes += len(data) + len(err)
        return True


# -- replay (the CLI) -----------------------------------------------------------------------------

@dataclass
class ReplayReport:
    files: int = 0
    files_done: int = 0  # every line written: both files removed
    lines: int = 0
    written: int = 0
    still_failing: dict[str, int] = field(default_factory=dict)  # reason -> lines
    unreachable: str | None = None  # InfluxDB did not answer: replay stopped there, files left as they were

    @property
    def failing(self) -> int:
        return sum(self.still_failing.values())


def rejected_files(root: Path) -> list[Path]:
    return sorted(root.glob("*" + SUFFIX)) if root.is_dir() else []


def replay(root: Path, writer: InfluxWriter | None) -> ReplayReport:
    """Send every set-aside file again (`writer` None: a dry run that only counts). A file whose
    lines are all written is removed; one with lines still refused keeps only those, with the new
    reasons. Lines outside InfluxDB's time range are kept without sending."""
    report = ReplayReport()
    for path in rejected_files(root):
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:  # another replay took it
            continue
        lines = [line for line in lines if line.strip()]
        report.files += 1
        report.lines += len(lines)
        aside = [(line, OUT_OF_RANGE) for line in lines if not in_range(line)]
        sendable = [line for line in lines if in_range(line)]
        if writer is None:
            for _, why in aside:
                report.still_failing[why] = report.still_failing.get(why, 0) + 1
            continue
        failing = list(aside)
        if sendable:
            result = writer.write(b"".join(line + b"\n" for line in sendable))
            if result.outcome == RETRY:
                report.unreachable = result.reason
                break
            report.written += result.written
            failing += result.rejected
        for _, why in failing:
            report.still_failing[why] = report.still_failing.get(why, 0) + 1
        err = path.with_suffix(".err")
        if failing:
            _atomic_write(err, _err_text(failing))
            _atomic_write(path, b"".join(line + b"\n" for line, _ in failing))
        else:
            path.unlink()
            err.unlink(missing_ok=True)
            report.files_done += 1
    return report
