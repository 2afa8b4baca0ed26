"""The generic detector as it was before issue 20, kept only so the benchmark can compare: one
fixed set of parameters for any series, online, alerting rarely and decisively.

Per row, with no look-ahead, four features of the series:
  value       the value itself
  step        its first difference (catches jumps within the normal range)
  level       the mean of the last `smooth` values (catches moderate but sustained shifts)
  daily       the mean of the last `smooth` differences from one day earlier (catches an
              anomalous day in a daily rhythm); the day's length in rows comes from the median
              spacing of the first timestamps, and the feature is off without timestamps or
              when a day is more than `max_period` rows
Each feature's surprise is a robust z-score against the median and inter-quartile range of its
last `window` values (an averaged feature has its own, narrower spread); the scale has floors (the
feature's mean absolute change, and a fiftieth of the value's own spread), so a constant
series never divides by zero and a repeated pattern (a square wave's edges) is not surprising
each time.

Self-calibration: a feature alerts when its surprise reaches `min_surprise` and beats `margin`
times the largest surprise it had over the last `memory` rows not explained by an alert. A
series that is always spiky raises its own bar; a quiet one alerts on its first real departure.
After an alert, no new one for `cooldown` rows, and the alerting feature's bar is raised (to at
most `raise_cap` times what it was, halving every `raise_halflife` rows), so a recurring event
stops alerting; an alert as surprising as that feature's previous one (within a factor
`recur_low`) also enters its record: the second time is news, the third is a pattern. The
windows keep learning every row, so a level shift is flagged once and then adopted as the
window turns over. No alert during the first `warmup` rows.

anomaly_score in [0, 1]: the largest surprise / (surprise + bar) over the features; 0.5 is where
an alert would open. State is bounded (fixed-size windows) and round-trips through `to_state()`.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Mapping
from typing import Any

IQR_TO_SIGMA = 1.349
DAY_S = 86400.0


class RollingWindow:
    """The last `size` values with their sorted copy (for quantiles) and the sum of the absolute
    changes between consecutive values."""

    __slots__ = ("size", "ring", "pos", "sorted", "change_sum")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ring: list[float] = []
        self.pos = 0  # index of the oldest value once full
        self.sorted: list[float] = []
        self.change_sum = 0.0

    def add(self, x: float) -> None:
        ring = self.ring
        n = len(ring)
        if n:
            self.change_sum += abs(x - ring[self.pos - 1 if n == self.size else n - 1])
        if n < self.size:
            ring.append(x)
        else:
            old = ring[self.pos]
            nxt = ring[(self.pos + 1) % self.size]
            self.change_sum -= abs(nxt - old)
            del self.sorted[bisect_left(self.sorted, old)]
            ring[self.pos] = x
            self.pos = (self.pos + 1) % self.size
        insort(self.sorted, x)

    def __len__(self) -> int:
        return len(self.ring)

    def quantile(self, q: float) -> float:
        s = self.sorted
        return s[int(q * (len(s) - 1) + 0.5)]

    def mean_change(self) -> float:
        n = len(self.ring)
        return self.change_sum / (n - 1) if n > 1 else 0.0

    def values(self) -> list[float]:
        """Oldest first."""
        return self.ring[self.pos:] + self.ring[:self.pos] if len(self.ring) == self.size else list(self.ring)


class RollingMax:
    """Maximum of the last `size` pushed values: a monotonic deque kept as two lists."""

    __slots__ = ("size", "index", "values", "n")

    def __init__(self, size: int) -> None:
        self.size = size
        self.index: list[int] = []
        self.values: list[float] = []
        self.n = 0

    def push(self, x: float) -> None:
        values, index = self.values, self.index
        while values and values[-1] <= x:
            values.pop()
            index.pop()
        values.append(x)
        index.append(self.n)
        self.n += 1
        if index[0] <= self.n - 1 - self.size:
            del index[0]
            del values[0]

    def max(self) -> float:
        return self.values[0] if self.values else 0.0


class Feature:
    """One feature's window, its bar (the record of unexplained surprises) and the raised bar."""

    __slots__ = ("window", "record", "raised", "last")

    def __init__(self, window: int, memory: int) -> None:
        self.window = RollingWindow(window)
        self.record = RollingMax(memory)
        self.raised = 0.0
        self.last = 0.0  # the surprise of this feature's last alert

    def surprise(self, f: float, eps: float) -> float:
        w = self.window
        if len(w) < 10:
            return 0.0
        med = w.quantile(0.5)
        scale = (w.quantile(0.75) - w.quantile(0.25)) / IQR_TO_SIGMA
        floor = w.mean_change()
        if scale < floor:
            scale = floor
        if scale < eps:
            scale = eps
        return abs(f - med) / scale


class GenericDetector:
    """See the module docstring. `process(value, ts)` scores, decides and learns one row and
    returns (is_alert, anomaly_score); `score_one` / `learn_one` take {"value": x, "ts": t}."""

    FEATURES = ("value", "step", "level", "daily")

    def __init__(self, *, window: int = 400, memory: int = 2000, smooth: int = 6, min_surprise: float = 7.0,
                 margin: float = 1.3, cooldown: int = 200, warmup: int = 150, raise_cap: float = 8.0,
                 raise_halflife: float = 600.0, max_period: int = 2000, recur_low: float = 0.8) -> None:
        self.window = window
        self.memory = memory
        self.smooth = smooth
        self.min_surprise = min_surprise
        self.margin = margin
        self.cooldown = cooldown
        self.warmup = warmup
        self.raise_cap = raise_cap
        self.decay = 0.5 ** (1.0 / raise_halflife)
        self.max_period = max_period
        self.recur_low = recur_low
        self.reset()

    def reset(self) -> None:
        self.features = [Feature(self.window, self.memory) for _ in self.FEATURES]
        self.recent: list[float] = []  # the last `smooth` values
        self.recent_daily: list[float] = []  # the last `smooth` differences from a day before
        self.history: list[float] = []  # the last `period` values (a ring), once the period is known
        self.hpos = 0  # the ring's oldest value: the row one day before the next one
        self.gaps: list[float] | None = []  # the first timestamps' spacings; None once decided
        self.period = 0  # rows per day; 0 while unknown, or off
        self.last_ts: float | None = None
        self.n = 0
        self.quiet = self.cooldown  # rows since the last alert
        self.alerted = -1  # the feature that raised the last alert
        self.alert_bar = 0.0  # its bar then

    # -- features -----------------------------------------------------------------------------

    def _features(self, x: float) -> list[float | None]:
        recent = self.recent
        level = (sum(recent[1:]) + x) / len(recent) if len(recent) == self.smooth else None
        step = x - recent[-1] if recent else None
        daily = None
        if self.period and len(self.history) == self.period:
            d = x - self.history[self.hpos]
            rd = self.recent_daily
            if len(rd) == self.smooth:
                daily = (sum(rd[1:]) + d) / len(rd)
        return [x, step, level, daily]

    def _eps(self) -> float:
        """The smallest scale any feature may have: a fiftieth of the value's own spread (so a
        derived feature that was exactly constant is not infinitely surprised by a tiny change)."""
        w = self.features[0].window
        if not len(w):
            return 1e-12
        spread = (w.quantile(0.75) - w.quantile(0.25)) / IQR_TO_SIGMA
        change = w.mean_change()
        return 0.02 * (spread if spread > change else change) + 1e-9 * (1.0 + abs(w.quantile(0.5)))

    def _surprises(self, x: float) -> list[tuple[float, float]]:
        """(surprise, bar) per feature, before learning `x`."""
        eps = self._eps()
        out = []
        for feature, f in zip(self.features, self._features(x), strict=True):
            if f is None:
                out.append((0.0, self.min_surprise))
                continue
            bar = feature.record.max()
            bar = self.margin * (bar if bar > feature.raised else feature.raised)
            out.append((feature.surprise(f, eps), bar if bar > self.min_surprise else self.min_surprise))
        return out

    # -- learning -----------------------------------------------------------------------------

    def _learn(self, x: float, ts: float | None, surprises: list[tuple[float, float]], alert: int) -> None:
        values = self._features(x)
        if alert >= 0:
            self.alerted, self.alert_bar = alert, surprises[alert][1]
            feature, surprise = self.features[alert], surprises[alert][0]
            if feature.last > 0 and self.recur_low <= surprise / feature.last <= 1 / self.recur_low:
                feature.record.push(surprise)  # the same surprise again: a pattern, not news
            feature.last = surprise
        explained = self.quiet < self.cooldown or alert >= 0
        for i, (feature, f, (surprise, _)) in enumerate(zip(self.features, values, surprises, strict=True)):
            if f is None:
                continue
            if not explained:
                feature.record.push(surprise)
            elif i == self.alerted:  # the alerting feature's bar rises with what it sees meanwhile
                raised = min(surprise, self.raise_cap * self.alert_bar / self.margin)
                if raised > feature.raised:
                    feature.raised = raised
            feature.raised *= self.decay
            feature.window.add(f)
        self._remember(x, ts)

    def _remember(self, x: float, ts: float | None) -> None:
        history = self.history
        if self.period and len(history) == self.period:
            rd = self.recent_daily
            rd.append(x - history[self.hpos])
            if len(rd) > self.smooth:
                del rd[0]
            history[self.hpos] = x
            self.hpos = (self.hpos + 1) % self.period
        elif self.period:
            history.append(x)
        recent = self.recent
        recent.append(x)
        if len(recent) > self.smooth:
            del recent[0]
        if ts is not None:
            self._find_period(ts)
            self.last_ts = ts
        self.n += 1

    def _find_period(self, ts: float) -> None:
        """Rows per day from the median spacing of the first 50 timestamps; off if out of range."""
        gaps = self.gaps
        if gaps is None:
            return
        if self.last_ts is not None and ts > self.last_ts:
            gaps.append(ts - self.last_ts)
        if len(gaps) >= 50:
            rows = round(DAY_S / sorted(gaps)[len(gaps) // 2])
            self.period = rows if 2 <= rows <= self.max_period else 0
            self.gaps = None

    # -- the interface ------------------------------------------------------------------------

    def process(self, value: float, ts: float | None = None) -> tuple[bool, float]:
        """Score, decide and learn one row: (an alert opens here, anomaly score in [0, 1])."""
        if not math.isfinite(value):
            return False, 0.0
        surprises = self._surprises(value)
        best, score = -1, 0.0
        for i, (surprise, bar) in enumerate(surprises):
            s = surprise / (surprise + bar)
            if s > score:
                best, score = i, s
        alert = score >= 0.5 and self.n >= self.warmup and self.quiet >= self.cooldown
        self._learn(value, ts, surprises, best if alert else -1)
        self.quiet = 0 if alert else self.quiet + 1
        return alert, score

    @staticmethod
    def _row(x: Mapping[str, Any]) -> tuple[float, float | None] | None:
        value, ts = x.get("value"), x.get("ts")
        if value is None or isinstance(value, str) or not math.isfinite(float(value)):
            return None
        return float(value), (float(ts) if isinstance(ts, (int, float)) else None)

    def score_one(self, x: Mapping[str, Any]) -> float:
        row = self._row(x)
        if row is None:
            return 0.0
        return max(s / (s + bar) for s, bar in self._surprises(row[0]))

    def learn_one(self, x: Mapping[str, Any]) -> None:
        row = self._row(x)
        if row is not None:
            self._learn(row[0], row[1], self._surprises(row[0]), -1)
            self.quiet += 1

    # -- state --------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Plain data (lists, floats, ints): everything needed to continue exactly."""
        history = self.history[self.hpos:] + self.history[:self.hpos]
        return {
            "features": [{"window": f.window.values(), "change_sum": f.window.change_sum,
                          "record": [list(f.record.index), list(f.record.values), f.record.n], "raised": f.raised,
                          "last": f.last}
                         for f in self.features],
            "recent": list(self.recent), "recent_daily": list(self.recent_daily), "history": history,
            "gaps": None if self.gaps is None else list(self.gaps), "period": self.period,
            "last_ts": self.last_ts, "n": self.n, "quiet": self.quiet, "alerted": self.alerted,
            "alert_bar": self.alert_bar,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **params: Any) -> GenericDetector:
        detector = cls(**params)
        for feature, saved in zip(detector.features, state["features"], strict=True):
            for v in saved["window"]:
                feature.window.add(float(v))
            feature.window.change_sum = float(saved["change_sum"])  # exactly, not re-summed
            index, values, n = saved["record"]
            feature.record.index, feature.record.values, feature.record.n = list(index), list(values), int(n)
            feature.raised = float(saved["raised"])
            feature.last = float(saved["last"])
        detector.recent = [float(v) for v in state["recent"]]
        detector.recent_daily = [float(v) for v in state["recent_daily"]]
        detector.history = [float(v) for v in state["history"]]
        detector.gaps = None if state["gaps"] is None else [float(v) for v in state["gaps"]]
        detector.period = int(state["period"])
        detector.last_ts = state["last_ts"]
        detector.n = int(state["n"])
        detector.quiet = int(state["quiet"])
        detector.alerted = int(state["alerted"])
        detector.alert_bar = float(state["alert_bar"])
        return detector
