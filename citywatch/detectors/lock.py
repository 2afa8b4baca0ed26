"""Smart locks on rented housing: forced open, tamper, jammed, door ajar, brute-force unlocking."""

from __future__ import annotations

import bisect
from array import array

from citywatch.detectors.access import LockManyUsers, LockUnusualFailures, LockUnusualHour
from citywatch.detectors.base import QUIET, CompiledRule, Verdict, found
from citywatch.detectors.kindrules import KindRules, RuleContext
from citywatch.detectors.record import DeviceRecord, RuleState
from citywatch.kinds.lock import LockParams, LockRules
from citywatch.model import Device, Finding, Reading


class LockEventAlarm(CompiledRule):
    """An alarm event from the lock itself. Latched alarms stay open until a person resolves them;
    the others clear on the event named in `clear_on`."""

    kinds = frozenset({"lock"})
    in_order_only = False
    v1_key = ""

    def __init__(self, name: str, event: str, severity: str, message: str,
                 clear_on: frozenset[str] = frozenset()) -> None:
        self.name = name
        self.event = event
        self.severity = severity
        self.message = message
        self.clear_on = clear_on

    def fresh(self) -> None:
        return None

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: None) -> Verdict:
        event = reading.values["event"]
        if event == self.event:
            return found(Finding(self.name, True, self.severity, event, None, self.message,
                                 latched=not self.clear_on))
        if event in self.clear_on:
            return Finding(self.name, False, value=event), 0.0
        return QUIET


class FailuresState(RuleState):
    """Event times of the failed unlocks kept (sorted)."""

    __slots__ = ("times",)
    FIELDS = ("times",)

    def __init__(self) -> None:
        self.times = array("d")


class LockBruteForce(CompiledRule):
    """`fail_count` failed unlocks within `fail_window_s` (event time), whatever order they arrive in.

    Keeps failure times sorted, so a failure delivered late still completes the burst it belongs to:
    at most `MAX_KEPT` (the newest), and beyond `2 * fail_count` of them only those within
    `LATE_HORIZON_S` of the newest. A quiet lock keeps a handful; state stays bounded."""

    name = "lock_brute_force"
    kinds = frozenset({"lock"})
    in_order_only = False
    v1_key = "lock.fails"
    LATE_HORIZON_S = 86400.0
    MAX_KEPT = 64

    def __init__(self, rules: LockRules) -> None:
        self.rules = rules

    def fresh(self) -> FailuresState:
        return FailuresState()

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: FailuresState) -> Verdict:
        if reading.values["event"] != "unlock_fail":
            return QUIET
        fails = state.times
        at = reading.ts
        bisect.insort(fails, at)
        n, window = self.rules.fail_count, self.rules.fail_window_s
        drop = len(fails) - self.MAX_KEPT
        if len(fails) > 2 * n:
            horizon = fails[-1] - max(self.LATE_HORIZON_S, window)
            drop = max(drop, min(bisect.bisect_left(fails, horizon), len(fails) - 2 * n))
        if drop > 0:
            del fails[:drop]
        i = bisect.bisect_left(fails, at)
        if i >= len(fails) or fails[i] != at:
            return QUIET  # older than everything kept
        for start in range(max(0, i - n + 1), min(i, len(fails) - n) + 1):
            if fails[start + n - 1] - fails[start] <= window:
                return found(Finding(self.name, True, "critical", n, float(n),
                                     f"{n} failed unlocks within {window:g} s", latched=True))
        return QUIET


def lock_rules(rules: LockRules) -> list[LockEventAlarm | LockBruteForce]:
    return [
        LockEventAlarm("lock_forced_open", "forced_open", "critical", "door forced open"),
        LockEventAlarm("lock_tamper", "tamper", "critical", "lock tampered with (escutcheon removed)"),
        LockEventAlarm("lock_jammed", "jammed", "warning", "lock jammed",
                       clear_on=frozenset({"unlock_ok", "door_closed"})),
        LockEventAlarm("lock_door_ajar", "door_ajar", "warning", "door left open",
                       clear_on=frozenset({"door_closed"})),
        LockBruteForce(rules),
    ]


def rules(ctx: RuleContext) -> KindRules:
    """Lock's rules (KindSpec.rules): the lock's own alarms, brute force; users, hours and failures
    unusual for this door."""
    learned = ctx.learned(LockParams)
    return KindRules(list(lock_rules(ctx.section(LockRules))), [
        LockManyUsers(learned),
        LockUnusualHour(ctx.clock, learned, ctx.settings.rules.learned.baseline.flagged_weight),
        # one count per clock hour: too sparse for 48 buckets, so one bucket (warm after a day)
        LockUnusualFailures(ctx.baseline("failures", 0.1, seasonal=False, min_count=24), learned),
    ])
