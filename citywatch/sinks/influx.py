"""Pipeline output to InfluxDB as line protocol, with a durable disk buffer for outages.

Schema (precision ns; tags with an empty value are omitted; tag keys sorted):

* one measurement per kind: `gas`, `noise`, `water`, `parking`, `lock`
    tags   device, district, grid, kind, zone (the device's zone_class)
    fields as reported: lel_pct, co_ppm, laeq_db, lamax_db, depth_cm (float), occupied (bool),
           event, user (string); battery, rssi (float) and seq (int) when present
    time   reading.ts (event time)
* `alerts`, one point per alert transition
    tags   device, district, grid, kind, rule, severity, transition
    fields alert_id, status (string); opened_at (float, epoch s); lat, lon (float, the device's,
           when known); value (float when numeric, else value_text string); threshold (float);
           count (int); open (int, 1 until resolved); age_s (float, at - opened_at)
    time   transition.at
* `cases`, one point per finished case (its closed or resolved transition): the loop's figures
    tags   city, community, device, district, grid, kind, outcome, rule
    fields alert_id (string); time_to_close_s, time_to_ack_s, time_to_rectify_s (float, s from opening;
           the last two when the case has them); escalation_level, reopened, dispatched (int); 0/1
           ints only where they apply: within_review, within_response, closed_at_grid,
           reopened_after_rectification (definitions in citywatch.loop.cases)
    time   the closed or resolved transition
* `device_status`, device health: one point per online/offline announcement, and one per reading
  that reports battery and/or rssi
    tags   device, district, grid, kind
    fields online (bool) for announcements; battery, rssi (float) for readings; lat, lon (float)
           on both when the device has coordinates (the operators' map)
    time   when the announcement arrived; the reading's event time

Timestamps are rounded to the microsecond, so a re-sent point lands on the same (series, time)
and InfluxDB overwrites it instead of storing it twice. Tag values cannot carry backslashes or
line breaks reliably, so those become '/' and ' '.

Nothing good is lost for something bad: a batch InfluxDB refuses is isolated down to the lines it
refuses (influxwrite.py), which go to `<data_dir>/influx-rejected/` with the reason while the rest
is written; points whose time InfluxDB cannot store are never sent, they go there directly.
`citywatch influx replay-rejected` sends that directory again (influxrejected.py).
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any

from citywatch.config import InfluxSettings
from citywatch.errors import CitywatchError, ConfigError
from citywatch.sinks.influxrejected import OUT_OF_RANGE, RejectedDir
from citywatch.sinks.influxwrite import RETRY, InfluxWriter
from citywatch.sinks.linebuffer import BufferFull, LineBuffer, Segment
from citywatch.sinks.lineprotocol import lines_for, reading_line, status_line, transition_line

__all__ = ["InfluxBackpressure", "InfluxSink", "lines_for", "reading_line", "status_line", "transition_line"]

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.25
DISK_FULL_LOG_S = 60.0
BACKOFF_MAX_S = 5.0  # a down server costs one request per this; recovery is noticed within it
RETRY_AFTER_MAX_S = 60.0
MEMORY_BATCHES = 4  # add() blocks when this many batches' worth of lines wait in memory
QUEUED_BATCHES = 2  # batches waiting for the sender in memory; more go to disk (a slow server)

class InfluxBackpressure(CitywatchError):
    """add() waited `timeout` for room: memory and the disk buffer are full; try again later."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"InfluxDB buffer full; retry after {retry_after:g} s")
        self.retry_after = retry_after


class _Batch:
    __slots__ = ("seq", "data", "lines")

    def __init__(self, seq: int, data: bytes, lines: int) -> None:
        self.seq, self.data, self.lines = seq, data, lines


class InfluxSink:
    """Batches lines to InfluxDB from two threads; while it fails, batches wait on disk, in order.

    `cutter` cuts batches (batch_size lines or flush_interval_ms) and hands them to the sender
    in memory while all is well, or to the disk buffer while the server fails or lags. `sender`
    writes the oldest batch first (memory queue, then disk) and deletes it only once written.
    """

    def __init__(self, settings: InfluxSettings, data_dir: Path) -> None:
        if not settings.url:
            raise ConfigError("influx.url: required to write to InfluxDB")
        self.settings = settings
        self._batch_size = settings.batch_size
        self._interval = settings.flush_interval_ms / 1000
        self.rejected_dir = data_dir / "influx-rejected"
        self._rejected = RejectedDir(self.rejected_dir, settings.rejected_max_mb * 1024 * 1024)
        self._buffer = LineBuffer(data_dir / "influx-buffer", settings.buffer_max_mb * 1024 * 1024,
                                  settings.batch_size)
        self._writer = InfluxWriter(settings)
        self._lock = threading.Lock()
        self._cut_cv = threading.Condition(self._lock)  # cutter: lines arrived, flush, close, disk room
        self._send_cv = threading.Condition(self._lock)  # sender: a batch is ready, close
        self._done_cv = threading.Condition(self._lock)  # add()/flush(): memory or disk freed
        self._pending: list[str] = []
        self._pending_since = 0.0
        self._queue: collections.deque[_Batch] = collections.deque()
        self._mem_lines = 0
        self._mem_cap = MEMORY_BATCHES * settings.batch_size
        self._seq = max(self._buffer.next_seq, time.time_ns() // 1000)  # file names stay increasing
        self._flushing = 0
        self._closing = False
        self._failing = False
        self._retry_at = 0.0
        self._backoff = BACKOFF_INITIAL_S
        self._blocked = 0
        self._disk_full = False
        self._rng = random.Random()  # jitter; the global generator belongs to the application
        self._disk_full_logged = -DISK_FULL_LOG_S
        self._last_error: str | None = None
        self._last_warning = 0.0
        self._counts: collections.Counter[str] = collections.Counter()
        if self._buffer.lines:
            log.info("influx: %d lines buffered on disk by an earlier run go first", self._buffer.lines)
        self._threads = [threading.Thread(target=self._cut_loop, name="influx-cutter", daemon=True),
                         threading.Thread(target=self._send_loop, name="influx-sender", daemon=True)]
        for thread in self._threads:
            thread.start()

    # -- producer side -----------------------------------------------------------------------

    def add(self, lines: list[str], timeout: float | None = None) -> None:
        """Queue lines. Returns at once unless memory and disk buffer are full: then it blocks
        (or raises InfluxBackpressure after `timeout` s) until the sender has made room."""
        aside = getattr(lines, "out_of_range", None)
        if aside:  # rare: validation keeps such times out; this is the last guard before InfluxDB
            self._set_aside([(line.encode("utf-8", "replace"), OUT_OF_RANGE) for line in aside], "out_of_range")
            aside.clear()  # taken: a retried add() after InfluxBackpressure must not keep them twice
        if not lines:
            return
        with self._lock:
            if self._closing:
                raise RuntimeError("InfluxSink is closed")
            if self._mem_lines >= self._mem_cap:
                self._wait_for_room(timeout)
                if self._closing:
                    raise RuntimeError("InfluxSink is closed")
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.extend(lines)
            self._mem_lines += len(lines)
            n = len(self._pending)
            if n == len(lines) or n >= self._batch_size or self._mem_lines >= self._mem_cap:
                self._cut_cv.notify()

    def _wait_for_room(self, timeout: float | None) -> None:
        started = time.monotonic()
        self._blocked += 1
        self._counts["blocked_adds"] += 1
        self._warn("influx: buffer full (%d lines in memory, disk %s); add() blocks", self._mem_lines,
                   "full" if self._disk_full else "failing")
        try:
            while self._mem_lines >= self._mem_cap and not self._closing:
                left = None if timeout is None else started + timeout - time.monotonic()
                if left is not None and left <= 0:
                    raise InfluxBackpressure(max(self._retry_at - time.monotonic(), BACKOFF_INITIAL_S))
                self._done_cv.wait(left)
        finally:
            self._blocked -= 1
            self._counts["blocked_ms"] += round((time.monotonic() - started) * 1000)

    def flush(self, timeout: float | None = None) -> bool:
        """Cut what is pending now and wait until memory holds nothing: every line is either in
        InfluxDB or in the disk buffer. False if `timeout` s passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flushing += 1
            self._cut_cv.notify()
            try:
                return self._wait(lambda: self._mem_lines == 0, deadline)
            finally:
                self._flushing -= 1

    def drain(self, timeout: float | None = None) -> bool:
        """flush(), then wait until the disk buffer is empty too: everything is in InfluxDB."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flushing += 1
            self._cut_cv.notify()
            try:
                return self._wait(lambda: self._mem_lines == 0 and self._buffer.segments == 0, deadline)
            finally:
                self._flushing -= 1

    def _wait(self, done: Any, deadline: float | None) -> bool:
        while not done():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._done_cv.wait(left if left is None else min(left, 1.0))
        return True

    def close(self, timeout: float | None = None) -> None:
        """Flush (to InfluxDB or disk), stop the threads, close the client. What is still on disk is
        sent by the next InfluxSink on the same data_dir."""
        with self._lock:
            if self._closing:
                return
        if timeout is None:
            timeout = 2 * self.settings.timeout_ms / 1000 + 5
        self.flush(timeout)
        with self._lock:
            self._closing = True
            self._cut_cv.notify_all()
            self._send_cv.notify_all()
            self._done_cv.notify_all()
        for thread in self._threads:
            thread.join(self.settings.timeout_ms / 1000 + 10)
        self._writer.close()
        if self._mem_lines:
            log.error("influx: %d lines could not be stored on close (disk buffer full or failing)",
                      self._mem_lines)
            self._counts["lost_on_close"] += self._mem_lines

    def __enter__(self) -> InfluxSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "written_lines": self._counts["written_lines"],
                "written_batches": self._counts["written_batches"],
                "replayed_batches": self._counts["replayed_batches"],
                "failed_attempts": self._counts["failed_attempts"],
                "rejected_lines": self._counts["rejected_lines"],
                "rejected_batches": self._counts["rejected_batches"],
                "out_of_range_lines": self._counts["out_of_range_lines"],
                "rejected_dropped_lines": self._counts["rejected_dropped_lines"],
                "buffered_on_disk": self._buffer.lines,
                "buffered_bytes": self._buffer.bytes,
                "buffered_segments": self._buffer.segments,
                "in_memory": self._mem_lines,
                "failing": self._failing,
                "disk_full": self._disk_full,
                "blocked": self._blocked > 0,
                "blocked_adds": self._counts["blocked_adds"],
                "blocked_s": self._counts["blocked_ms"] / 1000,
                "lost_on_close": self._counts["lost_on_close"],
                "last_error": self._last_error,
            }

    def _warn(self, msg: str, *args: object) -> None:
        """At most one warning per 30 s: an outage must not flood the log."""
        now = time.monotonic()
        if now - self._last_warning >= 30:
            self._last_warning = now
            log.warning(msg, *args)

    # -- cutter thread -------------------------------------------------------------------------

    def _cut_loop(self) -> None:
        while True:
            with self._lock:
                cut = self._take_lines()
            if cut is None:
                return
            seq, lines = cut
            data = ("\n".join(lines) + "\n").encode("utf-8", "replace")  # a lone surrogate: '?'
            self._place(_Batch(seq, data, len(lines)))

    def _take_lines(self) -> tuple[int, list[str]] | None:
        """Under the lock: wait until a batch is due; None when closing with nothing left."""
        while True:
            n = len(self._pending)
            if n >= self._batch_size or (n and (self._flushing or self._closing)):
                break
            if n:
                left = self._pending_since + self._interval - time.monotonic()
                if left <= 0:
                    break
                self._cut_cv.wait(left)
            elif self._closing:
                return None
            else:
                self._cut_cv.wait()
        lines = self._pending[: self._batch_size]
        del self._pending[: self._batch_size]
        self._pending_since = time.monotonic()  # the rest waits for company, not for a tiny batch
        self._seq += 1
        return self._seq, lines

    def _place(self, batch: _Batch) -> None:
        """Memory queue while healthy and caught up; disk while failing, replaying, or lagging so
        far that memory is full. Waits while the disk is full."""
        while True:
            with self._lock:
                while not self._failing and not self._closing and self._buffer.segments == 0:
                    if len(self._queue) < QUEUED_BATCHES:
                        self._queue.append(batch)
                        self._send_cv.notify()
                        return
                    if self._mem_lines >= self._mem_cap:
                        break  # a slow server: spill rather than block add()
                    self._cut_cv.wait()
            if self._store([batch]):
                return
            with self._lock:
                if self._closing:
                    return  # counted as lost by close()
                self._cut_cv.wait(0.5)  # the sender frees disk space, or the disk recovers

    def _store(self, batches: list[_Batch]) -> int:
        """Append to the disk buffer, in order, as many as fit; returns how many were stored."""
        stored = 0
        for batch in batches:
            try:
                self._buffer.append(batch.seq, batch.data, batch.lines)
            except BufferFull:
                with self._lock:
                    now = time.monotonic()
                    if now - self._disk_full_logged >= DISK_FULL_LOG_S:  # once a minute, not per batch
                        self._disk_full_logged = now
                        log.error("influx: disk buffer full (%d MB); add() will block until InfluxDB "
                                  "takes data again", self.settings.buffer_max_mb)
                    self._disk_full = True
                break
            except OSError as exc:
                with self._lock:
                    self._warn("influx: cannot write the disk buffer: %s", exc)
                break
            stored += 1
            with self._lock:
                self._mem_lines -= batch.lines
                self._disk_full = False
                self._send_cv.notify()
                self._done_cv.notify_all()
        return stored

    # -- sender thread -------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            with self._lock:
                batch = self._next_due()
                if self._closing:
                    leftover = list(self._queue)
                    self._queue.clear()
                    break
            try:
                if batch is not None:
                    self._deliver(batch, None)
                elif (seg := self._buffer.oldest()) is not None:
                    self._deliver(None, seg)
            except Exception as exc:  # keep the thread alive: the data is still queued or on disk
                log.exception("influx: sender error")
                self._retry(self._writer.scrub(f"{type(exc).__name__}: {exc}"), None)
        self._store(leftover)
        with self._lock:
            self._done_cv.notify_all()

    def _next_due(self) -> _Batch | None:
        """Under the lock: wait until something is due (memory queue first: it is older than disk)."""
        while not self._closing:
            has_work = bool(self._queue) or self._buffer.segments > 0
            now = time.monotonic()
            if has_work and now >= self._retry_at:
                return self._queue[0] if self._queue else None
            self._send_cv.wait(self._retry_at - now if has_work else None)
        return None

    def _deliver(self, batch: _Batch | None, seg: Segment | None) -> None:
        if batch is not None:
            data, lines, seq = batch.data, batch.lines, batch.seq
        else:
            assert seg is not None
            try:
                data, lines, seq = self._buffer.read(seg), seg.lines, seg.seq
            except OSError as exc:
                self._retry(f"cannot read {seg.path.name}: {exc}", None)
                return
        result = self._writer.write(data)
        if result.outcome == RETRY:
            self._retry(result.reason, result.retry_after)
            return
        if result.rejected:
            log.error("influx: InfluxDB rejected a batch of %d lines (%s): %d line(s) set aside in %s, "
                      "%d written", lines, result.reason, len(result.rejected), self.rejected_dir, result.written)
            self._set_aside(result.rejected, "rejected", seq)
        with self._lock:  # the segment goes and the lines are counted at once: drain() sees both or neither
            if seg is not None:
                self._buffer.remove(seg)
            if batch is not None:
                self._queue.popleft()
                self._mem_lines -= lines
            self._counts["written_lines"] += result.written
            self._counts["written_batches"] += result.written > 0
            self._counts["rejected_batches"] += bool(result.rejected)
            self._counts["replayed_batches"] += seg is not None and result.written > 0
            if self._failing:
                log.info("influx: InfluxDB takes writes again; %d lines still on disk", self._buffer.lines)
            self._failing = False
            self._backoff = BACKOFF_INITIAL_S
            self._retry_at = 0.0
            self._done_cv.notify_all()
            self._cut_cv.notify()

    def _set_aside(self, lines: list[tuple[bytes, str]], kind: str, seq: int | None = None) -> None:
        """Keep lines InfluxDB refused (kind `rejected`) or cannot store (`out_of_range`) in
        influx-rejected/; counted either way, and dropped with an error when that directory is full."""
        if seq is None:
            with self._lock:
                self._seq += 1
                seq = self._seq
        try:
            kept = self._rejected.keep(seq, lines)
        except OSError as exc:
            kept = False
            log.error("influx: cannot keep %d refused line(s) in %s: %s", len(lines), self.rejected_dir, exc)
        else:
            if not kept:
                self._warn("influx: %s is full (influx.rejected_max_mb %d): dropping refused lines",
                           self.rejected_dir, self.settings.rejected_max_mb)
        with self._lock:
            self._counts[f"{kind}_lines"] += len(lines)
            if not kept:
                self._counts["rejected_dropped_lines"] += len(lines)

    def _retry(self, reason: str, retry_after: float | None) -> None:
        """A failed attempt: back off, and move the memory queue to disk so nothing waits in RAM."""
        with self._lock:
            self._counts["failed_attempts"] += 1
            self._last_error = reason
            if not self._failing:
                self._last_warning = 0.0
            self._failing = True
            self._warn("influx: write failed (%s); buffering to disk, retrying with backoff", reason)
            delay = self._backoff * self._rng.uniform(0.5, 1.0)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
            if retry_after:
                delay = max(delay, min(retry_after, RETRY_AFTER_MAX_S))
            self._retry_at = time.monotonic() + delay
            moved = list(self._queue)
            self._queue.clear()
            self._cut_cv.notify()  # the cutter may be waiting for queue room: disk now
        stored = self._store(moved)
        if stored < len(moved):
            with self._lock:
                self._queue.extendleft(reversed(moved[stored:]))

