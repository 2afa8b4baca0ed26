"""The generic detector for a single numeric series (replay with no kind): one fixed set of
parameters for any series, online, no look-ahead, O(1) time and state per row.

A series whose first `counts` rows are all whole numbers >= 0 (counts: messages, vehicles,
events) is read through the Anscombe transform 2 * sqrt(x + 3/8) from then on, its models started
afresh: a count's spread grows with its level (Poisson), so a busy hour's ordinary swing would
otherwise look like a quiet hour's anomaly; the square root makes the spread about 1 at any level.

First the value is deseasonalised: r = value - level - season, the season a per-hour-of-day offset
(24 buckets, weekdays and weekends apart, UTC, read and learned linearly interpolated between the
two nearest bucket centres; a bucket never seen starts from the other day type's; each day type
also learns `share` of the other's mean change, so a change of level learned from Monday to Friday
is not new on Saturday) learned at `gamma` per day (1 + `season_start`, 2.5 times that, in the
first two days of rows: a new device's rhythm is unknown; issue 20's tenth round, 2.5 since the
eleventh), on a level slower than `level_days` days. Without timestamps, or with fewer than 12 rows
a day, the season is off and the level is a medium-term mean (about 100 rows).

Raw surprises per row, each a |z| against exponentially weighted (EW) statistics learned before
the row (updates are Huber-clipped at `clip` spreads, so an outlier barely teaches):
  local       r against its fast EW mean (about 10 rows) and EW mean absolute deviation
  step        the step of r from the previous row against its EW mean absolute step (on a daily
              rhythm the rhythm's own slope no longer counts as surprise)
  context     r itself against its slow EW mean absolute deviation: a value normal in itself but
              not at this time of day (a flat day, a busy night)
Each raw |z| is capped at `cap` and square-rooted (heavy tails weigh less); local is also read
EW-smoothed over about 10 rows, both ways (above its usual: a variance change, denser spikes;
below it: a stuck value, a dead feed resting at a floor, a signal gone flat, which no |z| sees),
the step surprise smoothed likewise and read below its usual only (a value that stopped moving;
above, it added nothing), and the signed context z is smoothed over about 10 rows (`a_sign`): a
sustained small shift in one direction, which unsigned surprises blur. Six streams, seven
readings, at two time scales (an unsigned smoothed context stream added nothing once the signed
one was there, and was dropped).

Anomaly likelihood (after Numenta's AnomalyLikelihood): each stream is compared with its own
long-run distribution (EW mean and variance, about 1,000 rows, updates clipped at `clip` standard
deviations): z_lik = (stream - mean) / sd, the Gaussian tail of how improbable the recent surprise
is for this series. A series that is always spiky raises its own bar; a quiet one alerts on its
first real departure. The combined evidence is the largest z_lik, or the two strongest of the three
smoothed readings (local both ways, signed, step below) read together: their sum over sqrt(2)
(Stouffer's), less `joint` (0.5) for having picked two of three. A failing sensor that reads a
little low and nearly flat moves the level and the spread at once, each short of the bar (caught on
15 series of 20 with it, 5 without; issue 20's eighth round). And the local reading is read on two
rows in a row: where both reach `pair` (1.75), the smaller plus `pair` (an isolated extreme of noise
is one row, an event lasts: a 6-sd dip of two rows on a daily rhythm reads about 4 on each row, caught
on 19 series of 20 with it, 6 without), `pair` shrunk by the reading's lag-1 correlation rho (in
AR(0.9) noise about 0.47: consecutive surprises are common there); issue 20's ninth round.

A value beyond the range of every value read so far by more than `margin` (5%) of that range counts as
evidence at the bar (after HTM's "spatial anomaly" in the NAB benchmark's detector): a series of
frequent bursts raises its own bar and its surprises are capped, so a value far beyond all its
bursts would otherwise read like one more. It must also lie beyond by one context spread (`cdev`,
about 0.8 sd): stationary noise sets records just beyond its range from time to time (a 3.2-sd
value after 2,000 rows whose largest was 2.8 sd). The range is read once it holds `warmup` rows
and, on a rhythm, a whole day of them (a day's first hours do not span its range); from its 30th
row on, read or not, it grows by at most its width and a spread a row: one glitch (65535 from a
failing ADC) does not widen it for good (nor, in the first day, the floor on the spreads below).
The spreads are read as at least 1e-4 of the range: on a series without noise, the season's misfit
(0.01% of a rhythm's amplitude) would otherwise be as large as its spreads.

A series that has read one value only for `_WARM` rows or more (a dry street's water gauge at 0, a
reading held at start-up) starts its models afresh at its first other value: its spreads were 0
and every update is clipped at `clip` spreads, so it would never learn anything more (its level
stayed at the flat value for good). A series taken for counts reads raw values, its models afresh,
from its first value that is not a whole number >= 0 (a gauge dry at first is not a count).

Decision and score: anomaly_score = z / (z + bar), the larger of the two kinds' below. The bar is
`threshold` (4.5 standard deviations, a one-sided Gaussian tail of about 3.4e-6) plus `press_k` per
recent alert (alarm pressure, each alert's share halving every `press_halflife` rows: a series that
keeps alerting raises its own bar, a series that alerted once long ago does not; an alert within
`press_gap` rows of the last counts `press_near` of one, as it is often the same event again). Each
kind of reading has its own pressure: the raw readings with the range and the pair, the smoothed ones with the
joint reading; an alert's pressure is its own kind's in full and `press_cross` (half) on the other's
bar, so a series whose ordinary rows keep alerting still flags a sustained change, or a spike after
a plateau, at nearly its usual bar (issue 20's ninth round: 73.05 to 73.54 on the 19 seeds read). The
raw readings' pressure is kept per direction of the row's step: an alert's in full on its direction
and `press_dir` (0.6) on the other, read as 2 / (1 + `press_dir`) of it, so that noise alerting both
ways alike keeps its bar while bursts that go one way (latency, counts) raise the bar of rising rows
and leave more of a dip's surprise (the smoothed bar reads both directions' as one). An
alert where the other kind's score reached `press_both` (0.45) adds to both pressures: a single
extreme of heavy-tailed noise moves the signed stream nearly to the bar too, and one kind paying
half of the other's let Student-t(3) noise alert 45.6 times a 30-day series, not 39.0 (38.1 with
it). Just after an alert the bar is raised to `raise_k` times that alert's z, halving every
`halflife` rows while the evidence stays at the bar or above and every `quiet_halflife` rows once it
is below (a lasting change is flagged once, then adopted; once the event is over, the detector is
not deaf for days: a raise of 60 took 1,000 rows to fade). is_alert is exactly anomaly_score >= 0.5:
one global threshold of 0.5 on the score reproduces the decisions, and a lower one trades more false
alarms for earlier or more detections. Scores are 0 during the first `warmup` rows (not judged).

State: 37 numbers, 6 inverse sds and 48 season buckets and, until the sampling interval is known, the first 50
timestamp spacings (about 1 KiB of msgpack); `to_state()` is plain data and `from_state`
continues exactly. A state of an earlier format is taken over: the 24-number one (issue 20's
second round) keeps reading raw values, so nothing it learned is lost, and its smoothed step
stream starts from the smoothed local one's statistics (alike on noise: no warm-up, no burst of
alarms); the 23-number one (before that) keeps what the formats share, the rest starts afresh; the
28-number one (issue 20's third round) keeps everything, its range of values starts afresh; the
31-number one (the sixth) keeps everything, its season offsets start at 0 (as it had none); the
33-number one (the eighth) keeps everything, its one pressure shared so that both bars stand where
its bar stood, the pair afresh (the previous row's reading and rho at 0); the 36-number one (the
ninth) keeps everything, its one raw pressure shared by both directions so that each bar stands where
it stood. Pure Python floats, one flat state list unpacked and repacked per row, the long-run sds refreshed
every 8 rows (the speed: about 500,000 rows/s in-process on one core, compiled: the unpacked numbers
are typed locals, so mypyc does their arithmetic in C doubles).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

DAY_S = 86400.0
BUCKETS = 24  # hour-of-day buckets, per day type (weekday, weekend)
_SD_FLOOR = 0.05  # smallest long-run sd of a stream (a constant series is not infinitely surprised)
_WARM = 30  # rows before updates are clipped
_RANGE_FLOOR = 1e-4  # the smallest spread, as a share of the range read (a noise-free rhythm's misfit is not noise)
_LIMIT = 1e150  # larger values are skipped like non-finite ones (no sensor reads this; 1e308 - -1e308 is inf)

# The state's numbers, in order: one flat list, unpacked and repacked once per row (the speed).
# prev, m: the previous and the fast mean deseasonalised residual; sm0: the smoothed local surprise;
# sg: the smoothed signed context z; mu*/var*: each stream's long-run mean and variance; raised:
# the bar after an alert; press: the raw readings' alarm pressure on rising rows; since: rows since
# the last alert (counted up to `follow` or `press_gap`, the larger); g_row: the season's learning
# rate per row (0 while unknown, or off).
_NAMES = ("n", "since", "prev", "m", "dev", "sdev", "level", "cdev", "sm0", "sg", "raised", "g_row", "a_lvl",
          "press", "mu0", "mu1", "mu2", "mu3", "mu4", "var0", "var1", "var2", "var3", "var4", "cnt",
          "sm1", "mu5", "var5", "lo", "hi", "rn", "off0", "off1", "press_s", "pv", "rho", "press_d")
_INTS = ("n", "since", "cnt", "rn")
# cnt: 0 while the first rows are all counts (undecided), 1 a count series (read through the
# Anscombe transform), -1 not (raw values); sm1: the smoothed step surprise, mu5/var5 its long run;
# lo, hi: the range of the values read so far, over rn rows (counted until it is read: `warmup` rows
# and, on a rhythm, a day of them; 0: none yet); off0, off1: the weekdays' and the weekends' season
# offsets (each day type learns `share` of the other's mean change: a change of level reaches both);
# press_s: the alarm pressure of the smoothed readings' alerts (press, press_d: of the raw readings' and the range's);
# pv: the previous row's local reading; rho: the local reading's lag-1 correlation (long-run);
# press_d: the raw readings' alarm pressure on falling rows (press: on rising ones; issue 20's tenth round)
_CNT = _NAMES.index("cnt")
_LO = _NAMES.index("lo")
_OFF = _NAMES.index("off0")
_PRESS_S = _NAMES.index("press_s")
_PRESS_D = _NAMES.index("press_d")
# the format of issue 20's ninth round (36 numbers): one raw pressure for both directions
_V9_NAMES = _NAMES[:_PRESS_D]
# the format of issue 20's eighth round (33 numbers): one alarm pressure for every reading
_V8_NAMES = _NAMES[:_PRESS_S]
# the format of the first change of the ninth round (34 numbers, on main for a day): the pair starts afresh
_V9A_NAMES = _NAMES[:_PRESS_S + 1]
# the format of issue 20's sixth round (31 numbers): the same less the offsets, which start at 0
_V6_NAMES = _NAMES[:_OFF]
# the format of issue 20's third round (28 numbers): the same less the range, which starts afresh
_V3_NAMES = _NAMES[:_LO]
# the formats that are this one's first numbers, by their length (`unpack` takes them over)
_LATER_FORMATS = {len(names): names for names in (_V3_NAMES, _V6_NAMES, _V8_NAMES, _V9A_NAMES, _V9_NAMES)}
# the format before counts were told apart (24 numbers): the same less `cnt`, taken over as raw
_V2_NAMES = _NAMES[:_CNT]
# the previous format (23 numbers, before issue 20): taken over by `_adopt`
_OLD_NAMES = ("n", "since", "prev", "m", "dev", "sdev", "level", "cdev", "sm0", "sm2", "raised", "g_row", "a_lvl",
              "mu0", "mu1", "mu2", "mu3", "mu5", "var0", "var1", "var2", "var3", "var5")


def _adopt(old: Mapping[str, Any], press_cross: float = 0.5, press_dir: float = 0.6) -> list[Any]:
    """A state list in this format from a mapping of names that may lack the new ones (an earlier
    format): shared numbers kept, new ones 0; a state without `cnt` learned on raw values and goes
    on with them; in the 23-number format `m` and `prev` were raw values and are now deseasonalised
    residuals (about 0); a state with one alarm pressure shares it between the two kinds of reading
    so that both bars stand where its one bar stood (`press_cross`: the share each adds to the other's),
    and one raw pressure for both directions likewise (`press_dir`)."""
    out: list[Any] = [int(old.get(k, 0)) if k in _INTS else float(old.get(k, 0.0)) for k in _NAMES]
    press = _NAMES.index("press")
    if "press_s" not in old:
        out[press] = out[_PRESS_S] = out[press] / (1.0 + press_cross)
    if "press_d" not in old:  # read as 2 / (1 + press_dir) of a direction's pressure: the same bar
        out[press] = out[_PRESS_D] = out[press] * (1.0 + press_dir) / 2.0
    if "cnt" not in old:
        out[_CNT] = -1
    if "sm1" not in old:  # the smoothed step surprise starts from the smoothed local one (alike on noise)
        for new, like in (("sm1", "sm0"), ("mu5", "mu3"), ("var5", "var3")):
            out[_NAMES.index(new)] = out[_NAMES.index(like)]
    if "sg" not in old:
        out[_NAMES.index("m")] = out[_NAMES.index("prev")] = 0.0
        # the signed stream was not there: a prior for |smoothed z| on noise (mean 0.25, sd 0.2),
        # not the floor sd of a fresh detector (its running mean would need warm-up rows)
        out[_NAMES.index("mu4")], out[_NAMES.index("var4")] = 0.25, 0.04
    return out


def _a_count(x: float) -> bool:
    """Whether `x` could be a count: a whole number >= 0."""
    return x >= 0.0 and x == math.floor(x)


def _inverse_sd(var: float) -> float:
    return 1.0 / math.sqrt(var) if var > _SD_FLOOR * _SD_FLOOR else 1.0 / _SD_FLOOR


def _inverse_sds(s: list[Any]) -> list[float]:
    """1 / each stream's long-run sd from a state list (var0..var4, var5)."""
    first = _NAMES.index("var0")
    return [_inverse_sd(v) for v in (*s[first:first + 5], s[_NAMES.index("var5")])]


class GenericDetector:
    """See the module docstring. `process(value, ts)` scores, decides and learns one row and
    returns (is_alert, anomaly_score); `score_one` / `learn_one` take {"value": x, "ts": t}."""

    def __init__(self, *, a_fast: float = 0.1, a_dev: float = 0.02, a_level: float = 0.01, gamma: float = 0.5,
                 a_ctx_dev: float = 0.003, a_smooth: float = 0.1, a_long: float = 0.001, cap: float = 10.0,
                 clip: float = 3.0, threshold: float = 4.5, warmup: int = 150, raise_k: float = 2.0,
                 halflife: float = 200.0, follow: int = 30, level_days: float = 1.5, a_sign: float = 0.1,
                 press_k: float = 0.5, press_halflife: float = 1000.0, counts: int = 50, margin: float = 0.05,
                 quiet_halflife: float = 50.0, share: float = 0.5, joint: float = 0.5, press_gap: int = 200,
                 press_near: float = 0.75, press_cross: float = 0.5, pair: float = 1.75,
                 press_both: float = 0.45, press_dir: float = 0.6, season_start: float = 1.5) -> None:
        self.a_fast, self.a_dev, self.a_level, self.gamma = a_fast, a_dev, a_level, gamma
        self.a_ctx_dev, self.a_smooth, self.a_long = a_ctx_dev, a_smooth, a_long
        self.cap, self.clip, self.threshold, self.warmup, self.raise_k = cap, clip, threshold, warmup, raise_k
        self.decay = 0.5 ** (1.0 / halflife)
        self.quiet_decay = 0.5 ** (1.0 / quiet_halflife)  # the raised bar's, once the evidence is below the bar
        self.follow = follow
        self.since_cap = max(follow, press_gap)  # rows since the last alert are counted up to this
        self.level_days = level_days
        self.a_sign, self.press_k, self.press_decay = a_sign, press_k, 0.5 ** (1.0 / press_halflife)
        self.counts = counts  # rows that decide whether the series is counts (0: never)
        self.margin = margin  # beyond the range read so far by this share of it: an alert (0: off)
        self.press_cross = press_cross  # the share of one kind of reading's alarm pressure on the other's bar
        self.press_dir = press_dir  # the share of a raw alert's pressure on the other direction's bar
        # the parameters the hot path reads, in one tuple (one attribute load per row)
        self.params = (a_fast, a_dev, a_level, a_ctx_dev, a_smooth, a_long, cap, clip, threshold, warmup, raise_k,
                       self.decay, follow, a_sign, press_k, self.press_decay, margin, BUCKETS * gamma,
                       self.quiet_decay, share, joint, press_gap, press_near, self.since_cap, press_cross, pair,
                       press_both, 2.0 / (1.0 + press_dir), press_dir, season_start)
        self.reset()

    def reset(self) -> None:
        self.s: list[Any] = [0.0] * len(_NAMES)
        self.s[0], self.s[1] = 0, self.since_cap
        self.s[_NAMES.index("a_lvl")] = self.a_level
        self.s[_CNT] = 0 if self.counts else -1
        self.s[_NAMES.index("rn")] = 0
        self.isd = [1.0 / _SD_FLOOR] * 6  # 1 / each stream's long-run sd (derived from var*)
        self.season: list[float | None] = [None] * (2 * BUCKETS)  # None: never seen
        self.gaps: list[float] | None = []  # the first timestamp spacings; None once decided
        self.last_ts: float | None = None

    def process(self, x: float, ts: float | None = None, learn: bool = True, decide: bool = True) -> tuple[bool, float]:
        """Score, decide and learn one row: (an alert opens here, anomaly score in [0, 1)). Without
        `decide` no alert opens; without `learn` nothing changes (score_one, learn_one). A value
        that is not finite (or beyond +-1e150) scores 0 and is skipped; a timestamp that is not
        finite is ignored.
        The one hot path: flat locals, no per-row allocation beyond the state list."""
        if not -_LIMIT < x < _LIMIT:  # NaN, infinite or absurd (its differences would overflow): skipped
            return False, 0.0
        if ts is not None and ts - ts != 0.0:
            ts = None
        # typed before the unpacking: the state list holds Any, and untyped locals made every operation
        # below a generic (boxed) one in the compiled code; typed, mypyc unboxes each number once
        n: int
        since: int
        cnt: int
        prev: float
        m: float
        dev: float
        sdev: float
        level: float
        cdev: float
        sm0: float
        sg: float
        raised: float
        g_row: float
        a_lvl: float
        press: float
        mu0: float
        mu1: float
        mu2: float
        mu3: float
        mu4: float
        mu5: float
        var0: float
        var1: float
        var2: float
        var3: float
        var4: float
        var5: float
        sm1: float
        lo: float
        hi: float
        rn: int
        off0: float
        off1: float
        press_s: float
        pv: float
        rho: float
        press_d: float
        (n, since, prev, m, dev, sdev, level, cdev, sm0, sg, raised, g_row, a_lvl, press, mu0, mu1, mu2, mu3, mu4,
         var0, var1, var2, var3, var4, cnt, sm1, mu5, var5, lo, hi, rn, off0, off1, press_s, pv, rho, press_d) = self.s
        raw = x
        if cnt > 0:  # a count series: its Anscombe transform (spread about 1 at any level)
            if learn and not _a_count(x):  # not counts after all (a gauge dry at first)
                self._restart(-1)
                return self.process(raw, ts, learn, decide)
            x = 2.0 * math.sqrt(x + 0.375) if x >= 0.0 else -2.0 * math.sqrt(0.375 - x)
        (a_fast, a_dev, a_level, a_ctx_dev, a, a_long, cap, clip, threshold, warmup, raise_k, decay,
         follow, a_sign, press_k, press_decay, margin, day_g, quiet_decay, share, joint, press_gap, press_near,
         since_cap, press_cross, pair, press_both, dir_k, press_dir, season_start) = self.params
        # raw surprises against what was learned before this row
        eps = 1e-9 * (1.0 + (level if level > 0 else -level))
        f = _RANGE_FLOOR * (hi - lo)  # a spread below this is a noise-free series' misfit, not noise
        if f > eps:
            eps = f
        b = -1
        r = x - level
        if g_row and ts is not None:
            day = ts // DAY_S
            u = (ts - day * DAY_S) * (BUCKETS / DAY_S) - 0.5  # hours since the first bucket's centre
            k = int(u + 1.0) - 1  # floor (u >= -0.5)
            w = u - k
            b = k % BUCKETS
            b1 = (k + 1) % BUCKETS
            if (int(day) + 3) % 7 >= 5:  # a weekend (1970-01-01 was a Thursday)
                b += BUCKETS
                b1 += BUCKETS
            season = self.season
            mine, other = (off1, off0) if b >= BUCKETS else (off0, off1)  # this day type's offset, the other's
            v = season[b]
            if v is None:  # never seen: the same hour of the other day type as it reads, if seen
                v = season[b - BUCKETS if b >= BUCKETS else b + BUCKETS]
                v = 0.0 if v is None else v + other - mine
            s0 = v
            v = season[b1]
            if v is None:
                v = season[b1 - BUCKETS if b1 >= BUCKETS else b1 + BUCKETS]
                v = 0.0 if v is None else v + other - mine
            s1 = v
            r -= s0 + w * (s1 - s0) + mine
        local = r - m  # the deseasonalised residual against its fast mean
        z = (local if local > 0 else -local) / (dev if dev > eps else eps)
        r0 = math.sqrt(z if z < cap else cap)
        d = r - prev  # the deseasonalised step
        z = (d if d > 0 else -d) / (sdev if sdev > eps else eps)
        r1 = math.sqrt(z if z < cap else cap)
        z = (r if r > 0 else -r) / (cdev if cdev > eps else eps)
        r2 = math.sqrt(z if z < cap else cap)
        r3 = sm0 + a * (r0 - sm0)
        r5 = sm1 + a * (r1 - sm1)
        zs = r / (cdev if cdev > eps else eps)
        zs = cap if zs > cap else -cap if zs < -cap else zs
        sg_new = sg + a_sign * (zs - sg)  # the signed context residual, smoothed: a sustained shift
        r4 = sg_new if sg_new > 0 else -sg_new
        # anomaly likelihood: each stream against its own long-run distribution
        i0, i1, i2, i3, i4, i5 = self.isd
        # the largest deviation of the raw readings, then of the smoothed ones (compared inline: max() of
        # floats costs a generic call); each kind has its own alarm pressure
        u = (r0 - mu0) * i0  # the local reading
        best = u
        z = (r1 - mu1) * i1
        if z > best:
            best = z
        z = (r2 - mu2) * i2
        if z > best:
            best = z
        # the local reading on two rows in a row: an isolated extreme of noise is one row, an event lasts;
        # each row need only reach the bar less `pair` times 1 - rho, the lag-1 correlation of the
        # reading (correlated noise, AR(0.9): consecutive surprises are common, and it gets nothing)
        lo2 = u if u < pv else pv
        z = pair if rho <= 0.0 else pair * (1.0 - rho) if rho < 1.0 else 0.0
        if lo2 >= z and lo2 + z > best:  # only where both rows reach `pair` (quiet rows keep their scores)
            best = lo2 + z
        z3 = (r3 - mu3) * i3
        if z3 < 0.0:  # the smoothed local surprise far below its usual: a stuck value, a dead feed
            z3 = -z3
        best_s = z3
        z4 = (r4 - mu4) * i4
        if z4 > best_s:
            best_s = z4
        z5 = (mu5 - r5) * i5  # the smoothed step surprise far below its usual: a value that stopped moving
        if z5 > best_s:
            best_s = z5
        # the two strongest of the three smoothed readings together (Stouffer's sum, less `joint` for
        # picking two of three): a dead feed's level and spread move at once, each short of the bar
        lo3 = z3 if z3 < z4 else z4
        if z5 < lo3:
            lo3 = z5
        hi3 = z3 if z3 > z4 else z4
        if z5 > hi3:
            hi3 = z5
        two = z3 + z4 + z5 - lo3
        if two > hi3:  # the second strongest is above its usual too
            z = two * 0.7071067811865476 - joint
            if z > best_s:
                best_s = z
        # alarm pressure per kind of reading: a series whose single rows keep alerting (benign bursts)
        # raises the raw readings' bar, not fully the bar of a sustained change, and the other way round;
        # the raw readings' per direction of the row's step (bursts of latency or counts go up: they need
        # not hide a dip), read as `dir_k` = 2 / (1 + press_dir) of it, so that noise alerting both ways
        # alike keeps its bar; the smoothed bar takes the raw pressure of both directions, as one
        rising = d > 0.0
        base = threshold + press_k * ((press if rising else press_d) * dir_k + press_cross * press_s)
        base_s = threshold + press_k * (press_s + press_cross * (press + press_d) * (0.5 * dir_k))
        # the range is read once it holds `warmup` rows and, on a rhythm, a whole day of them
        # (g_row * rows a day = BUCKETS * gamma): a day's first hours do not span its range
        ranged = rn >= warmup and (g_row <= 0.0 or rn * g_row >= day_g)
        if ranged and margin > 0.0 and hi > lo:
            tol = margin * (hi - lo)
            if tol < cdev:  # and by one context spread: ordinary noise sets records just beyond its range
                tol = cdev
            if (x > hi + tol or x < lo - tol) and best < base:  # beyond all it has read: evidence at the bar
                best = base
        score = score_s = 0.0
        if n >= warmup:
            if best > 0.0:
                bar = base if base > raised else raised
                score = best / (best + bar)
            if best_s > 0.0:
                bar = base_s if base_s > raised else raised
                score_s = best_s / (best_s + bar)
        at_bar = best >= base or best_s >= base_s
        if best_s > best:
            best = best_s
        alert = False
        if decide:
            alert = score >= 0.5 or score_s >= 0.5
            if alert:  # an alert within `press_gap` rows of the last is often the same event again (a
                added = 1.0 if since >= press_gap else press_near  # plateau's start and end): less pressure
                # on the pressure of the kind that alerted, and of the other if it nearly alerted too
                # (a single extreme of heavy-tailed noise moves the signed stream too)
                if score >= score_s or score >= press_both:  # the raw pressure of the row's direction in
                    press += added if rising else press_dir * added  # full, `press_dir` of it on the other's
                    press_d += press_dir * added if rising else added
                if score_s > score or score_s >= press_both:
                    press_s += added
                since = 0
            if since < follow and raise_k * best > raised:
                raised = raise_k * best  # the event's own growth raises its bar
            if since < since_cap:
                since += 1
        if score_s > score:
            score = score_s
        if not learn:
            return alert, score
        if hi == lo and rn >= _WARM and x != lo:  # the first value unlike all before it: a series that never
            self._restart(cnt)  # varied taught nothing but that value (its spreads are 0): start afresh here
            self.process(raw, ts, True, False)
            return alert, score
        raised *= decay if at_bar else quiet_decay  # the event is over: its raise fades faster
        press *= press_decay
        press_s *= press_decay
        press_d *= press_decay
        if not decide and since < since_cap:
            since += 1
        if n == 0:
            level = x
            prev = m = 0.0
        else:
            # the streams' long-run distributions: a running mean until 1/a_long rows, then EW
            al = a_long if n * a_long > 1.0 else 1.0 / n
            keep = 1.0 - al
            if n > _WARM:  # a surprise teaches at most `clip` sds beyond the mean
                top = mu0 + clip / i0 + 0.5
                r0 = top if r0 > top else r0
                top = mu1 + clip / i1 + 0.5
                r1 = top if r1 > top else r1
                top = mu2 + clip / i2 + 0.5
                r2 = top if r2 > top else r2
                sm0 = r3
                top = mu3 + clip / i3 + 0.5
                r3 = top if r3 > top else r3
                top = mu4 + clip / i4 + 0.5
                r4 = top if r4 > top else r4
            else:
                sm0 = r3
            sg = sg_new
            sm1 = r5
            e = r5 - mu5
            mu5 += al * e
            var5 = keep * (var5 + al * e * e)
            e = r0 - mu0
            mu0 += al * e
            var0 = keep * (var0 + al * e * e)
            e = clip if u > clip else -clip if u < -clip else u  # the reading's lag-1 correlation, each
            rho += al * (e * (clip if pv > clip else -clip if pv < -clip else pv) - rho)  # side clipped
            pv = u
            e = r1 - mu1
            mu1 += al * e
            var1 = keep * (var1 + al * e * e)
            e = r2 - mu2
            mu2 += al * e
            var2 = keep * (var2 + al * e * e)
            e = r3 - mu3
            mu3 += al * e
            var3 = keep * (var3 + al * e * e)
            e = r4 - mu4
            mu4 += al * e
            var4 = keep * (var4 + al * e * e)
            if n < 64 or not n & 7:  # the long-run sds move slowly: refreshed every 8 rows once warm
                f2, fi = _SD_FLOOR * _SD_FLOOR, 1.0 / _SD_FLOOR
                self.isd = [1.0 / math.sqrt(var0) if var0 > f2 else fi, 1.0 / math.sqrt(var1) if var1 > f2 else fi,
                            1.0 / math.sqrt(var2) if var2 > f2 else fi, 1.0 / math.sqrt(var3) if var3 > f2 else fi,
                            1.0 / math.sqrt(var4) if var4 > f2 else fi, 1.0 / math.sqrt(var5) if var5 > f2 else fi]
            # the value's models, Huber-clipped once warm
            warm = n >= _WARM
            ad = a_dev if n * a_dev > 1.0 else 1.0 / n
            top = clip * dev
            if warm and not -top < local < top:
                local = top if local > 0 else -top
            m += a_fast * local
            dev += ad * ((local if local > 0 else -local) - dev)
            top = clip * sdev
            if warm and not -top < d < top:
                d = top if d > 0 else -top
            sdev += ad * ((d if d > 0 else -d) - sdev)
            prev = r
            top = clip * cdev
            if warm and not -top < r < top:
                r = top if r > 0 else -top
            al = a_lvl if n * a_lvl > 1.0 else 1.0 / n
            level += al * r
            if b >= 0:
                g = g_row * (1.0 - al) * r
                if n * g_row < 2.0 * day_g:  # in the first two days read (n * g_row / day_g of them) a new
                    g *= 1.0 + season_start  # device's rhythm is unknown: learned faster
                season[b] = s0 + (1.0 - w) * g
                season[b1] = s1 + w * g
                if b >= BUCKETS:  # the other day type learns `share` of the mean change: the weekend had
                    off0 += share * g / BUCKETS  # not seen a change of level from Monday to Friday, and
                else:  # a lasting shift was flagged again on the first Saturday after it
                    off1 += share * g / BUCKETS
            al = a_ctx_dev if n * a_ctx_dev > 1.0 else 1.0 / n
            cdev += al * ((r if r > 0 else -r) - cdev)
        if rn == 0:
            lo = hi = x
        elif x > hi:  # after 30 rows, the range grows by at most its width and a spread a row: a glitch
            bound = hi + (hi - lo) + cdev if rn >= _WARM else x  # (65535 from a failing ADC) does not blind it
            hi = x if x < bound else bound
        elif x < lo:
            bound = lo - (hi - lo) - cdev if rn >= _WARM else x
            lo = x if x > bound else bound
        if not ranged:
            rn += 1
        self.s = [n + 1, since, prev, m, dev, sdev, level, cdev, sm0, sg, raised, g_row, a_lvl, press, mu0, mu1,
                  mu2, mu3, mu4, var0, var1, var2, var3, var4, cnt, sm1, mu5, var5, lo, hi, rn, off0, off1, press_s,
                  pv, rho, press_d]
        if self.gaps is not None and ts is not None:
            self._time(ts)
        if cnt == 0:
            self._counts(raw, n + 1)
        return alert, score

    def run(self, values: list[float], stamps: list[float]) -> tuple[list[int], list[float]]:
        """`process` over rows in order: (is_alert 1/0, anomaly_score) lists. The replay's loop, here
        so that mypyc compiles it: each row is a native call, no Python tuple or float boxed twice."""
        alerts: list[int] = []
        scores: list[float] = []
        for i in range(len(values)):
            alert, score = self.process(values[i], stamps[i])
            alerts.append(1 if alert else 0)
            scores.append(score)
        return alerts, scores

    def _counts(self, x: float, rows: int) -> None:
        """Whether the series is counts: after `counts` whole numbers >= 0 it is, and its models
        start afresh on the transformed values (the season's rate, once known, is kept); any
        other value first and it is not."""
        if not _a_count(x):
            self.s[_CNT] = -1
        elif rows >= self.counts:
            self._restart(1)

    def _restart(self, cnt: int) -> None:
        """The models afresh (`cnt` 1: on counts, -1: on raw values, 0: still undecided); what is
        known of the timestamps (the season's rate, the spacings) is kept."""
        rates = self.s[_NAMES.index("g_row")], self.s[_NAMES.index("a_lvl")]
        gaps, last_ts = self.gaps, self.last_ts
        self.reset()
        self.s[_NAMES.index("g_row")], self.s[_NAMES.index("a_lvl")] = rates
        self.gaps, self.last_ts = gaps, last_ts
        self.s[_CNT] = cnt

    def _time(self, ts: float) -> None:
        """The season's rate from the median spacing of the first 50 timestamps."""
        gaps = self.gaps
        assert gaps is not None
        if self.last_ts is not None and ts > self.last_ts:
            gaps.append(ts - self.last_ts)
        self.last_ts = ts
        if len(gaps) >= 50:
            rows_per_day = DAY_S / sorted(gaps)[len(gaps) // 2]
            per_visit = rows_per_day / BUCKETS  # rows per bucket per day
            if rows_per_day >= BUCKETS / 2:  # a season: it learns at gamma per day, the level slower than a day
                self.s[_NAMES.index("g_row")] = self.gamma / max(per_visit, 1.0)
                if self.level_days:
                    self.s[_NAMES.index("a_lvl")] = min(self.a_level, 1.0 / (self.level_days * rows_per_day))
            self.gaps = None

    # -- the interface --------------------------------------------------------------------------

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
        return 0.0 if row is None else self.process(row[0], row[1], False, False)[1]

    def learn_one(self, x: Mapping[str, Any]) -> None:
        """Learn a row without deciding."""
        row = self._row(x)
        if row is not None:
            self.process(row[0], row[1], True, False)

    # -- state ----------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Plain data (lists, floats, ints): everything needed to continue exactly."""
        state: dict[str, Any] = dict(zip(_NAMES, self.s, strict=True))
        state.update(isd=list(self.isd), season=list(self.season),
                     gaps=None if self.gaps is None else list(self.gaps), last_ts=self.last_ts)
        return state

    def packed(self) -> dict[str, Any]:
        """The state as the live rule keeps it per device: the detector's own lists, not copied
        (plain data too; `unpack` takes it back without conversion, the rule's speed)."""
        return {"s": self.s, "i": self.isd, "season": self.season, "gaps": self.gaps, "t": self.last_ts}

    def unpack(self, packed: Mapping[str, Any]) -> GenericDetector:
        """Work on a state `packed` made (its lists are used in place; `packed()` again after
        processing, since the state list is replaced on every row)."""
        self.s, self.isd, self.season = packed["s"], packed["i"], packed["season"]
        if len(self.s) == len(_NAMES):  # this format: the live rule's every reading
            pass
        elif len(self.s) in _LATER_FORMATS:  # the third round: the range starts afresh; the sixth: the
            names = _LATER_FORMATS[len(self.s)]  # offsets at 0; the eighth, ninth: their one pressure shared
            self.s = _adopt(dict(zip(names, self.s, strict=True)), self.press_cross, self.press_dir)
        else:  # an earlier format: 24 numbers (isd kept) or 23
            v2 = len(self.s) == len(_V2_NAMES)
            self.s = _adopt(dict(zip(_V2_NAMES if v2 else _OLD_NAMES, self.s, strict=True)), self.press_cross,
                           self.press_dir)
            self.isd = [*(self.isd if v2 else _inverse_sds(self.s)[:5]), _inverse_sds(self.s)[5]]
        self.gaps, self.last_ts = packed["gaps"], packed["t"]
        return self

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **params: Any) -> GenericDetector:
        detector = cls(**params)
        detector.s = _adopt(state, detector.press_cross, detector.press_dir)
        isd = state.get("isd")  # refreshed every 8 rows: kept, not derived (older states lack it)
        derived = _inverse_sds(detector.s)
        detector.isd = ([float(v) for v in isd] if isd is not None and len(isd) == 6 else
                        [*(float(v) for v in isd), derived[5]] if isd is not None and len(isd) == 5 else derived)
        detector.season = [None if v is None else float(v) for v in state["season"]]
        if len(detector.season) != 2 * BUCKETS:
            raise ValueError("generic detector state of another shape")
        detector.gaps = None if state["gaps"] is None else [float(v) for v in state["gaps"]]
        detector.last_ts = None if state["last_ts"] is None else float(state["last_ts"])
        return detector
