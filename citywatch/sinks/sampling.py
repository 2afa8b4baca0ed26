"""Which dead letters are stored: a sample, so a flood of garbage cannot fill the disk.

Every dead letter is counted (per reason, in the store's counters). Storing is rate limited by
token buckets: one per (source, reason), where the source is the device (kind/id from the topic)
or, for topics that name none, the topic; and one shared by all sources, so a flood under spoofed
device ids is bounded too. Time is the message's arrival time, so the decision is reproducible.
"""

from __future__ import annotations

from collections import OrderedDict

from citywatch.config import DeadLetterRetention
from citywatch.model import DeadLetter

SOURCE_LIMIT = 200  # characters of a topic used as a source key


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; `take` spends one if there is one."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def take(self, now: float) -> bool:
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def source_of(topic: str) -> str:
    """`<kind>/<device_id>` for topics shaped like ours (spoofed ids included), else the topic."""
    parts = topic.split("/", 4)
    if len(parts) >= 3 and parts[1] and parts[2]:
        return f"{parts[1]}/{parts[2]}"[:SOURCE_LIMIT]
    return topic[:SOURCE_LIMIT]


class DeadLetterSampler:
    """`split(dead_letters)` -> (to store, sampled out). Memory is bounded by `settings.sources`."""

    def __init__(self, settings: DeadLetterRetention) -> None:
        self.settings = settings
        self.buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self.total: TokenBucket | None = None

    def keep(self, dead: DeadLetter) -> bool:
        s = self.settings
        now = dead.received_at
        if self.total is None:
            self.total = TokenBucket(s.total_per_s, s.total_burst, now)
        key = (source_of(dead.topic), dead.reason)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(1.0 / s.sample_every_s, s.sample_burst, now)
            if len(self.buckets) > s.sources:
                self.buckets.popitem(last=False)  # the least recently seen source
        else:
            self.buckets.move_to_end(key)
        # Both must have a token; the shared one is only spent when the source's allows storing.
        bucket.refill(now)
        if bucket.tokens < 1.0:
            return False
        if not self.total.take(now):
            return False
        bucket.tokens -= 1.0
        return True

    def split(self, dead_letters: list[DeadLetter]) -> tuple[list[DeadLetter], list[DeadLetter]]:
        kept: list[DeadLetter] = []
        dropped: list[DeadLetter] = []
        for dead in dead_letters:
            (kept if self.keep(dead) else dropped).append(dead)
        return kept, dropped
