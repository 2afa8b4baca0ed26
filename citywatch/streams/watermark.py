"""Bridge watermarks: a Faust worker judges device silence only as far as the bridges could see.

The embedded runner knows when it is blind or behind (streams/sight.py). A Faust worker does not:
the bridges watch MQTT, Kafka sits between, and a worker that judged silence by its wall clock
would declare every device of its partitions offline after consumer lag, a Kafka outage or a dead
bridge longer than the offline timeout. So each bridge, every `kafka.watermark_s`, produces to every
telemetry partition one watermark record (header `citywatch-watermark`, not telemetry): its id, the
partition, and `seen_until`, the bridge's receive clock up to which it has forwarded everything it
received (its own Sight's `caught_up_at`: not advanced while it is blind or behind), and `since`,
when its sight last returned. The bridge produces it after the telemetry it vouches for was
acknowledged by Kafka, so in the partition it comes after that telemetry.

A worker keeps, per owned partition and bridge, the newest `seen_until` read (`PartitionSight`); a
partition is judged as of its slowest bridge, and silence as of the lowest over the partitions; a
partition without a watermark yet (after a start or a rebalance) stops all judgement until one
arrives. Read in partition order, a watermark is only seen after the readings it vouches for:
consumer lag delays offline detection by the lag and never creates it. When a partition's judgement
jumps by more than a few periods (a bridge stalled, dead or blind, or Kafka unreachable for it), or a
bridge's sight returned (`since`), each device's offline timer restarts from then
(`Deadman.grace_from`), as the embedded runner does after blindness.

Min over bridges, not max: a bridge's share of the devices is its own while it lives. Mosquitto keeps
a disconnected bridge's share of a shared subscription for its persistent session until it returns
(README, Kafka section), and a frozen or lagging bridge that is still connected holds its share too;
with the most advanced bridge speaking for a partition, that share would look silent. So the slowest
bridge holds the partition back, and a bridge whose watermark falls more than BRIDGE_EXPIRY_S behind
the partition's newest (bridge clocks) is taken as gone: the partition moves on without it (its
share, if Mosquitto still holds one for it, is then declared offline one timeout later: the gap
restarts the timers). The cost: a dead bridge stops all offline detection for up to BRIDGE_EXPIRY_S.
All bridges' clocks must agree (NTP), as the `received_at` header already assumes.

Compatibility: a worker that never reads a watermark (bridges of an earlier release) declares no
device offline and says so (a warning log, `offline_checks` in its heartbeat and /health).
"""

from __future__ import annotations

import json
from typing import NamedTuple

WATERMARK_HEADER = "citywatch-watermark"
GAP_PERIODS = 5  # a watermark this many periods newer than the last one: sight was lost meanwhile
BRIDGE_EXPIRY_S = 60.0  # a bridge this far behind a partition's newest watermark is gone (a restart takes less)
UNJUDGED = float("-inf")  # silence judged as of the beginning of time: nobody is overdue


class Watermark(NamedTuple):
    bridge: str
    partition: int
    seen_until: float
    since: float  # when the bridge's sight last returned (connected and subscribed)


def encode_watermark(mark: Watermark) -> bytes:
    return json.dumps({"bridge": mark.bridge, "partition": mark.partition, "seen_until": mark.seen_until,
                       "since": mark.since}).encode()


def decode_watermark(value: bytes) -> Watermark | None:
    """None for a malformed one (it is dropped, never dead-lettered: it is not telemetry)."""
    try:
        body = json.loads(value)
        return Watermark(str(body["bridge"]), int(body["partition"]), float(body["seen_until"]),
                         float(body.get("since", 0.0)))
    except (ValueError, KeyError, TypeError):
        return None


class PartitionSight:
    """Per owned partition and bridge, the newest watermark read; silence is judged as of the lowest."""

    def __init__(self, partitions: int, period_s: float, now: float) -> None:
        self.partitions = partitions
        self.gap_s = GAP_PERIODS * period_s
        self.owned: set[int] = set(range(partitions))
        self.marks: dict[int, float] = {}  # partition -> as of when it is judged (its slowest live bridge)
        self.bridges: dict[int, dict[str, float]] = {}  # partition -> bridge -> its newest seen_until
        self.expired = 0  # bridges taken as gone
        self.started_at = now
        self.unjudged_since = now  # when judgement last stopped (start, a rebalance)
        self.judged_until = now  # the last as-of judged, for health once judgement stops
        self.ever = False  # any watermark read since the start
        self.grace_from = 0.0  # the newest moment sight returned (offline timers restart from it)
        self.malformed = 0

    def assign(self, owned: set[int] | None, now: float) -> None:
        """Partitions moved (their state is rebuilt): every owned partition is unjudged until its next
        watermark, because the consumer resumes from committed offsets, not from what we read."""
        self.owned = set(range(self.partitions)) if owned is None else set(owned)
        self.marks.clear()
        self.bridges.clear()
        self.unjudged_since = now

    def observe(self, value: bytes) -> None:
        """A watermark record read from a telemetry partition (in partition order)."""
        mark = decode_watermark(value)
        if mark is None:
            self.malformed += 1
            return
        self.ever = True
        bridges = self.bridges.setdefault(mark.partition, {})
        if mark.seen_until > bridges.get(mark.bridge, UNJUDGED):
            bridges[mark.bridge] = mark.seen_until
        newest = max(bridges.values())
        for gone in [b for b, seen_until in bridges.items() if newest - seen_until > BRIDGE_EXPIRY_S]:
            del bridges[gone]
            self.expired += 1
        judged = min(bridges.values())
        previous = self.marks.get(mark.partition)
        if previous is not None and judged - previous > self.gap_s:
            self.grace_from = max(self.grace_from, judged)  # a bridge did not watch (or forward) meanwhile
        self.marks[mark.partition] = judged
        self.grace_from = max(self.grace_from, mark.since)  # a bridge's sight returned: what it missed is lost

    def as_of(self) -> float | None:
        """The moment up to which every owned partition's telemetry has been read (None: a partition
        has no watermark yet, or none are owned)."""
        if not self.owned:
            return None
        marks = self.marks
        lowest: float | None = None
        for partition in self.owned:
            mark = marks.get(partition)
            if mark is None:
                return None
            if lowest is None or mark < lowest:
                lowest = mark
        if lowest is not None:
            self.judged_until = max(self.judged_until, lowest)
        return lowest

    def unjudged(self) -> list[int]:
        return sorted(p for p in self.owned if p not in self.marks)

    def behind_s(self, now: float) -> float:
        """How far behind the wall clock offline judgement is (while unjudged: as of the last judged)."""
        as_of = self.as_of()
        return max(0.0, now - (self.judged_until if as_of is None else as_of))
