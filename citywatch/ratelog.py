"""Rate-limited logging: a line repeated by a flood (bad requests, a full connection table, a
receiver that keeps redirecting) is logged once per interval with a count of what was suppressed,
so an attacker or a broken peer cannot fill the disk with the log."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable


class LogLimiter:
    """`allow(key)` is true at most once per `interval_s` per key; it returns how many were held back."""

    def __init__(self, interval_s: float = 10.0, max_keys: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def allow(self, key: Hashable) -> tuple[bool, int]:
        """(log it now?, lines held back since the last one logged for this key)."""
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return False, 0
            if last is None and len(self._last) >= self.max_keys:  # many distinct keys: forget the oldest
                oldest = min(self._last, key=self._last.__getitem__)
                del self._last[oldest]
                self._held.pop(oldest, None)
            self._last[key] = now
            return True, self._held.pop(key, 0)


class RateLimitFilter(logging.Filter):
    """A logging filter: the same message template from the same logger at most once per interval;
    the next one that passes says how many were suppressed."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.limiter = LogLimiter(interval_s)

    def filter(self, record: logging.LogRecord) -> bool:
        ok, held = self.limiter.allow((record.name, record.levelno, str(record.msg)))
        if ok and held:
            record.msg = f"{record.msg} ({held} similar suppressed)"
        return ok


def limit_logger(name: str, interval_s: float = 10.0) -> None:
    """Attach one RateLimitFilter to the named logger (idempotent)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
        logger.addFilter(RateLimitFilter(interval_s))
