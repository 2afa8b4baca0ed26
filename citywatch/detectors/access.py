"""Learned detectors for smart locks on rented housing: far more distinct users than registered
tenants, a door opened at an hour unusual for that door, failed unlocks far above its normal."""

from __future__ import annotations

import math
import zlib
from array import array

from citywatch.detectors.base import QUIET, Verdict
from citywatch.detectors.baseline import HOURS, BaselineState, LearnedRule, LocalTime, SeasonalBaseline
from citywatch.detectors.record import DeviceRecord, RuleState
from citywatch.kinds.lock import LockParams
from citywatch.model import Device, Finding, Reading

_UNLOCK, _FAIL = "unlock_ok", "unlock_fail"
_PRIOR = 0.5  # pseudo-unlocks per hour of day


class UsersState(RuleState):
    """The sketch: hashed user ids and when each last unlocked (int seconds); alert open."""

    __slots__ = ("users", "seen", "open")
    FIELDS = ("users", "seen", "open")
    V1 = ("h", "t", "a")

    def __init__(self) -> None:
        self.users = array("I")  # crc32 of the user id
        self.seen = array("q")  # epoch seconds
        self.open = 0


class HourState(RuleState):
    """Decayed unlock counts per local hour (float64), the time they were decayed to; alert open."""

    __slots__ = ("counts", "at", "open")
    FIELDS = ("counts", "at", "open")
    V1 = ("c", "t", "a")

    def __init__(self) -> None:
        self.counts = array("d", bytes(8 * HOURS))
        self.at = 0.0
        self.open = 0


class FailuresHourState(RuleState):
    """The baseline of failures per hour; the current clock hour (-1 before the first) and its
    failures so far; alert open."""

    __slots__ = ("baseline", "hour", "failures", "open")
    FIELDS = ("baseline", "hour", "failures", "open")
    V1 = ("b", "h", "k", "a")

    def __init__(self, baseline: BaselineState) -> None:
        self.baseline = baseline
        self.hour = -1
        self.failures = 0
        self.open = 0


def user_hash(user: str) -> int:
    """A stable 32-bit id: the sketch keeps no user id in clear, and msgpack packs it in 5 bytes."""
    return zlib.crc32(user.encode())


class LockManyUsers(LearnedRule):
    """More distinct users with a successful unlock within `users_window_days` than
    tenants * users_factor + users_slack. A bounded sketch: at most `users_sketch` hashed user
    ids with their last-seen time (int seconds); the stalest is evicted. Devices without a
    registered `tenants` count are not judged."""

    name = "lock_many_users"
    kinds = frozenset({"lock"})
    v1_key = "lmu"

    def __init__(self, params: LockParams | None = None) -> None:
        self.p = params or LockParams()
        self.window_s = self.p.users_window_days * 86400.0

    def fresh(self) -> UsersState:
        return UsersState()

    def limit(self, tenants: int) -> int:
        return min(int(tenants * self.p.users_factor) + self.p.users_slack, self.p.users_sketch - 1)

    def distinct(self, st: UsersState, user: str | None, ts: float) -> int:
        """Distinct users within the window once `user` (if any) unlocked at `ts`."""
        ids, seen = st.users, st.seen
        if user:
            uid = user_hash(user)
            try:
                seen[ids.index(uid)] = int(ts)
            except ValueError:
                ids.append(uid)
                seen.append(int(ts))
                if len(ids) > self.p.users_sketch:
                    stalest = seen.index(min(seen))
                    del ids[stalest]
                    del seen[stalest]
        cutoff = ts - self.window_s
        return sum(1 for t in seen if t >= cutoff)

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: UsersState) -> Verdict:
        if reading.values.get("event") != _UNLOCK or not device.tenants:
            return QUIET
        user = reading.values.get("user")
        count = self.distinct(state, user if isinstance(user, str) else None, reading.ts)
        limit = self.limit(device.tenants)
        score = count / (limit + 1)
        squashed = score / (score + 1.0)
        if count > limit:
            state.open = 1
            return Finding(self.name, True, "warning", count, float(limit),
                           f"{count} distinct users within {self.p.users_window_days:g} days for "
                           f"{device.tenants} registered tenants"), squashed
        if state.open:
            state.open = 0
            return Finding(self.name, False, value=count), squashed
        return None, squashed


class LockUnusualHour(LearnedRule):
    """A successful unlock at an hour of day that is rare for this door: the share of its unlocks
    in that hour (smoothed over the neighbouring hours, with a prior) is below `hour_p_min`, once
    `hour_min_unlocks` have been learned. 24 decayed counts (half-life `hour_halflife_days`); an
    unusual unlock is learned at `flagged_weight`. Clears at the next unlock at a usual hour."""

    name = "lock_unusual_hour"
    kinds = frozenset({"lock"})
    v1_key = "luh"

    def __init__(self, clock: LocalTime | None = None, params: LockParams | None = None,
                 flagged_weight: float = 0.05) -> None:
        self.clock = clock if clock is not None else LocalTime()
        self.p = params or LockParams()
        self.tau_s = self.p.hour_halflife_days * 86400.0 / math.log(2)
        self.flagged_weight = flagged_weight

    def fresh(self) -> HourState:
        return HourState()

    def _score(self, st: HourState, ts: float) -> tuple[float, int, float]:
        """(p_min / share of this hour, hour, share); 0 while fewer than the warm-up unlocks."""
        counts = st.counts
        decay = math.exp(-(ts - st.at) / self.tau_s) if ts > st.at else 1.0
        total = sum(counts) * decay
        hour = self.clock.hour(ts)
        if total < self.p.hour_min_unlocks:
            return 0.0, hour, 1.0
        near = 0.25 * counts[hour - 1] + 0.5 * counts[hour] + 0.25 * counts[(hour + 1) % HOURS]
        share = (near * decay + _PRIOR) / (total + _PRIOR * HOURS)
        return self.p.hour_p_min / share, hour, share

    def step(self, st: HourState, ts: float) -> tuple[float, int, float]:
        """(score, hour, share) of an unlock at `ts`; then learn it."""
        score, hour, share = self._score(st, ts)
        counts = st.counts
        if ts > st.at:
            decay = math.exp(-(ts - st.at) / self.tau_s)
            for i in range(HOURS):
                counts[i] *= decay
            st.at = ts
        counts[hour] += self.flagged_weight if score >= 1.0 else 1.0
        return score, hour, share

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: HourState) -> Verdict:
        if reading.values.get("event") != _UNLOCK:
            return QUIET
        score, hour, share = self.step(state, reading.ts)
        squashed = score / (score + 1.0)
        if score >= 1.0:
            state.open = 1
            return Finding(self.name, True, "warning", hour, None,
                           f"door opened at {hour:02d}:00-{hour:02d}:59, an unusual hour for this door "
                           f"({100 * share:.2f}% of its unlocks)"), squashed
        if state.open:
            state.open = 0
            return Finding(self.name, False, value=hour), squashed
        return None, squashed


def poisson_tail(k: int, lam: float) -> float:
    """P(X >= k) for X ~ Poisson(lam)."""
    if k <= 0:
        return 1.0
    term = math.exp(-lam)
    below = term
    for i in range(1, k):
        term *= lam / i
        below += term
    tail = 1.0 - below
    if tail < 1e-12:  # cancellation: sum the upper terms instead
        term *= lam / k
        tail = 0.0
        i = k
        while term > 1e-300 and i < k + 200:
            tail += term
            i += 1
            term *= lam / i
    return tail


class LockUnusualFailures(LearnedRule):
    """Failed unlocks in the current clock hour at least `fail_min` and less likely than
    `fail_p_tail` under a Poisson law with this door's learned failures per hour (a baseline fed
    one count per completed clock hour, skipped hours up to a day counting as zero; the
    registry gives it a single bucket, as hourly counts are too sparse for 48). Clears when
    the hour ends."""

    name = "lock_unusual_failures"
    kinds = frozenset({"lock"})
    v1_key = "luf"
    min_rate = 0.05  # failures per hour assumed at least

    def __init__(self, baseline: SeasonalBaseline, params: LockParams | None = None) -> None:
        self.baseline = baseline
        self.p = params or LockParams()
        self.bits = -math.log(self.p.fail_p_tail)

    def fresh(self) -> FailuresHourState:
        return FailuresHourState(self.baseline.fresh())

    def _score(self, st: FailuresHourState, failures: int, ts: float) -> float:
        if failures < self.p.fail_min:
            return 0.0
        expected = self.baseline.expect(st.baseline, ts)
        if expected is None:
            return 0.0
        lam = expected[0] if expected[0] > self.min_rate else self.min_rate
        return -math.log(max(poisson_tail(failures, lam), 1e-300)) / self.bits

    def _roll(self, st: FailuresHourState, ts: float) -> bool:
        """Close the hours before `ts`'s hour into the baseline; True when an hour closed."""
        hour = int(ts // 3600)
        last = st.hour
        if last < 0:
            st.hour = hour
            return False
        if hour <= last:
            return False
        self.baseline.update(st.baseline, float(st.failures), (last + 0.5) * 3600.0, bool(st.open))
        for skipped in range(last + 1, min(hour, last + 25)):
            self.baseline.update(st.baseline, 0.0, (skipped + 0.5) * 3600.0)
        st.hour = hour
        st.failures = 0
        return True

    def step(self, st: FailuresHourState, event: str, ts: float) -> tuple[float, bool]:
        """(score of this reading, whether an hour closed before it); then learn."""
        closed = self._roll(st, ts)
        if event == _FAIL:
            st.failures += 1
            return self._score(st, st.failures, ts), closed
        return 0.0, closed

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord,
                 state: FailuresHourState) -> Verdict:
        event = reading.values.get("event")
        if not isinstance(event, str):
            return QUIET
        score, closed = self.step(state, event, reading.ts)
        squashed = score / (score + 1.0)
        if score >= 1.0:
            state.open = 1
            return Finding(self.name, True, "warning", state.failures, None,
                           f"{state.failures} failed unlocks this hour, far above this door's normal"), squashed
        if closed and state.open:
            state.open = 0
            return Finding(self.name, False, value=0), squashed
        return None, squashed
