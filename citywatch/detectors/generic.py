"""The generic detector for a single numeric series (replay with no kind): one fixed set of
parameters for any series, online, no look-ahead, O(1) time and state per row.

Three raw surprises per row, each a |z| against exponentially weighted (EW) statistics learned
before the row (updates are Huber-clipped at `clip` spreads, so an outlier barely teaches):
  local       the value against a fast EW mean (about 10 rows) and the EW mean absolute deviation
  step        the first difference against the EW mean absolute difference
  context     the value against level + season: a slow EW level plus a per-hour-of-day offset
              (24 buckets, weekdays and weekends apart, UTC) learned at about `gamma` per day;
              a value that is normal in itself but not at this time of day (a flat day, a busy
              night) is surprising here. Off without timestamps or with fewer than 12 rows a day.
Each raw |z| is capped at `cap` and square-rooted (heavy tails weigh less), then read at two time
scales: as it is (a spike) and EW-smoothed over about 10 rows (a sustained small shift, a
variance change, denser spikes).

Anomaly likelihood (after Numenta's AnomalyLikelihood): each of the six streams is compared with
its own long-run distribution (EW mean and variance, about 1,000 rows, updates clipped at `clip`
standard deviations): z_lik = (stream - mean) / sd, the Gaussian tail of how improbable the
recent surprise is for this series. A series that is always spiky raises its own bar; a quiet
one alerts on its first real departure. The combined evidence is the largest z_lik.

Decision and score: anomaly_score = z / (z + bar), where bar is `threshold` (4.5 standard
deviations, a one-sided Gaussian tail probability of about 3.4e-6) or, just after an alert,
`raise_k` times that alert's z, halving every `halflife` rows (a lasting change is flagged once,
then adopted; a recurring event stops alerting). is_alert is exactly anomaly_score >= 0.5: one
global threshold of 0.5 on the score reproduces the decisions, and a lower one trades more false
alarms for earlier or more detections. Scores are 0 during the first `warmup` rows (not judged).

State: about 90 floats (the 48 season buckets included) and, until the sampling interval is
known, the first 50 timestamp spacings; `to_state()` is plain data and `from_state` continues
exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

DAY_S = 86400.0
BUCKETS = 24  # hour-of-day buckets, per day type (weekday, weekend)
_SD_FLOOR = 0.05  # smallest long-run sd of a stream (a constant series is not infinitely surprised)
_STREAMS = 6

# The state's scalars, in order (`to_state` names them).
_SCALARS = ("n", "since", "prev", "m", "dev", "sdev", "level", "cdev", "sm0", "sm1", "sm2", "raised", "g_row")


class GenericDetector:
    """See the module docstring. `process(value, ts)` scores, decides and learns one row and
    returns (is_alert, anomaly_score); `score_one` / `learn_one` take {"value": x, "ts": t}."""

    def __init__(self, *, a_fast: float = 0.1, a_dev: float = 0.02, a_level: float = 0.01, gamma: float = 0.1,
                 a_ctx_dev: float = 0.01, a_smooth: float = 0.1, a_long: float = 0.001, cap: float = 10.0,
                 clip: float = 3.0, threshold: float = 4.5, warmup: int = 150, raise_k: float = 2.0,
                 halflife: float = 200.0, follow: int = 30) -> None:
        self.a_fast, self.a_dev, self.a_level, self.gamma = a_fast, a_dev, a_level, gamma
        self.a_ctx_dev, self.a_smooth, self.a_long = a_ctx_dev, a_smooth, a_long
        self.cap, self.clip, self.threshold, self.warmup, self.raise_k = cap, clip, threshold, warmup, raise_k
        self.decay = 0.5 ** (1.0 / halflife)
        self.follow = follow
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.prev = self.m = self.dev = self.sdev = self.level = self.cdev = 0.0
        self.sm0 = self.sm1 = self.sm2 = 0.0  # the smoothed raw surprises
        self.mu = [0.0] * _STREAMS  # long-run mean of each stream
        self.var = [0.0] * _STREAMS  # and its variance
        self.raised = 0.0  # the bar after an alert (decaying)
        self.since = self.follow  # rows since the last alert, counted up to `follow`
        self.season = [0.0] * (2 * BUCKETS)
        self.g_row = 0.0  # the season's learning rate per row; 0 while unknown, or off
        self.gaps: list[float] | None = []  # the first timestamp spacings; None once decided
        self.last_ts: float | None = None

    # -- scoring --------------------------------------------------------------------------------

    def _bucket(self, ts: float) -> int:
        day = ts // DAY_S
        weekend = (int(day) + 3) % 7 >= 5  # 1970-01-01 was a Thursday
        return int((ts - day * DAY_S) * (BUCKETS / DAY_S)) % BUCKETS + (BUCKETS if weekend else 0)

    def _evaluate(self, x: float, ts: float | None) -> tuple[float, tuple[float, ...], int, float, float, float]:
        """(evidence z, the six streams, season bucket or -1, step, local and context residuals) of
        `x`, before learning it. Changes nothing."""
        m = self.m
        eps = 1e-9 * (1.0 + (m if m > 0 else -m))
        cap = self.cap
        dev = self.dev if self.dev > eps else eps
        local = x - m
        z0 = (local if local > 0 else -local) / dev
        d = x - self.prev
        sdev = self.sdev if self.sdev > eps else eps
        z1 = (d if d > 0 else -d) / sdev
        b = -1
        s = 0.0
        if self.g_row and ts is not None:
            b = self._bucket(ts)
            s = self.season[b]
        r = x - self.level - s
        cdev = self.cdev if self.cdev > eps else eps
        z2 = (r if r > 0 else -r) / cdev
        r0 = math.sqrt(z0 if z0 < cap else cap)
        r1 = math.sqrt(z1 if z1 < cap else cap)
        r2 = math.sqrt(z2 if z2 < cap else cap)
        a = self.a_smooth
        streams = (r0, r1, r2, self.sm0 + a * (r0 - self.sm0), self.sm1 + a * (r1 - self.sm1),
                   self.sm2 + a * (r2 - self.sm2))
        best = 0.0
        mu, var = self.mu, self.var
        for k in range(_STREAMS):
            v = var[k]
            sd = math.sqrt(v) if v > _SD_FLOOR * _SD_FLOOR else _SD_FLOOR
            z = (streams[k] - mu[k]) / sd
            if z > best:
                best = z
        return best, streams, b, d, local, r

    def _score(self, best: float) -> float:
        if self.n < self.warmup or best <= 0.0:
            return 0.0
        bar = self.threshold if self.threshold > self.raised else self.raised
        return best / (best + bar)

    # -- learning -------------------------------------------------------------------------------

    def _learn(self, x: float, ts: float | None, streams: tuple[float, ...], b: int, d: float, local: float,
               r: float) -> None:
        n = self.n
        if n == 0:
            self.prev = self.m = self.level = x
            self.n = 1
            self._time(ts)
            return
        clip = self.clip
        # the streams' long-run distributions (a running mean until 1/a_long rows)
        al = self.a_long if n * self.a_long > 1.0 else 1.0 / n
        mu, var = self.mu, self.var
        for k in range(_STREAMS):
            v, mk, vk = streams[k], mu[k], var[k]
            if n > 30:
                limit = mk + clip * math.sqrt(vk) + 0.5
                if v > limit:
                    v = limit
            delta = v - mk
            mu[k] = mk + al * delta
            var[k] = (1.0 - al) * (vk + al * delta * delta)
        self.sm0, self.sm1, self.sm2 = streams[3], streams[4], streams[5]
        # the value's models, Huber-clipped once warm
        warm = n >= 30
        ad = self.a_dev if n * self.a_dev > 1.0 else 1.0 / n
        limit = clip * self.dev
        if warm and not -limit < local < limit:
            local = limit if local > 0 else -limit
        self.m += self.a_fast * local
        self.dev += ad * ((local if local > 0 else -local) - self.dev)
        limit = clip * self.sdev
        if warm and not -limit < d < limit:
            d = limit if d > 0 else -limit
        self.sdev += ad * ((d if d > 0 else -d) - self.sdev)
        limit = clip * self.cdev
        if warm and not -limit < r < limit:
            r = limit if r > 0 else -limit
        al = self.a_level if n * self.a_level > 1.0 else 1.0 / n
        self.level += al * r
        if b >= 0:
            self.season[b] += self.g_row * (1.0 - al) * r
        ac = self.a_ctx_dev if n * self.a_ctx_dev > 1.0 else 1.0 / n
        self.cdev += ac * ((r if r > 0 else -r) - self.cdev)
        self.prev = x
        self.n = n + 1
        if self.gaps is not None:
            self._time(ts)

    def _time(self, ts: float | None) -> None:
        """The season's rate from the median spacing of the first 50 timestamps."""
        gaps = self.gaps
        if gaps is None or ts is None:
            return
        if self.last_ts is not None and ts > self.last_ts:
            gaps.append(ts - self.last_ts)
        self.last_ts = ts
        if len(gaps) >= 50:
            rows_per_day = DAY_S / sorted(gaps)[len(gaps) // 2]
            per_visit = rows_per_day / BUCKETS  # rows per bucket per day
            self.g_row = 0.0 if rows_per_day < BUCKETS / 2 else self.gamma / max(per_visit, 1.0)
            self.gaps = None

    # -- the interface --------------------------------------------------------------------------

    def process(self, value: float, ts: float | None = None) -> tuple[bool, float]:
        """Score, decide and learn one row: (an alert opens here, anomaly score in [0, 1))."""
        if not math.isfinite(value):
            return False, 0.0
        if ts is not None and not math.isfinite(ts):
            ts = None
        best, streams, b, d, local, r = self._evaluate(value, ts)
        score = self._score(best) if self.n else 0.0
        alert = score >= 0.5
        if alert:
            self.since = 0
        if self.since < self.follow:
            if self.raise_k * best > self.raised:
                self.raised = self.raise_k * best  # the event's own growth raises its bar
            self.since += 1
        self.raised *= self.decay
        self._learn(value, ts, streams, b, d, local, r)
        return alert, score

    @staticmethod
    def _row(x: Mapping[str, Any]) -> tuple[float, float | None] | None:
        value, ts = x.get("value"), x.get("ts")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return None
        ok = isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts)
        return float(value), (float(ts) if ok else None)  # type: ignore[arg-type]

    def score_one(self, x: Mapping[str, Any]) -> float:
        """The anomaly score of a row {"value", "ts"} without learning it."""
        row = self._row(x)
        if row is None or not self.n:
            return 0.0
        return self._score(self._evaluate(*row)[0])

    def learn_one(self, x: Mapping[str, Any]) -> None:
        """Learn a row without deciding (the bar after an alert still decays)."""
        row = self._row(x)
        if row is not None:
            _, streams, b, d, local, r = self._evaluate(*row)
            self.since = min(self.since + 1, self.follow)
            self.raised *= self.decay
            self._learn(row[0], row[1], streams, b, d, local, r)

    # -- state ----------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Plain data (lists, floats, ints): everything needed to continue exactly."""
        state: dict[str, Any] = {name: getattr(self, name) for name in _SCALARS}
        state.update(mu=list(self.mu), var=list(self.var), season=list(self.season),
                     gaps=None if self.gaps is None else list(self.gaps), last_ts=self.last_ts)
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **params: Any) -> GenericDetector:
        detector = cls(**params)
        for name in _SCALARS:
            setattr(detector, name, int(state[name]) if name in ("n", "since") else float(state[name]))
        detector.mu = [float(v) for v in state["mu"]]
        detector.var = [float(v) for v in state["var"]]
        detector.season = [float(v) for v in state["season"]]
        if len(detector.mu) != _STREAMS or len(detector.var) != _STREAMS or len(detector.season) != 2 * BUCKETS:
            raise ValueError("generic detector state of another shape")
        detector.gaps = None if state["gaps"] is None else [float(v) for v in state["gaps"]]
        detector.last_ts = None if state["last_ts"] is None else float(state["last_ts"])
        return detector
