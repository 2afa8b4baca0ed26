"""Sensor faults on the numeric kinds, reported as faults (`sensor_stuck`, `sensor_jump`) and not
as the condition the sensor measures: stuck at one value, or jumping faster than physics allows."""

from __future__ import annotations

import math
from typing import Final

from citywatch.detectors.base import QUIET, Verdict
from citywatch.detectors.baseline import LearnedRule
from citywatch.detectors.plausibility import Plausibility
from citywatch.detectors.record import UNSET, DeviceRecord, RuleState, known
from citywatch.model import Device, Finding, Reading

_P_MIN: Final = 1e-3
_P_MAX: Final = 0.999
_N_CAP: Final = 1000


class StuckState(RuleState):
    """The current run of one exact value (UNSET before the first): the value, its length and
    start; the learned chance of repeating a value and how many readings taught it."""

    __slots__ = ("value", "run", "start", "p_repeat", "learned")
    FIELDS = ("value", "run", "start", "p_repeat", "learned")
    V1 = ("v", "r", "t", "p", "n")

    def __init__(self) -> None:
        self.value = UNSET
        self.run = 0
        self.start = 0.0
        self.p_repeat = 0.5
        self.learned = 0


class JumpState(RuleState):
    """The last value (UNSET before the first) and its time, plausible readings since the last
    jump, whether one is open."""

    __slots__ = ("last", "at", "plausible", "open")
    FIELDS = ("last", "at", "plausible", "open")
    V1 = ("v", "t", "q", "j")

    def __init__(self) -> None:
        self.last = UNSET
        self.at = 0.0
        self.plausible = 0
        self.open = 0


class SensorStuck(LearnedRule):
    """The same value, exactly, `min_run` readings in a row over at least `min_duration_s`, when
    this device's learned chance of repeating a value makes such a run less likely than `p_tail`.

    A device whose value rarely changes learns a high repeat chance and is not flagged; the
    kind's rest value (0 %LEL in clean air, a dry road) never counts as stuck. A run is learned
    from until it is half as surprising as the alert threshold, no further. State: last value, run length and start,
    repeat chance, readings learned."""

    name = "sensor_stuck"
    v1_key = "stuck"

    def __init__(self, kind: str, field: str, *, rest: float | None = None, min_run: int = 30,
                 min_duration_s: float = 1800.0, p_tail: float = 1e-6, warmup: int = 60) -> None:
        self.kinds = frozenset({kind})
        self.field = field
        self.rest = rest
        self.min_run = min_run
        self.min_duration_s = min_duration_s
        self.bits = -math.log10(p_tail)
        self.warmup = warmup

    def fresh(self) -> StuckState:
        return StuckState()

    def _surprise(self, st: StuckState, run: int) -> float:
        """-log10 P(a run this long) under the learned repeat chance, in units of `p_tail`."""
        p = min(max(st.p_repeat, _P_MIN), _P_MAX)
        return (run - 1) * -math.log10(p) / self.bits

    def step(self, st: StuckState, value: float, ts: float) -> float:
        """The run's surprise after this value (>= 1 alerts; 0 when it may not alert); then learn."""
        if value == st.value:  # never while UNSET
            run, duration = st.run + 1, ts - st.start
        else:
            run, duration = 1, 0.0
            st.value = value
            st.start = ts
        st.run = run
        score = 0.0
        if not (value == self.rest or st.learned < self.warmup or run < self.min_run
                or duration < self.min_duration_s):
            score = self._surprise(st, run)
        if value != self.rest and self._surprise(st, run) < 0.5:
            n = st.learned
            st.p_repeat += ((1.0 if run > 1 else 0.0) - st.p_repeat) / (n + 2 if n < 98 else 100)
            if n < _N_CAP:
                st.learned = n + 1
        return score

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: StuckState) -> Verdict:
        value = reading.values.get(self.field)
        if value is None:
            return QUIET
        score = self.step(state, value, reading.ts)
        squashed = score / (score + 1.0)
        if score >= 1.0:
            return Finding(self.name, True, "warning", value, None,
                           f"sensor fault suspected: {self.field} stuck at {value:g} for {state.run} readings "
                           f"({(reading.ts - state.start) / 60:.0f} min)"), squashed
        if state.run == 1:
            return Finding(self.name, False, value=value), squashed
        return None, squashed


class SensorJump(LearnedRule):
    """A change faster than the kind's plausibility limit (plausibility.py): not something the
    measured world does, so a suspected sensor fault. Always on, learned detectors or not: it is
    physics, not learning. Clears after `clear_after` plausible readings. State: last value and
    time, plausible readings since the last jump, whether a jump is open."""

    name = "sensor_jump"
    v1_key = "jump"

    def __init__(self, kind: str, field: str, plausibility: Plausibility, *, clear_after: int = 10) -> None:
        self.kinds = frozenset({kind})
        self.field = field
        self.plausibility = plausibility
        limit = plausibility.limit(kind)
        self.max_step = limit if limit is not None else math.inf
        self.clear_after = clear_after

    def fresh(self) -> JumpState:
        return JumpState()

    def step(self, st: JumpState, value: float, ts: float) -> tuple[float, float]:
        """(change / allowed change, allowed change; 0 for the first reading); then remember it."""
        score, allowed = 0.0, 0.0
        if known(st.last):
            score, allowed = self.plausibility.step_ratio(self.max_step, st.last, st.at, value, ts)
        st.last = value
        st.at = ts
        if score > 1.0:
            st.plausible = 0
            st.open = 1
        elif st.plausible < self.clear_after:
            st.plausible += 1
        return score, allowed

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: JumpState) -> Verdict:
        value = reading.values.get(self.field)
        if value is None:
            return QUIET
        last = state.last
        score, allowed = self.step(state, value, reading.ts)
        squashed = score / (score + 1.0)
        if score > 1.0:
            return Finding(self.name, True, "warning", value, allowed,
                           f"sensor fault suspected: {self.field} jumped from {last:g} to {value:g}, "
                           f"more than the {allowed:g} physically plausible"), squashed
        if state.open and state.plausible >= self.clear_after:
            state.open = 0
            return Finding(self.name, False, value=value), squashed
        return None, squashed
