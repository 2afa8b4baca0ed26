"""What the pipeline could see, so offline detection counts only silence it would have seen.

A device is offline when it was silent while we were watching. Two states of ours are not
watching, and each, if ignored, turns our own trouble into an alert for every device in the city:

- **blind**: the collector is disconnected, not subscribed, or down. Readings sent meanwhile may
  never arrive (QoS 0, a broker restart), so when sight returns each device's silence restarts
  from then (`Deadman.grace_from`). A device that stays silent is declared offline one timeout
  after sight returned, not at once.
- **behind**: a backlog waits in the hand-off, the collector's pipe or the broker. Those readings
  will arrive, so silence is judged as of `caught_up_at`: the collector's receive time of the
  newest reading taken when nothing was left in the hand-off (a reading received long ago means
  more waits upstream), or the start of a wait for readings that found none. A wait that took far
  longer than asked (the process was frozen or starved of CPU) proves nothing: the readings that
  arrived meanwhile may not have reached the hand-off yet. A backlog delays offline detection by
  its own length (and /health says so); it never makes devices look offline.
"""

from __future__ import annotations


class Sight:
    def __init__(self, now: float) -> None:
        self.caught_up_at = now
        self.blind_since: float | None = now  # not connected yet
        self.blind_s = 0.0  # total time blind, for /stats

    def observe(self, now: float, connected: bool, backlog: int, newest_received_at: float | None,
                quiet_since: float | None = None) -> float | None:
        """Called each turn of the consume loop after it took a batch: `backlog` is what it left in the
        hand-off, `newest_received_at` the collector's receive time of the batch's last reading (None:
        the wait found no reading), `quiet_since` the start of a wait that found no reading and took
        about as long as asked (None after a stalled wait). Returns the time sight returned, once,
        when a blind period ends."""
        if not connected:
            if self.blind_since is None:
                self.blind_since = now
            return None
        regained = None
        if self.blind_since is not None:
            self.blind_s += now - self.blind_since
            self.blind_since = None
            regained = now
        if backlog == 0:
            if newest_received_at is not None:
                as_of = min(now, newest_received_at)
            elif quiet_since is not None:
                as_of = min(now, quiet_since)
            else:
                return regained  # a stalled wait: what arrived meanwhile may still be on its way
            self.caught_up_at = max(self.caught_up_at, as_of)
        return regained

    def lag_s(self, now: float) -> float:
        """How far behind the wall clock offline detection is judging (0 when caught up)."""
        return max(0.0, now - self.caught_up_at)
