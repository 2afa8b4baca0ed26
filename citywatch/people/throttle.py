"""Slowing down token guessing: failed authentications counted per client address.

After `failures` failed attempts within `window_s` from one address, that address is blocked: every
request carrying a bearer token gets 429 with Retry-After (its token is not even looked at, so a
guess during a block learns nothing). Each block is twice as long as the one before (from
`block_s`, at most `block_max_s`); an address quiet for a window starts over. Memory is bounded:
at most `addresses` are tracked, the least recently seen forgotten first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Address:
    failures: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0
    blocks: int = 0  # blocks so far (the next one is longer)
    last_failure: float = 0.0


class Throttle:
    def __init__(self, failures: int = 5, window_s: float = 60.0, block_s: float = 10.0, block_max_s: float = 900.0,
                 addresses: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.window_s = window_s
        self.block_s = block_s
        self.block_max_s = block_max_s
        self.max_addresses = addresses
        self.clock = clock
        self._seen: OrderedDict[str, _Address] = OrderedDict()
        self.counts = {"failures": 0, "throttled": 0, "blocks": 0}

    def _entry(self, address: str) -> _Address:
        entry = self._seen.get(address)
        if entry is None:
            entry = self._seen[address] = _Address()
            while len(self._seen) > self.max_addresses:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(address)
        return entry

    def retry_after(self, address: str) -> int | None:
        """Seconds the address must wait (a 429), or None when it may try."""
        entry = self._seen.get(address)
        if entry is None:
            return None
        wait = entry.blocked_until - self.clock()
        if wait <= 0:
            return None
        self.counts["throttled"] += 1
        return max(1, math.ceil(wait))

    def failed(self, address: str) -> None:
        """One failed authentication from `address`; blocks it when that makes `failures` in the window."""
        now = self.clock()
        entry = self._entry(address)
        if entry.blocks and now - max(entry.last_failure, entry.blocked_until) > self.window_s:
            entry.blocks = 0  # quiet for a window since its last block: starts over
        entry.last_failure = now
        self.counts["failures"] += 1
        entry.failures.append(now)
        while entry.failures and entry.failures[0] <= now - self.window_s:
            entry.failures.popleft()
        if len(entry.failures) >= self.failures:
            entry.blocked_until = now + min(self.block_max_s, self.block_s * 2 ** entry.blocks)
            entry.blocks += 1
            entry.failures.clear()
            self.counts["blocks"] += 1

    def stats(self) -> dict[str, int]:
        return {**self.counts, "addresses": len(self._seen)}
