"""A bounded hand-off from the MQTT reader thread to the asyncio runner.

The producer blocks when the queue is full, so a slow pipeline slows the MQTT socket reads
and the broker holds the backlog (QoS 1): backpressure instead of loss. Full means either
bound: `maxsize` items or `maxbytes` bytes (as measured by `sizeof`), so a few huge messages
cannot fill memory while the item count looks small. Time spent blocked is counted, never
silent. The consumer is woken only when it is actually waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    def __init__(self, maxsize: int, loop: asyncio.AbstractEventLoop, maxbytes: int = 0,
                 sizeof: Callable[[T], int] | None = None) -> None:
        """`maxbytes` 0 (or no `sizeof`): bounded by item count only."""
        self.maxsize = maxsize
        self.maxbytes = maxbytes if sizeof is not None else 0
        self.sizeof = sizeof
        self.loop = loop
        self._items: deque[T] = deque()
        self.nbytes = 0
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._event = asyncio.Event()
        self._waiting = False
        self.blocked_s = 0.0
        self.blocked_puts = 0
        self.closed = False

    def full(self) -> bool:
        """Either bound reached: a put would block now."""
        return len(self._items) >= self.maxsize or (self.maxbytes > 0 and self.nbytes >= self.maxbytes)

    def put(self, item: T) -> None:
        """Called from a producer thread; blocks while the queue is full."""
        self.put_many([item])

    def put_many(self, items: list[T]) -> None:
        """Like put for a whole batch: blocks while full; adds items while neither bound is reached
        (at least one, so a single item larger than maxbytes still passes alone)."""
        i, n = 0, len(items)
        sizeof = self.sizeof
        while i < n:
            with self._lock:
                if self.full():
                    started = time.monotonic()
                    self.blocked_puts += 1
                    while self.full() and not self.closed:
                        self._not_full.wait(0.5)
                    self.blocked_s += time.monotonic() - started
                added = 0
                while i < n and (added == 0 or not self.full()):
                    item = items[i]
                    self._items.append(item)
                    if sizeof is not None:
                        self.nbytes += sizeof(item)
                    i += 1
                    added += 1
                wake = self._waiting
                self._waiting = False
            if wake:
                self.loop.call_soon_threadsafe(self._event.set)

    async def get_batch(self, max_items: int, timeout: float) -> list[T]:
        """Up to `max_items` items; waits at most `timeout` s for the first one."""
        with self._lock:
            if not self._items:
                self._waiting = True
                self._event.clear()
        if self._waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout)
        with self._lock:
            self._waiting = False
            n = min(max_items, len(self._items))
            batch = [self._items.popleft() for _ in range(n)]
            if n:
                if self.sizeof is not None:
                    self.nbytes -= sum(map(self.sizeof, batch))
                self._not_full.notify_all()
        return batch

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._not_full.notify_all()

    def __len__(self) -> int:
        return len(self._items)
