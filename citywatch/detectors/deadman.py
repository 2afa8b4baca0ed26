"""Offline (deadman) detection: a device silent for `offline_intervals` of its expected interval.

Devices sit in insertion-ordered queues by last arrival, one queue per timeout, so a tick
looks only at the overdue heads instead of scanning every device (the city has 100k+ of them).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator


class Deadman:
    def __init__(self, grace_from: float = 0.0) -> None:
        # No device is declared offline for silence that overlaps our own downtime.
        self.grace_from = grace_from
        self._queues: dict[float, OrderedDict[str, float]] = {}
        self._timeout_of: dict[str, float] = {}

    def seen(self, device_id: str, timeout_s: float, at: float) -> None:
        """Record an arrival (processing time). Out-of-date arrivals are ignored by the caller."""
        old = self._timeout_of.get(device_id)
        if old is not None and old != timeout_s:
            self._queues[old].pop(device_id, None)
        self._timeout_of[device_id] = timeout_s
        queue = self._queues.get(timeout_s)
        if queue is None:
            queue = self._queues[timeout_s] = OrderedDict()
        queue[device_id] = at
        queue.move_to_end(device_id)

    def forget(self, device_id: str) -> None:
        timeout = self._timeout_of.pop(device_id, None)
        if timeout is not None:
            self._queues[timeout].pop(device_id, None)

    def overdue(self, now: float) -> Iterator[tuple[str, float, float]]:
        """Yield (device_id, silent_s, timeout_s) for devices past their timeout, once each:
        they leave the queue until they are seen again."""
        for timeout, queue in self._queues.items():
            while queue:
                device_id, seen = next(iter(queue.items()))
                silent = now - max(seen, self.grace_from)
                if silent <= timeout:
                    break
                queue.popitem(last=False)
                del self._timeout_of[device_id]
                yield device_id, now - seen, timeout

    def __len__(self) -> int:
        return len(self._timeout_of)
