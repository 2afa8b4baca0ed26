"""Smart locks on rented housing: forced open, tamper, jammed, door ajar, brute-force unlocking."""

from __future__ import annotations

from citywatch.config import LockRules
from citywatch.detectors.base import DeviceState
from citywatch.model import Device, Finding, Reading


class LockEventAlarm:
    """An alarm event from the lock itself. Latched alarms stay open until a person resolves them;
    the others clear on the event named in `clear_on`."""

    kinds = frozenset({"lock"})

    def __init__(self, name: str, event: str, severity: str, message: str,
                 clear_on: frozenset[str] = frozenset()) -> None:
        self.name = name
        self.event = event
        self.severity = severity
        self.message = message
        self.clear_on = clear_on

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        event = reading.values["event"]
        if event == self.event:
            return Finding(self.name, True, self.severity, event, None, self.message,
                           latched=not self.clear_on)
        if event in self.clear_on:
            return Finding(self.name, False, value=event)
        return None


class LockBruteForce:
    """`fail_count` failed unlocks within `fail_window_s` (event time). Keeps only the last
    `fail_count` failure times, so state stays bounded."""

    name = "lock_brute_force"
    kinds = frozenset({"lock"})

    def __init__(self, rules: LockRules) -> None:
        self.rules = rules

    def evaluate(self, reading: Reading, device: Device, state: DeviceState) -> Finding | None:
        if reading.values["event"] != "unlock_fail":
            return None
        fails: list[float] = state.setdefault("lock.fails", [])
        fails.append(reading.ts)
        fails.sort()
        del fails[: max(0, len(fails) - self.rules.fail_count)]
        if len(fails) >= self.rules.fail_count and fails[-1] - fails[0] <= self.rules.fail_window_s:
            return Finding(self.name, True, "critical", len(fails), float(self.rules.fail_count),
                           f"{len(fails)} failed unlocks within {self.rules.fail_window_s:g} s", latched=True)
        return None


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
