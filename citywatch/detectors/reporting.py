"""Learned device-health detectors for every kind: the reporting interval drifting far from this
device's own, and the battery draining far faster than this device's own normal."""

from __future__ import annotations

import math
from typing import Final

from citywatch.detectors.base import QUIET, Verdict
from citywatch.detectors.baseline import LearnedRule
from citywatch.detectors.record import UNSET, DeviceRecord, RuleState, known
from citywatch.detectors.settings import HealthParams
from citywatch.model import KINDS, Device, Finding, Reading

_GAP_LOG: Final = math.log(20.0)  # a gap this many times the usual interval is the deadman's business
_N_CAP: Final = 1000


class IntervalState(RuleState):
    """Last reading's time (UNSET before the first); long-run and recent log(interval); intervals
    learned; alert open."""

    __slots__ = ("last", "usual", "recent", "learned", "open")
    FIELDS = ("last", "usual", "recent", "learned", "open")
    V1 = ("t", "l", "f", "n", "a")

    def __init__(self) -> None:
        self.last = UNSET
        self.usual = 0.0
        self.recent = 0.0
        self.learned = 0
        self.open = 0


class ReportingInterval(LearnedRule):
    """A recent average of log(interval) (EW, weight `interval_alpha`) `interval_factor` times
    away from this device's long-run one (learned only from unflagged intervals, after
    `interval_warmup` of them): a device chattering or sleeping. Gaps over 20 usual intervals
    are left to the offline detector. Clears at half the margin."""

    name = "reporting_interval"
    kinds = frozenset(KINDS)
    v1_key = "rint"

    def __init__(self, params: HealthParams | None = None) -> None:
        self.p = params or HealthParams()
        self.margin = math.log(self.p.interval_factor)

    def fresh(self) -> IntervalState:
        return IntervalState()

    def step(self, st: IntervalState, ts: float) -> float | None:
        """The score of this interval, None when it is not usable (the first, a repeat, a gap); then learn."""
        last = st.last
        if not known(last):
            st.last = ts
            return None
        if ts <= last:
            return None
        log_dt = math.log(max(ts - last, 0.5))
        n = st.learned
        if n == 0:
            score, recent = 0.0, log_dt
        elif log_dt - st.usual > _GAP_LOG:
            st.last = ts
            return None
        else:
            recent = st.recent + self.p.interval_alpha * (log_dt - st.recent)
            score = abs(recent - st.usual) / self.margin if n >= self.p.interval_warmup else 0.0
        st.recent = recent
        st.last = ts
        if n == 0:
            st.usual = log_dt
        elif score < 0.5 and not st.open:
            st.usual += (log_dt - st.usual) / (n + 1 if n < 199 else 200)
        if n < _N_CAP and (n == 0 or score < 0.5):
            st.learned = n + 1
        return score

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: IntervalState) -> Verdict:
        score = self.step(state, reading.ts)
        if score is None:
            return QUIET
        squashed = score / (score + 1.0)
        if score >= 1.0 or (state.open and score >= 0.5):
            state.open = 1
            return Finding(self.name, True, "warning", round(math.exp(state.recent), 1), None,
                           f"reporting about every {math.exp(state.recent):.0f} s, usually every "
                           f"{math.exp(state.usual):.0f} s"), squashed
        if state.open:
            state.open = 0
            return Finding(self.name, False), squashed
        return None, squashed


class DrainState(RuleState):
    """Start of the current span (UNSET before the first reading) and the battery then; the last
    battery; learned drain (%/day) and spans learned; alert open."""

    __slots__ = ("span_start", "span_battery", "last_battery", "usual", "learned", "open")
    FIELDS = ("span_start", "span_battery", "last_battery", "usual", "learned", "open")
    V1 = ("t", "b", "l", "m", "n", "a")

    def __init__(self) -> None:
        self.span_start = UNSET
        self.span_battery = 0.0
        self.last_battery = 0.0
        self.usual = 0.0
        self.learned = 0
        self.open = 0


class BatteryDrain(LearnedRule):
    """Battery drain (%/day) measured over spans of `drain_span_h`, at least `drain_factor` times
    this device's learned drain and at least `drain_min_pct_day`, after `drain_warmup` spans.
    A rise (replaced, charged) or a one-step drop of over 10 points restarts the span without
    learning (the low-battery rule covers the level). Clears with the next normal span."""

    name = "battery_drain"
    kinds = frozenset(KINDS)
    v1_key = "bdr"
    field = "battery"

    def __init__(self, params: HealthParams | None = None) -> None:
        self.p = params or HealthParams()
        self.span_s = self.p.drain_span_h * 3600.0

    def fresh(self) -> DrainState:
        return DrainState()

    def step(self, st: DrainState, battery: float, ts: float) -> tuple[float, float] | None:
        """(score, drain %/day) when a span completes with this reading, else None; then learn."""
        start = st.span_start
        restart = not known(start) or battery > st.span_battery + 2.0 or st.last_battery - battery > 10.0
        st.last_battery = battery
        if restart:
            st.span_start, st.span_battery = ts, battery
            return None
        span = ts - start
        if span < self.span_s:
            return None
        drain = (st.span_battery - battery) / span * 86400.0
        if st.learned < self.p.drain_warmup:
            score = 0.0
        else:
            score = drain / max(self.p.drain_factor * st.usual, self.p.drain_min_pct_day)
        if score < 1.0:
            n = st.learned
            st.usual += (max(drain, 0.0) - st.usual) / (n + 1 if n < 9 else 10)
            if n < _N_CAP:
                st.learned = n + 1
        st.span_start, st.span_battery = ts, battery
        return score, drain

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: DrainState) -> Verdict:
        battery = reading.battery
        if battery is None:
            return QUIET
        assessed = self.step(state, battery, reading.ts)
        if assessed is None:
            return QUIET
        score, drain = assessed
        squashed = score / (score + 1.0) if score > 0 else 0.0
        if score >= 1.0:
            state.open = 1
            return Finding(self.name, True, "warning", round(drain, 1), None,
                           f"battery draining {drain:.1f}%/day, usually {state.usual:.1f}%/day"), squashed
        if state.open:
            state.open = 0
            return Finding(self.name, False, value=round(drain, 1)), squashed
        return None, squashed
