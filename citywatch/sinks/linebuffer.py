"""A bounded, durable FIFO of line-protocol batches on disk, for while InfluxDB is unreachable.

Segments are append-only files named by the sequence number of their first batch
(`00000000000000000042.lp`), so replay order survives restarts. Every write is fsync'd before
it returns; a segment is deleted only after the caller has delivered it. A torn tail left by a
crash mid-append is cut back to the last complete line when the buffer is reopened.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
SUFFIX = ".lp"


@dataclass
class Segment:
    seq: int
    path: Path
    size: int  # bytes
    lines: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BufferFull(Exception):
    """The disk buffer is at its configured cap."""


class LineBuffer:
    """Thread-safe; appends go to the newest (open) segment until it holds `segment_lines` lines."""

    def __init__(self, root: Path, max_bytes: int, segment_lines: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.segment_lines = segment_lines
        self._lock = threading.Lock()
        self._segments: dict[int, Segment] = {}
        self._order: list[int] = []
        self._open: int | None = None  # seq of the segment that still takes appends
        self.bytes = 0
        self.lines = 0
        root.mkdir(parents=True, exist_ok=True)
        for path in sorted(root.glob("*" + SUFFIX)):
            if path.stem.isdigit():
                self._recover(int(path.stem), path)

    def _recover(self, seq: int, path: Path) -> None:
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # crash mid-append: the partial line was never acknowledged as buffered
            log.warning("influx buffer: cutting a torn tail of %d bytes from %s", len(data) - end, path.name)
            os.truncate(path, end)
        if end == 0:
            path.unlink()
            return
        self._add(Segment(seq, path, end, data.count(b"\n", 0, end)))

    def _add(self, seg: Segment) -> None:
        self._segments[seg.seq] = seg
        bisect.insort(self._order, seg.seq)
        self.bytes += seg.size
        self.lines += seg.lines

    @property
    def segments(self) -> int:
        return len(self._order)

    @property
    def next_seq(self) -> int:
        return self._order[-1] + 1 if self._order else 1

    def append(self, seq: int, data: bytes, lines: int) -> None:
        """Durably store one batch (data ends with a newline); raises BufferFull or OSError, and the
        caller keeps the batch. The size check and the write share the lock: two writers cannot
        both squeeze past the cap."""
        with self._lock:
            if self.bytes + len(data) > self.max_bytes:
                raise BufferFull(f"{self.bytes + len(data)} bytes > {self.max_bytes}")
            seg = self._segments.get(self._open) if self._open is not None else None
            if seg is not None and seq > seg.seq and seg.lines + lines <= self.segment_lines:
                try:
                    self._write(seg.path, data, create=False)
                except OSError:
                    self._open = None  # no more appends to a file that may now hold a partial batch
                    with contextlib.suppress(OSError):
                        os.truncate(seg.path, seg.size)
                    raise
                seg.size += len(data)
                seg.lines += lines
                self.bytes += len(data)
                self.lines += lines
                return
            path = self.root / f"{seq:020d}{SUFFIX}"
            self._write(path, data, create=True)
            self._add(Segment(seq, path, len(data), lines))
            if seq == self._order[-1]:
                self._open = seq

    def _write(self, path: Path, data: bytes, create: bool) -> None:
        flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            if create:  # ours, half-written: gone, the caller keeps the batch
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        finally:
            os.close(fd)
        if create:
            _fsync_dir(self.root)

    def oldest(self) -> Segment | None:
        """The next segment to send; it stops taking appends from now on."""
        with self._lock:
            if not self._order:
                return None
            seq = self._order[0]
            if seq == self._open:
                self._open = None
            return self._segments[seq]

    def read(self, seg: Segment) -> bytes:
        with open(seg.path, "rb") as f:
            return f.read(seg.size)

    def _forget(self, seg: Segment) -> None:
        del self._segments[seg.seq]
        self._order.remove(seg.seq)
        self.bytes -= seg.size
        self.lines -= seg.lines

    def remove(self, seg: Segment) -> None:
        """Delivered: drop it for good."""
        with self._lock:
            self._forget(seg)
            seg.path.unlink(missing_ok=True)
