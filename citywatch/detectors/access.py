"""Learned detectors for smart locks on rented housing: far more distinct users than registered
tenants, a door opened at an hour unusual for that door, failed unlocks far above its normal."""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

from citywatch.detectors.base import DeviceState
from citywatch.detectors.baseline import HOURS, LearnedRule, LocalTime, SeasonalBaseline
from citywatch.detectors.settings import LockParams
from citywatch.model import Device, Finding, Reading

_UNLOCK, _FAIL = "unlock_ok", "unlock_fail"
_PRIOR = 0.5  # pseudo-unlocks per hour of day


def _event(x: Mapping[str, Any]) -> tuple[str, float] | None:
    event, ts = x.get("event"), x.get("ts")
    if not isinstance(event, str) or ts is None or isinstance(ts, str):
        return None
    return event, float(ts)


def user_hash(user: str) -> int:
    """A stable 32-bit id: the sketch keeps no user id in clear, and msgpack packs it in 5 bytes."""
    return zlib.crc32(user.encode())


class LockManyUsers(LearnedRule):
    """More distinct users with a successful unlock within `users_window_days` than
    tenants * users_factor + users_slack. A bounded sketch: at most `users_sketch` hashed user
    ids with their last-seen time (int seconds); the stalest is evicted. Devices without a
    registered `tenants` count are not judged (the constructor's `tenants` serves standalone use)."""

    name = "lock_many_users"
    kinds = frozenset({"lock"})
    key = "lmu"

    def __init__(self, params: LockParams | None = None, tenants: int | None = None) -> None:
        self.p = params or LockParams()
        self.tenants = tenants
        self.window_s = self.p.users_window_days * 86400.0
        self.state = self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {"h": [], "t": [], "a": 0}

    def limit(self, tenants: int) -> int:
        return min(int(tenants * self.p.users_factor) + self.p.users_slack, self.p.users_sketch - 1)

    def _distinct(self, user: str | None, ts: float, add: bool) -> int:
        st = self.state
        ids, seen = st["h"], st["t"]
        if add and user:
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
        count = sum(1 for t in seen if t >= cutoff)
        if not add and user and user_hash(user) not in ids:
            count += 1
        return count

    def _score(self, count: int, tenants: int | None) -> float:
        return count / (self.limit(tenants) + 1) if tenants else 0.0

    def learn_one(self, x: Mapping[str, Any]) -> None:
        found = _event(x)
        if found is not None and found[0] == _UNLOCK:
            self._distinct(x.get("user"), found[1], True)

    def score_one(self, x: Mapping[str, Any]) -> float:
        found = _event(x)
        if found is None or found[0] != _UNLOCK:
            return 0.0
        return self._score(self._distinct(x.get("user"), found[1], False), self.tenants)

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        if reading.values.get("event") != _UNLOCK or not device.tenants:
            return None
        st = self.bind_device(state)
        count = self._distinct(reading.values.get("user"), reading.ts, True)
        score = self._score(count, device.tenants)
        self.last_score = score / (score + 1.0)
        limit = self.limit(device.tenants)
        if count > limit:
            st["a"] = 1
            return Finding(self.name, True, "warning", count, float(limit),
                           f"{count} distinct users within {self.p.users_window_days:g} days for "
                           f"{device.tenants} registered tenants")
        if st["a"]:
            st["a"] = 0
            return Finding(self.name, False, value=count)
        return None


class LockUnusualHour(LearnedRule):
    """A successful unlock at an hour of day that is rare for this door: the share of its unlocks
    in that hour (smoothed over the neighbouring hours, with a prior) is below `hour_p_min`, once
    `hour_min_unlocks` have been learned. 24 decayed counts (half-life `hour_halflife_days`); an
    unusual unlock is learned at `flagged_weight`. Clears at the next unlock at a usual hour."""

    name = "lock_unusual_hour"
    kinds = frozenset({"lock"})
    key = "luh"

    def __init__(self, clock: LocalTime | None = None, params: LockParams | None = None,
                 flagged_weight: float = 0.05) -> None:
        self.clock = clock if clock is not None else LocalTime()
        self.p = params or LockParams()
        self.tau_s = self.p.hour_halflife_days * 86400.0 / math.log(2)
        self.flagged_weight = flagged_weight
        self.state = self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {"c": [0.0] * HOURS, "t": 0.0, "a": 0}

    def _score(self, ts: float) -> tuple[float, int, float]:
        """(p_min / share of this hour, hour, share); 0 while fewer than the warm-up unlocks."""
        st = self.state
        counts = st["c"]
        decay = math.exp(-(ts - st["t"]) / self.tau_s) if ts > st["t"] else 1.0
        total = sum(counts) * decay
        hour = self.clock.hour(ts)
        if total < self.p.hour_min_unlocks:
            return 0.0, hour, 1.0
        near = 0.25 * counts[hour - 1] + 0.5 * counts[hour] + 0.25 * counts[(hour + 1) % HOURS]
        share = (near * decay + _PRIOR) / (total + _PRIOR * HOURS)
        return self.p.hour_p_min / share, hour, share

    def step(self, ts: float) -> tuple[float, int, float]:
        st = self.state
        score, hour, share = self._score(ts)
        if ts > st["t"]:
            decay = math.exp(-(ts - st["t"]) / self.tau_s)
            counts = st["c"]
            for i in range(HOURS):
                counts[i] *= decay
            st["t"] = ts
        st["c"][hour] += self.flagged_weight if score >= 1.0 else 1.0
        return score, hour, share

    def learn_one(self, x: Mapping[str, Any]) -> None:
        found = _event(x)
        if found is not None and found[0] == _UNLOCK:
            self.step(found[1])

    def score_one(self, x: Mapping[str, Any]) -> float:
        found = _event(x)
        return self._score(found[1])[0] if found is not None and found[0] == _UNLOCK else 0.0

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        if reading.values.get("event") != _UNLOCK:
            return None
        st = self.bind_device(state)
        score, hour, share = self.step(reading.ts)
        self.last_score = score / (score + 1.0)
        if score >= 1.0:
            st["a"] = 1
            return Finding(self.name, True, "warning", hour, None,
                           f"door opened at {hour:02d}:00-{hour:02d}:59, an unusual hour for this door "
                           f"({100 * share:.2f}% of its unlocks)")
        if st["a"]:
            st["a"] = 0
            return Finding(self.name, False, value=hour)
        return None


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
    key = "luf"
    min_rate = 0.05  # failures per hour assumed at least

    def __init__(self, baseline: SeasonalBaseline, params: LockParams | None = None) -> None:
        self.baseline = baseline
        self.p = params or LockParams()
        self.bits = -math.log(self.p.fail_p_tail)
        self.state = self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {"b": self.baseline.fresh(), "h": None, "k": 0, "a": 0}

    def _score(self, failures: int, ts: float) -> float:
        if failures < self.p.fail_min:
            return 0.0
        found = self.baseline.bind(self.state["b"]).expect(ts)
        if found is None:
            return 0.0
        lam = found[0] if found[0] > self.min_rate else self.min_rate
        return -math.log(max(poisson_tail(failures, lam), 1e-300)) / self.bits

    def _roll(self, ts: float) -> bool:
        """Close the hours before `ts`'s hour into the baseline; True when an hour closed."""
        st = self.state
        hour = int(ts // 3600)
        last = st["h"]
        if last is None:
            st["h"] = hour
            return False
        if hour <= last:
            return False
        self.baseline.bind(st["b"])
        flagged = bool(st["a"])
        self.baseline.update(float(st["k"]), (last + 0.5) * 3600.0, flagged)
        for skipped in range(last + 1, min(hour, last + 25)):
            self.baseline.update(0.0, (skipped + 0.5) * 3600.0)
        st["h"] = hour
        st["k"] = 0
        return True

    def step(self, event: str, ts: float) -> tuple[float, bool]:
        """(score of this reading, whether an hour closed before it); then learn."""
        closed = self._roll(ts)
        st = self.state
        if event == _FAIL:
            st["k"] += 1
            return self._score(st["k"], ts), closed
        return 0.0, closed

    def learn_one(self, x: Mapping[str, Any]) -> None:
        found = _event(x)
        if found is not None:
            self.step(*found)

    def score_one(self, x: Mapping[str, Any]) -> float:
        found = _event(x)
        if found is None or found[0] != _FAIL:
            return 0.0
        st = self.state
        same_hour = st["h"] is not None and int(found[1] // 3600) == st["h"]
        return self._score((st["k"] if same_hour else 0) + 1, found[1])

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        event = reading.values.get("event")
        if event is None:
            return None
        st = self.bind_device(state)
        score, closed = self.step(event, reading.ts)
        self.last_score = score / (score + 1.0)
        if score >= 1.0:
            st["a"] = 1
            return Finding(self.name, True, "warning", st["k"], None,
                           f"{st['k']} failed unlocks this hour, far above this door's normal")
        if closed and st["a"]:
            st["a"] = 0
            return Finding(self.name, False, value=0)
        return None
