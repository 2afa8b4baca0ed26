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
* `device_status`, device health: one point per online/offline announcement, and one per reading
  that reports battery and/or rssi
    tags   device, district, grid, kind
    fields online (bool) for announcements; battery, rssi (float) for readings; lat, lon (float)
           on both when the device has coordinates (the operators' map)
    time   when the announcement arrived; the reading's event time

Timestamps are rounded to the microsecond, so a re-sent point lands on the same (series, time)
and InfluxDB overwrites it instead of storing it twice. Tag values cannot carry backslashes or
line breaks reliably, so those become '/' and ' '.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from citywatch.config import InfluxSettings
from citywatch.errors import CitywatchError, ConfigError
from citywatch.sinks.linebuffer import BufferFull, LineBuffer, Segment, write_rejected
from citywatch.sinks.lineprotocol import lines_for, reading_line, status_line, transition_line

__all__ = ["InfluxBackpressure", "InfluxSink", "lines_for", "reading_line", "status_line", "transition_line"]

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.25
DISK_FULL_LOG_S = 60.0
BACKOFF_MAX_S = 5.0  # a down server costs one request per this; recovery is noticed within it
RETRY_AFTER_MAX_S = 60.0
MEMORY_BATCHES = 4  # add() blocks when this many batches' worth of lines wait in memory
QUEUED_BATCHES = 2  # batches waiting for the sender in memory; more go to disk (a slow server)
RETRY_STATUSES = frozenset({401, 403, 404, 408, 429})  # 401/403/404: our config, not the data

class InfluxBackpressure(CitywatchError):
    """add() waited `timeout` for room: memory and the disk buffer are full; try again later."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"InfluxDB buffer full; retry after {retry_after:g} s")
        self.retry_after = retry_after


class _Batch:
    __slots__ = ("seq", "data", "lines")

    def __init__(self, seq: int, data: bytes, lines: int) -> None:
        self.seq, self.data, self.lines = seq, data, lines


_OK, _REJECT, _RETRY = "ok", "reject", "retry"


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
        self._token = settings.token.get_secret_value() if settings.token is not None else ""
        self.rejected_dir = data_dir / "influx-rejected"
        self._buffer = LineBuffer(data_dir / "influx-buffer", settings.buffer_max_mb * 1024 * 1024,
                                  settings.batch_size, self.rejected_dir)
        self._client = InfluxDBClient(url=settings.url, token=self._token, org=settings.org,
                                      timeout=settings.timeout_ms)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
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
        self._client.close()
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
                self._retry(self._scrub(f"{type(exc).__name__}: {exc}"), None)
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
            data, lines = batch.data, batch.lines
        else:
            assert seg is not None
            try:
                data, lines = self._buffer.read(seg), seg.lines
            except OSError as exc:
                self._retry(f"cannot read {seg.path.name}: {exc}", None)
                return
        outcome, reason, retry_after = self._post(data)
        if outcome == _RETRY:
            self._retry(reason, retry_after)
            return
        if outcome == _REJECT:
            log.error("influx: InfluxDB rejected a batch of %d lines (%s); moved to %s", lines, reason,
                      self.rejected_dir)
            try:
                if seg is not None:
                    self._buffer.reject(seg, reason)
                else:
                    assert batch is not None
                    write_rejected(self.rejected_dir, batch.seq, batch.data, reason)
            except OSError as exc:
                log.error("influx: cannot keep the rejected batch in %s: %s", self.rejected_dir, exc)
                if seg is not None:
                    self._buffer.remove(seg)
        elif seg is not None:
            self._buffer.remove(seg)
        with self._lock:
            if batch is not None:
                self._queue.popleft()
                self._mem_lines -= lines
            kind = "written" if outcome == _OK else "rejected"
            self._counts[kind + "_lines"] += lines
            self._counts[kind + "_batches"] += 1
            if seg is not None and outcome == _OK:
                self._counts["replayed_batches"] += 1
            if self._failing:
                log.info("influx: InfluxDB takes writes again; %d lines still on disk", self._buffer.lines)
            self._failing = False
            self._backoff = BACKOFF_INITIAL_S
            self._retry_at = 0.0
            self._done_cv.notify_all()
            self._cut_cv.notify()

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

    def _post(self, data: bytes) -> tuple[str, str, float | None]:
        """One write; (outcome, reason without the token, Retry-After seconds)."""
        try:
            self._write_api.write(bucket=self.settings.bucket, org=self.settings.org, record=data,
                                  write_precision=WritePrecision.NS)  # type: ignore[arg-type]
        except ApiException as exc:
            status = exc.status or 0
            body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body or "")
            reason = self._scrub(f"HTTP {status}: {(body or str(exc.reason))[:300]}")
            if 400 <= status < 500 and status not in RETRY_STATUSES:
                return _REJECT, reason, None
            return _RETRY, reason, _seconds(exc.retry_after)
        except Exception as exc:  # refused, reset, timed out: the server may or may not have it
            return _RETRY, self._scrub(f"{type(exc).__name__}: {exc}"[:300]), None
        return _OK, "", None

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token and len(self._token) >= 4 else text


def _seconds(value: object) -> float | None:
    try:
        return float(value) if value is not None else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
