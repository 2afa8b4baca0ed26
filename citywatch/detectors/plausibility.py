"""How fast a measured quantity can really change: the one plausibility model.

A step faster than the kind's limit is a suspected sensor fault. Every rule that needs the limits
asks this module, with one definition of elapsed time: the event-time gap between two readings,
floored at `min_elapsed_s` (about a sensor's response time, so two readings a second apart are not
judged against one second of physics). A suspected fault is information on an alarm (fail safe):
it opens `sensor_jump` beside the alarm and marks the alarm suspect, it never withholds it.
"""

from __future__ import annotations

from collections.abc import Mapping


class Plausibility:
    """Per-kind rate limits (`rules.plausibility` in config.yaml). A kind without one has no jump fault."""

    def __init__(self, max_step_per_min: Mapping[str, float], min_elapsed_s: float = 60.0) -> None:
        self.max_step_per_min = dict(max_step_per_min)
        self.min_elapsed_s = min_elapsed_s

    def limit(self, kind: str) -> float | None:
        """Largest plausible change per minute for `kind`, or None when any step is plausible."""
        return self.max_step_per_min.get(kind)

    def allowed(self, max_step_per_min: float, elapsed_s: float) -> float:
        """The largest plausible change over `elapsed_s` (in either direction of time)."""
        elapsed = elapsed_s if elapsed_s >= 0.0 else -elapsed_s
        if elapsed < self.min_elapsed_s:
            elapsed = self.min_elapsed_s
        return max_step_per_min * elapsed / 60.0

    def step_ratio(self, max_step_per_min: float, previous: float, previous_ts: float, value: float,
                   ts: float) -> tuple[float, float]:
        """(|change| / allowed change, allowed change): above 1 is implausible."""
        allowed = self.allowed(max_step_per_min, ts - previous_ts)
        change = value - previous
        return (change if change >= 0.0 else -change) / allowed, allowed
