"""Per-device learned baselines: what is normal for this device at this hour of this kind of day.

A detector here follows river's habits: parameters in `__init__`, `learn_one(x)` and
`score_one(x)` on a mapping of fields (with `ts`, epoch seconds), bounded state held in one plain
dict (lists, floats, ints: msgpack- and JSON-able, so the pipeline can persist it per device and a
Faust table can hold it), `to_state()` / `from_state()`, an explicit warm-up, and no learning at
full weight from what it flags.

Rules share one detector object across devices and `bind` it to a device's state dict in turn
(the pipeline is single-threaded per partition), so the hot path allocates nothing per reading.

Why not river's HalfSpaceTrees: measured here, 10 trees of height 8 score+learn ~61k readings/s
(16 us each) and pickle to ~170 KB per model; 25 trees of height 15 run ~100/s and take 53 MB.
The state budget is 4 KiB per device, so the baselines are robust EW statistics in plain lists.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

from citywatch.model import Device, Finding, Reading

HOURS = 24
SIGMA_PER_MAD = 1.2533  # mean absolute deviation -> standard deviation, for a normal distribution
_COUNT_CAP = 127  # bucket counts fit msgpack's one-byte int

D = TypeVar("D", bound="Bound")


class Detector(Protocol):
    """What every learned detector offers (the contract test runs over all of them)."""

    state: dict[str, Any]

    def learn_one(self, x: Mapping[str, Any]) -> None: ...

    def score_one(self, x: Mapping[str, Any]) -> float: ...

    def to_state(self) -> dict[str, Any]: ...


class Bound:
    """A detector whose whole state is one plain dict, `self.state`."""

    state: dict[str, Any]

    def fresh(self) -> dict[str, Any]:  # pragma: no cover - every detector overrides it
        raise NotImplementedError

    def bind(self: D, state: dict[str, Any]) -> D:
        self.state = state
        return self

    def to_state(self) -> dict[str, Any]:
        """The state as plain data (a deep copy of dicts, lists and scalars)."""
        copied: dict[str, Any] = plain_copy(self.state)
        return copied

    def load(self: D, state: Mapping[str, Any]) -> D:
        """Bind to a copy of `state` (as produced by `to_state`)."""
        return self.bind(plain_copy(dict(state)))


def plain_copy(value: Any) -> Any:
    """A deep copy as plain data (dicts, lists, scalars): packed arrays become lists."""
    if isinstance(value, dict):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_copy(v) for v in value]
    if isinstance(value, array):
        return value.tolist()
    return value


def plain_hook(value: Any) -> Any:
    """msgspec `enc_hook` for device state: packed arrays are stored as plain lists."""
    if isinstance(value, array):
        return value.tolist()
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


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


class SeasonalBaseline(Bound):
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

    State: {"m": means, "s": spreads, "n": counts (capped at 127)}: 48 buckets serialise to about
    0.9 KiB of msgpack. In memory, means and spreads are float32 arrays and counts bytes
    (about 0.6 KiB for 48 buckets; lists of boxed floats took 3.5 KiB once every bucket was warm);
    `bind` packs lists (as stored) on first use.
    """

    __slots__ = ("field", "clock", "alpha", "min_count", "clip", "flagged_weight", "min_spread",
                 "threshold", "buckets", "state")

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
        self.state = self.fresh()

    def fresh(self) -> dict[str, Any]:
        n = self.buckets
        return {"m": array("f", bytes(4 * n)), "s": array("f", bytes(4 * n)), "n": array("B", bytes(n))}

    def bind(self, state: dict[str, Any]) -> SeasonalBaseline:
        if type(state["n"]) is list:  # as stored: plain lists
            state["m"], state["s"], state["n"] = array("f", state["m"]), array("f", state["s"]), array("B", state["n"])
        self.state = state
        return self

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

    def _warm_index(self, i: int) -> int:
        """`i`, or the same hour of the other day type when `i` is cold and that one is warm; -1 if neither."""
        counts = self.state["n"]
        if counts[i] >= self.min_count:
            return i
        if self.buckets > 1:
            j = i + HOURS if i < HOURS else i - HOURS
            if counts[j] >= self.min_count:
                return j
        return -1

    def expect_at(self, where: tuple[int, int, float]) -> tuple[float, float] | None:
        """(expected value, sigma) at a located time, or None while its buckets are warming up."""
        a, b, w = where
        a, b = self._warm_index(a), self._warm_index(b)
        if a < 0 or b < 0:
            return None
        m, s = self.state["m"], self.state["s"]
        mean = m[a] + w * (m[b] - m[a])
        sigma = SIGMA_PER_MAD * (s[a] + w * (s[b] - s[a]))
        return mean, sigma if sigma > self.min_spread else self.min_spread

    def expect(self, ts: float) -> tuple[float, float] | None:
        return self.expect_at(self.locate(ts))

    def deviation_at(self, value: float, ts: float) -> float:
        """Signed robust z of `value` at `ts` (0 while warming up)."""
        found = self.expect(ts)
        if found is None:
            return 0.0
        return (value - found[0]) / found[1]

    # -- learning -------------------------------------------------------------------------------

    def update(self, value: float, ts: float, flagged: bool | None = None,
               where: tuple[int, int, float] | None = None) -> None:
        """Learn one value. A `flagged` one (by default: deviating `threshold` or more) is learned at
        `flagged_weight`. `where` is `locate(ts)` when the caller has it already."""
        if where is None:
            where = self.locate(ts)
        if flagged is None:
            found = self.expect_at(where)
            flagged = found is not None and abs(value - found[0]) >= self.threshold * found[1]
        a, b, w = where
        weight = self.flagged_weight if flagged else 1.0
        if weight <= 0.0:
            return
        st = self.state
        m, s, counts = st["m"], st["s"], st["n"]
        for i, share, nearest in ((a, 1.0 - w, w < 0.5), (b, w, w >= 0.5)):
            n = counts[i]
            if n == 0:
                if nearest and not flagged:  # a bucket starts from its twin of the other day type, or here
                    j = (i + HOURS if i < HOURS else i - HOURS) if self.buckets > 1 else i
                    if counts[j] >= self.min_count:
                        m[i], s[i] = m[j], s[j]
                    else:
                        m[i] = value
                    counts[i] = 1
                continue
            alpha = 1.0 / (n + 1)
            if alpha < self.alpha:
                alpha = self.alpha
            alpha *= share * weight
            r = value - m[i]
            if n >= 5:
                limit = SIGMA_PER_MAD * s[i]
                limit = self.clip * (limit if limit > self.min_spread else self.min_spread)
                r = limit if r > limit else -limit if r < -limit else r
            m[i] += alpha * r
            s[i] += alpha * ((r if r >= 0 else -r) - s[i])
            if nearest and not flagged and n < _COUNT_CAP:  # what it flags does not warm it up
                counts[i] = n + 1
            if b == a:
                break

    # -- the river-style interface --------------------------------------------------------------

    def learn_one(self, x: Mapping[str, Any]) -> None:
        found = field_ts(x, self.field)
        if found is not None:
            self.update(*found)

    def score_one(self, x: Mapping[str, Any]) -> float:
        found = field_ts(x, self.field)
        return abs(self.deviation_at(*found)) if found is not None else 0.0

    @property
    def warm(self) -> bool:
        return any(n >= self.min_count for n in self.state["n"])


class LearnedRule(Bound):
    """A learned detector that is also a pipeline Rule: `evaluate` binds it to the device's own
    sub-dict of the shared state (under `key`), scores, learns and decides. `last_score` is the
    last reading's score in [0, 1] (0.5 at the alert threshold), read by replay."""

    name: str
    kinds: frozenset[str]
    key: str
    last_score: float = 0.0
    in_order_only = True  # learned series need event time to move forward: late readings skip them

    def evaluate(self, reading: Reading, device: Device, state: dict[str, Any]) -> Finding | None:
        raise NotImplementedError  # pragma: no cover - every learned rule implements it

    def learn_one(self, x: Mapping[str, Any]) -> None:
        """Learn the rule's `field` at the row's `ts` through its `step`; rules that read something
        else (lock events, occupancy) override this."""
        found = field_ts(x, getattr(self, "field", ""))
        if found is not None:
            self.step(*found)  # type: ignore[attr-defined]

    def bind_device(self, state: dict[str, Any]) -> dict[str, Any]:
        sub = state.get(self.key)
        if sub is None:
            sub = state[self.key] = self.fresh()
        self.state = sub
        return sub
