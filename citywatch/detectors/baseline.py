"""Per-device learned baselines: what is normal for this device at this hour of this kind of day.

`SeasonalBaseline` is a stateless model (its parameters) working on a `BaselineState` it is handed:
the learned rules keep one per device in the device's record (record.py), so one model object
serves every device and the hot path allocates nothing per reading. A point it flags is learned at
a reduced weight only, so an anomaly is not taught as normal; warm-up is explicit.

Why not river's HalfSpaceTrees: measured here, 10 trees of height 8 score+learn ~61k readings/s
(16 us each) and pickle to ~170 KB per model; 25 trees of height 15 run ~100/s and take 53 MB.
The state budget is a few hundred bytes per device, so the baselines are robust EW statistics in
packed arrays.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from citywatch.detectors.base import CompiledRule, Verdict
from citywatch.detectors.record import DeviceRecord, RuleState
from citywatch.model import Device, Reading

HOURS: Final = 24
SIGMA_PER_MAD: Final = 1.2533  # mean absolute deviation -> standard deviation, for a normal distribution
_COUNT_CAP: Final = 127  # bucket counts fit msgpack's one-byte int


def squash(score: float, threshold: float) -> float:
    """A non-negative score mapped to [0, 1): 0.5 exactly at the alert threshold."""
    return score / (score + threshold) if score > 0 else 0.0


def field_ts(x: Mapping[str, Any], field: str) -> tuple[float, float] | None:
    """(value, ts) from a mapping, or None when either is missing or not a number."""
    value, ts = x.get(field), x.get("ts")
    if value is None or ts is None or isinstance(value, str) or isinstance(ts, str):
        return None
    return float(value), float(ts)


class LocalTime:
    """Local hour-of-day (fractional) and weekend flag of an epoch time, the UTC offset cached per hour."""

    def __init__(self, timezone: str = "Asia/Shanghai") -> None:
        self.zone = ZoneInfo(timezone)
        self.offsets: dict[int, float] = {}  # UTC offset (s) by epoch hour

    def offset(self, ts: float) -> float:
        bucket = int(ts // 3600)
        offset = self.offsets.get(bucket)
        if offset is None:
            delta = datetime.fromtimestamp(bucket * 3600, self.zone).utcoffset()
            offset = delta.total_seconds() if delta else 0.0
            if len(self.offsets) > 10000:
                self.offsets.clear()
            self.offsets[bucket] = offset
        return offset

    def position(self, ts: float) -> tuple[float, bool]:
        offset = self.offsets.get(int(ts // 3600))
        local = ts + (offset if offset is not None else self.offset(ts))
        weekday = (int(local // 86400) + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
        return (local % 86400) / 3600.0, weekday >= 5

    def hour(self, ts: float) -> int:
        return int(((ts + self.offset(ts)) % 86400) // 3600)


class BaselineState(RuleState):
    """Per bucket: EW mean, then (from index `buckets`) EW mean absolute deviation, in one float32
    array; readings learned (capped at 127) as bytes. 48 buckets take about 0.5 KiB in memory,
    0.9 KiB of msgpack."""

    __slots__ = ("ms", "n")
    FIELDS = ("ms", "n")

    def __init__(self, buckets: int) -> None:
        self.ms = array("f", bytes(8 * buckets))
        self.n = array("B", bytes(buckets))

    def restore_v1(self, old: Mapping[str, Any]) -> None:
        """Format 1 kept means and spreads in two lists."""
        if "m" in old and "s" in old:
            self.ms = array("f", [*old["m"], *old["s"]])
        if "n" in old:
            self.n = array("B", old["n"])


class SeasonalBaseline:
    """A robust, online, per-device baseline of one numeric field.

    With `seasonal`, 24 hour-of-day buckets for weekdays and 24 for weekends, linearly
    interpolated between bucket centres (so a rhythm that ramps within an hour is followed); a
    cold weekend bucket falls back to the weekday one and vice versa, and starts from it. Each bucket
    keeps an EW mean
    and an EW mean absolute deviation, updated with Huber-clipped residuals (an outlier moves it by
    at most `clip` spreads), a running mean until it has 1/alpha readings. A point scoring at or
    above `threshold` is learned with `flagged_weight` only, so an anomaly is not taught as
    normal, yet a lasting change of level is adopted in time; it does not count towards warm-up.
    Buckets alert only once they hold `min_count` readings: the warm-up. Without `seasonal`, one
    bucket.

    State: a `BaselineState` (means and spreads in a float32 array, counts as bytes; lists of boxed
    floats took 3.5 KiB once every bucket was warm), handed to every method.
    """

    __slots__ = ("field", "clock", "alpha", "min_count", "clip", "flagged_weight", "min_spread",
                 "threshold", "buckets")

    def __init__(self, field: str = "value", clock: LocalTime | None = None, *, seasonal: bool = True,
                 alpha: float = 0.01, min_count: int = 20, clip: float = 3.0, flagged_weight: float = 0.05,
                 min_spread: float = 1e-3, threshold: float = 4.0) -> None:
        self.field = field
        self.clock = clock if clock is not None else LocalTime()
        self.alpha = alpha
        self.min_count = min(min_count, _COUNT_CAP)
        self.clip = clip
        self.flagged_weight = flagged_weight
        self.min_spread = min_spread
        self.threshold = threshold
        self.buckets = 2 * HOURS if seasonal else 1

    def fresh(self) -> BaselineState:
        return BaselineState(self.buckets)

    # -- where in the rhythm --------------------------------------------------------------------

    def locate(self, ts: float) -> tuple[int, int, float]:
        """Own-day-type bucket indices (a, b) either side of `ts` and the weight of b."""
        if self.buckets == 1:
            return 0, 0, 0.0
        clock = self.clock
        offset = clock.offsets.get(int(ts // 3600))
        local = ts + (offset if offset is not None else clock.offset(ts))
        pos = (local % 86400) / 3600.0 - 0.5
        low = math.floor(pos)
        base = HOURS if (int(local // 86400) + 3) % 7 >= 5 else 0  # 1970-01-01 was a Thursday
        return base + low % HOURS, base + (low + 1) % HOURS, pos - low

    def _warm_index(self, st: BaselineState, i: int) -> int:
        """`i`, or the same hour of the other day type when `i` is cold and that one is warm; -1 if neither."""
        counts = st.n
        if counts[i] >= self.min_count:
            return i
        if self.buckets > 1:
            j = i + HOURS if i < HOURS else i - HOURS
            if counts[j] >= self.min_count:
                return j
        return -1

    def expect_at(self, st: BaselineState, where: tuple[int, int, float]) -> tuple[float, float] | None:
        """(expected value, sigma) at a located time, or None while its buckets are warming up."""
        a, b, w = where
        a, b = self._warm_index(st, a), self._warm_index(st, b)
        if a < 0 or b < 0:
            return None
        ms, k = st.ms, self.buckets  # means, then spreads
        mean = ms[a] + w * (ms[b] - ms[a])
        sigma = SIGMA_PER_MAD * (ms[k + a] + w * (ms[k + b] - ms[k + a]))
        return mean, sigma if sigma > self.min_spread else self.min_spread

    def expect(self, st: BaselineState, ts: float) -> tuple[float, float] | None:
        return self.expect_at(st, self.locate(ts))

    def deviation_at(self, st: BaselineState, value: float, ts: float) -> float:
        """Signed robust z of `value` at `ts` (0 while warming up)."""
        found = self.expect(st, ts)
        if found is None:
            return 0.0
        return (value - found[0]) / found[1]

    # -- learning -------------------------------------------------------------------------------

    def update(self, st: BaselineState, value: float, ts: float, flagged: bool | None = None,
               where: tuple[int, int, float] | None = None) -> None:
        """Learn one value. A `flagged` one (by default: deviating `threshold` or more) is learned at
        `flagged_weight`. `where` is `locate(ts)` when the caller has it already."""
        if where is None:
            where = self.locate(ts)
        if flagged is None:
            found = self.expect_at(st, where)
            flagged = found is not None and abs(value - found[0]) >= self.threshold * found[1]
        a, b, w = where
        weight = self.flagged_weight if flagged else 1.0
        if weight <= 0.0:
            return
        started = self._learn(st, a, 1.0 - w, w < 0.5, value, flagged, weight)
        if b != a or started:  # one bucket (b == a): learnt once, unless this reading started it
            self._learn(st, b, w, w >= 0.5, value, flagged, weight)

    def _learn(self, st: BaselineState, i: int, share: float, nearest: bool, value: float, flagged: bool,
               weight: float) -> bool:
        """Learn `value` into bucket `i` with `share` of the weight (update's two neighbours, one
        call each: no tuples built per reading). True when the bucket was empty (nothing learnt)."""
        ms, counts, k = st.ms, st.n, self.buckets  # means, then spreads
        n = counts[i]
        if n == 0:
            if nearest and not flagged:  # a bucket starts from its twin of the other day type, or here
                j = (i + HOURS if i < HOURS else i - HOURS) if self.buckets > 1 else i
                if counts[j] >= self.min_count:
                    ms[i], ms[k + i] = ms[j], ms[k + j]
                else:
                    ms[i] = value
                counts[i] = 1
            return True
        alpha = 1.0 / (n + 1)
        if alpha < self.alpha:
            alpha = self.alpha
        alpha *= share * weight
        r = value - ms[i]
        if n >= 5:
            limit = SIGMA_PER_MAD * ms[k + i]
            limit = self.clip * (limit if limit > self.min_spread else self.min_spread)
            r = limit if r > limit else -limit if r < -limit else r
        ms[i] += alpha * r
        ms[k + i] += alpha * ((r if r >= 0 else -r) - ms[k + i])
        if nearest and not flagged and n < _COUNT_CAP:  # what it flags does not warm it up
            counts[i] = n + 1
        return False

    def warm(self, st: BaselineState) -> bool:
        return any(n >= self.min_count for n in st.n)


class LearnedRule(CompiledRule):
    """A learned detector as a pipeline rule: a stateless object (its parameters) whose per-device
    state (`fresh()`) lives in the device's record. `evaluate` scores, learns and decides; the
    verdict's score is in [0, 1], 0.5 at the alert threshold."""

    in_order_only = True  # learned series need event time to move forward: late readings skip them

    def fresh(self) -> RuleState:
        raise NotImplementedError  # pragma: no cover - every learned rule implements it

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: Any) -> Verdict:
        raise NotImplementedError  # pragma: no cover - every learned rule implements it
