"""Which changed device records a runner writes now (`ingest.state_checkpoint_s`), for both runners.

Why: with every reading touching its device, writing each changed record with its batch is one record
write per message (SQLite rows in the embedded runner, changelog records in a Faust worker). With a
checkpoint of N s, a device whose alerts or alert streaks changed is written with its batch (detector
and engine state stay consistent), and a quiet device's record at most once every N s, oldest first,
in a steady trickle (devices first seen together, as at start-up, are spread out, not one burst).

The trickle is paced by time, not by batches: at most PACE_MARGIN x (devices waiting / N) a second
(the rate that writes every waiting device once in N s, plus a margin so a backlog of due ones
drains; at least MIN_RATE, so a small city is not slowed), and never more than `budget` a batch.
Paced per batch, the rate followed the batch count: a loop taking many small batches wrote several
times the steady need, a burst the loop then paid for in falling behind.

`unsaved` is a dict used as a queue (insertion order is age). A dict keeps the slots of the entries
deleted from its front until it is resized, and iterating from the front walks past all of them: on
the 1M-device run, finding the oldest device took 1.5 ms a batch (500,000 dead slots), 2.6% of the
loop. So it is copied (compacted) once the deletions from its front outnumber an eighth of it.
"""

from __future__ import annotations

import itertools
from collections.abc import Container, Iterable

COMPACT_AFTER = 50_000  # front deletions before `unsaved` may be compacted (and 1/8 of its size)
PACE_MARGIN = 1.1  # quiet writes a second, over the steady need (devices waiting / checkpoint)
MIN_RATE = 256.0  # quiet writes a second the pace always allows


class Checkpoint:
    """Devices changed but not written yet, oldest first; `due` says which to write with a batch."""

    def __init__(self, every_s: float, budget: int) -> None:
        self.every_s = every_s
        self.budget = budget  # at most this many quiet devices written per batch
        self.unsaved: dict[str, float] = {}  # device -> when its record first changed unwritten
        self.allowance = float(budget)  # quiet writes earned by the pace, not yet spent (at most `budget`)
        self.paced_at: float | None = None
        self.front_deleted = 0  # deletions from the front of `unsaved` since it was last compacted

    def due(self, dirty: Iterable[str], urgent: Container[str], now: float, flush: bool = False,
            flush_limit: int | None = None) -> list[str]:
        """The devices to write now, of those changed (`dirty`) and those waiting: every one when
        the checkpoint is off; the `urgent` ones (alerts changed) and those that waited `every_s`;
        on `flush`, every waiting one (at most `flush_limit` of them, oldest first)."""
        if self.every_s <= 0:
            return list(dirty)
        unsaved = self.unsaved
        due: list[str] = []
        for device_id in dirty:
            if device_id in urgent:
                due.append(device_id)
                unsaved.pop(device_id, None)
            elif device_id not in unsaved:
                unsaved[device_id] = now
        if flush:
            if flush_limit is None or flush_limit >= len(unsaved):
                due.extend(unsaved)
                unsaved.clear()
            else:
                first = list(itertools.islice(unsaved, flush_limit))
                for device_id in first:
                    del unsaved[device_id]
                self._compact(len(first))
                due.extend(first)
            return due
        limit = self._paced_limit(now)
        late: list[str] = []
        for device_id, since in unsaved.items():  # oldest first
            if now - since < self.every_s or len(late) >= limit:
                break
            late.append(device_id)
        self.allowance = max(0.0, self.allowance - len(late))
        for device_id in late:
            del unsaved[device_id]
        self._compact(len(late))
        due.extend(late)
        return due

    def _compact(self, deleted: int) -> None:
        self.front_deleted += deleted
        if self.front_deleted > COMPACT_AFTER and self.front_deleted * 8 > len(self.unsaved):
            self.unsaved = dict(self.unsaved)  # the same order, without the dead slots
            self.front_deleted = 0

    def _paced_limit(self, now: float) -> int:
        """How many quiet devices this batch may write: the allowance earned since the last call."""
        if self.paced_at is not None and now > self.paced_at:
            rate = max(MIN_RATE, PACE_MARGIN * len(self.unsaved) / self.every_s)
            self.allowance = min(float(self.budget), self.allowance + (now - self.paced_at) * rate)
        self.paced_at = now
        return int(self.allowance)

    def forget(self, device_ids: Iterable[str]) -> None:
        """These were written some other way (or are no longer ours)."""
        for device_id in device_ids:
            self.unsaved.pop(device_id, None)
