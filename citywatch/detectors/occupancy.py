"""Learned parking-bay detectors: a sensor stuck (no state change for far longer than this bay's
own change rate allows) or flapping (state changes faster than cars move)."""

from __future__ import annotations

from array import array
from typing import Final

from citywatch.detectors.base import QUIET, Verdict
from citywatch.detectors.baseline import BaselineState, LearnedRule, SeasonalBaseline
from citywatch.detectors.record import UNSET, DeviceRecord, RuleState, known
from citywatch.kinds.parking import ParkingParams
from citywatch.model import Device, Finding, Reading

_RATE_TAU_S: Final = 7 * 86400.0
_MAX_GAP_S: Final = 3600.0  # a device that was off is no evidence of a quiet bay
_QUIET_MIN_S: Final = 6 * 3600.0


class StuckBayState(RuleState):
    """The occupancy baseline; the last state (UNSET before the first) and when it last changed;
    decayed changes and decayed time (their ratio: the change rate); the last reading's time;
    changes learned; alert open."""

    __slots__ = ("baseline", "occupied", "changed_at", "changes", "time", "last", "learned", "open")
    FIELDS = ("baseline", "occupied", "changed_at", "changes", "time", "last", "learned", "open")
    V1 = ("b", "o", "c", "e", "w", "t", "k", "a")

    def __init__(self, baseline: BaselineState) -> None:
        self.baseline = baseline
        self.occupied = UNSET
        self.changed_at = 0.0
        self.changes = 0.0
        self.time = 0.0
        self.last = 0.0
        self.learned = 0
        self.open = 0


class FlappingState(RuleState):
    """The last state (UNSET before the first), the last `flap_changes` change times, alert open."""

    __slots__ = ("occupied", "changes", "open")
    FIELDS = ("occupied", "changes", "open")
    V1 = ("o", "f", "a")

    def __init__(self) -> None:
        self.occupied = UNSET
        self.changes = array("d")
        self.open = 0


class ParkingStuck(LearnedRule):
    """No state change for at least `stuck_min_h`, when this bay's learned change rate (an EW
    rate over about a week of its own time) expected `stuck_expected_changes` of them. A rarely
    used bay learns a low rate and is not flagged. A silence longer than eight mean gaps (and
    six hours) is not learned as quiet time, so a stuck sensor does not lower its own rate. Also learns
    the bay's seasonal occupancy baseline (share of time occupied by hour and day type)."""

    name = "parking_stuck"
    kinds = frozenset({"parking"})
    v1_key = "pst"

    def __init__(self, baseline: SeasonalBaseline, params: ParkingParams | None = None) -> None:
        self.baseline = baseline
        self.p = params or ParkingParams()

    def fresh(self) -> StuckBayState:
        return StuckBayState(self.baseline.fresh())

    def _score(self, st: StuckBayState, occupied: float, ts: float) -> float:
        if not known(st.occupied) or occupied != st.occupied or st.learned < self.p.warmup_changes or st.time <= 0.0:
            return 0.0
        since = ts - st.changed_at
        if since < self.p.stuck_min_h * 3600.0:
            return 0.0
        return float(st.changes / st.time * since / self.p.stuck_expected_changes)

    def step(self, st: StuckBayState, occupied: float, ts: float) -> float:
        """The score of this reading; then learn."""
        score = self._score(st, occupied, ts)
        if not known(st.occupied):
            st.occupied, st.changed_at, st.last = occupied, ts, ts
        else:
            changed = occupied != st.occupied
            dt = ts - st.last
            dt = 0.0 if dt < 0.0 else _MAX_GAP_S if dt > _MAX_GAP_S else dt
            decay = 1.0 - dt / _RATE_TAU_S  # exp(-dt/tau) to 2e-6 for dt up to an hour
            # a silence longer than usual (8 mean gaps, at least 6 h) is not taught as quiet time
            quiet_limit = 8.0 * st.time / st.changes if st.changes > 0 else 0.0
            learn_time = ts - st.changed_at <= (quiet_limit if quiet_limit > _QUIET_MIN_S else _QUIET_MIN_S)
            st.changes = st.changes * decay + (1.0 if changed else 0.0)
            if learn_time or changed:
                st.time = st.time * decay + dt
            if changed:
                st.occupied, st.changed_at = occupied, ts
                if st.learned < 1000:
                    st.learned += 1
            st.last = ts
        self.baseline.update(st.baseline, occupied, ts)
        return score

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: StuckBayState) -> Verdict:
        occupied = reading.values.get("occupied")
        if occupied is None:
            return QUIET
        score = self.step(state, 1.0 if occupied else 0.0, reading.ts)
        squashed = score / (score + 1.0)
        if score >= 1.0:
            state.open = 1
            hours = (reading.ts - state.changed_at) / 3600.0
            return Finding(self.name, True, "warning", bool(occupied), None,
                           f"sensor fault: parking sensor reported {'occupied' if occupied else 'free'} "
                           f"without a change for {hours:.0f} h, unusual for this bay"), squashed
        if state.open and state.changed_at == reading.ts:
            state.open = 0
            return Finding(self.name, False, value=bool(occupied)), squashed
        return None, squashed


class ParkingFlapping(LearnedRule):
    """`flap_changes` state changes within `flap_window_s`: faster than cars come and go, so a
    faulty sensor. Keeps the last `flap_changes` change times; clears after a quiet window."""

    name = "parking_flapping"
    kinds = frozenset({"parking"})
    v1_key = "pfl"

    def __init__(self, params: ParkingParams | None = None) -> None:
        self.p = params or ParkingParams()

    def fresh(self) -> FlappingState:
        return FlappingState()

    def step(self, st: FlappingState, occupied: float, ts: float) -> float:
        """Changes within the window (this one included) per `flap_changes`; then remember it."""
        changes = st.changes
        i = len(changes)
        while i > 0 and ts - changes[i - 1] <= self.p.flap_window_s:
            i -= 1
        change = known(st.occupied) and occupied != st.occupied
        score = (len(changes) - i + (1 if change else 0)) / self.p.flap_changes
        if change:
            changes.append(ts)
            if len(changes) > self.p.flap_changes:
                del changes[0]
        st.occupied = occupied
        return score

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: FlappingState) -> Verdict:
        occupied = reading.values.get("occupied")
        if occupied is None:
            return QUIET
        score = self.step(state, 1.0 if occupied else 0.0, reading.ts)
        squashed = score / (score + 1.0)
        if score >= 1.0:
            state.open = 1
            return Finding(self.name, True, "warning", len(state.changes), float(self.p.flap_changes),
                           f"sensor fault: parking sensor flapping, {self.p.flap_changes} changes within "
                           f"{self.p.flap_window_s / 60:g} min"), squashed
        if state.open and (not state.changes or reading.ts - state.changes[-1] > self.p.flap_window_s):
            state.open = 0
            return Finding(self.name, False, value=bool(occupied)), squashed
        return None, squashed
