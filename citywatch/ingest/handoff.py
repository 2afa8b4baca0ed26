"""A bounded hand-off from paho's network thread to the asyncio runner.

The producer blocks when the queue is full, so a slow pipeline slows the MQTT socket reads
and the broker holds the backlog (QoS 1): backpressure instead of loss. Time spent blocked
is counted, never silent. The consumer is woken only when it is actually waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    def __init__(self, maxsize: int, loop: asyncio.AbstractEventLoop) -> None:
        self.maxsize = maxsize
        self.loop = loop
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._event = asyncio.Event()
        self._waiting = False
        self.blocked_s = 0.0
        self.blocked_puts = 0
        self.closed = False

    def put(self, item: T) -> None:
        """Called from a producer thread; blocks while the queue is full."""
        self.put_many([item])

    def put_many(self, items: list[T]) -> None:
        """Like put for a whole batch, never holding more than maxsize: blocks while full."""
        start = 0
        while start < len(items):
            with self._lock:
                if len(self._items) >= self.maxsize:
                    started = time.monotonic()
                    self.blocked_puts += 1
                    while len(self._items) >= self.maxsize and not self.closed:
                        self._not_full.wait(0.5)
                    self.blocked_s += time.monotonic() - started
                room = max(1, self.maxsize - len(self._items))
                self._items.extend(items[start:start + room])
                start += room
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
                self._not_full.notify_all()
        return batch

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._not_full.notify_all()

    def __len__(self) -> int:
        return len(self._items)
