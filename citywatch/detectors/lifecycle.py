"""The alert lifecycle: one unresolved alert per (device, rule), with the city's closed loop.

Transitions: opened, updated (severity raised, suspicion confirmed), flapping, acknowledged,
escalated, resolved; and the rest of the closed loop: assigned, on_site, rectified, rejected,
verifying, reopened, verification_overdue, closed.
- A condition must hold for `hold_readings` readings and `hold_s` seconds before an alert opens,
  and clear for `clear_readings` readings before it resolves (rules add value hysteresis).
- Life-safety rules (`AlertSettings.safety_rules`) never wait: the first active finding opens the
  alert, whatever the hold settings (fail safe). A finding marked `suspect` (a sensor fault seen on
  the same reading) opens or raises the alert all the same, with `suspect: sensor_fault`; a later
  plausible active reading clears the suspicion (an `updated` transition).
- More than `flap_max_cycles` open/resolve cycles within `flap_window_min` turn the next opening
  into one `flapping` alert that stays open until the condition has been quiet for `flap_quiet_min`.
- Review and response deadlines come per kind and severity. Review is met by acknowledgement or
  assignment, response by closure; each missed one (then every `escalation.repeat_h`) is an
  `escalated` transition one level up the grid hierarchy (`escalation_level`).
- Dispatch (`dispatch`): assigned -> on_site -> rectified; `rejected` sends it back to open. Once a
  team holds it, clear readings no longer resolve it. After `rectified`, a rule with a measurable
  condition is `verifying`: closed (verified) when its follow-up window ends with clear readings and
  no return of the condition; `reopened` (a failed rectification) if the condition returns;
  `verification_overdue` if the device sent nothing. Latched rules (nothing to measure) wait in
  `rectified` for a person's `closed`.

Transport-free and clock-injected: event times come from readings, `now` from the runner, so
replay and live data give the same transitions.

State per (device, rule) can leave and re-enter the engine: with `track_keys`, `take_touched()`
names the keys that changed, `export_key()` gives their `KeyState` and `restore_key()` puts one
back. The Faust runner keeps these in a changelog-backed Table, so a worker taking over a
partition resumes hold streaks, clear streaks and flap counts where the previous owner left them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from citywatch.config import AlertSettings, RulePolicy
from citywatch.errors import AlertError
from citywatch.model import SEVERITY_RANK, Alert, Device, Finding, KeyState, Transition, device_summary

AlertKey = tuple[str, str]  # (device_id, rule)


def alert_id(device_id: str, rule: str, opened_at: float) -> str:
    """Deterministic, so every runner (embedded, Faust, replay) names the same alert the same way."""
    digest = hashlib.blake2b(f"{device_id}|{rule}|{opened_at:.3f}".encode(), digest_size=8).hexdigest()
    return f"al_{digest}"


_IN_HAND = frozenset({"assigned", "on_site", "rectified"})  # dispatched: clear readings do not resolve
_FOLLOWING_UP = frozenset({"verifying", "verification_overdue"})  # rectified; the readings decide


class AlertNotFound(AlertError):
    """No unresolved alert with that id in this engine (unknown, or already resolved or closed)."""


class IllegalTransition(AlertError):
    """The action does not fit where the alert stands (e.g. rectified before assigned)."""


def _suspicion(finding: Finding) -> tuple[str, str]:
    """(suspect code, reason) an alert carries for this finding: a suspected sensor fault or nothing."""
    return ("sensor_fault", finding.suspect) if finding.suspect else ("", "")


class AlertEngine:
    """Holds the unresolved alerts and turns findings and people's actions into transitions."""

    def __init__(self, settings: AlertSettings, open_alerts: Iterable[Alert] = (), *,
                 track_keys: bool = False) -> None:
        self.settings = settings
        self.track_keys = track_keys  # record changed keys for take_touched() (the Faust runner)
        self.by_key: dict[AlertKey, Alert] = {}
        self.by_id: dict[str, Alert] = {}
        self.dirty: dict[str, Alert] = {}
        self.pending: dict[AlertKey, tuple[int, float]] = {}  # active streak: (readings, since)
        self.clearing: dict[AlertKey, int] = {}  # clear streak of an open alert
        self.cycles: dict[AlertKey, list[float]] = {}  # recent opening times, for flapping
        self.touched: set[AlertKey] = set()  # with track_keys: keys changed since take_touched()
        # Devices with an unresolved alert or an active streak (a superset, pruned in tick): a
        # clear finding of any other device changes nothing, so the pipeline need not fold it in.
        self.engaged: set[str] = set()
        self.safety: frozenset[str] = settings.safety_rules
        self._default_policy = RulePolicy(hold_readings=settings.hold_readings, hold_s=settings.hold_s,
                                          clear_readings=settings.clear_readings)
        for alert in open_alerts:
            self._index(alert)

    def _index(self, alert: Alert) -> None:
        self.by_key[(alert.device_id, alert.rule)] = alert
        self.by_id[alert.id] = alert
        self.engaged.add(alert.device_id)
        self._touch((alert.device_id, alert.rule))

    def _touch(self, key: AlertKey) -> None:
        if self.track_keys:
            self.touched.add(key)

    def _policy(self, rule: str) -> RulePolicy:
        return self.settings.rules.get(rule, self._default_policy)

    def deadlines(self, kind: str, severity: str) -> tuple[float, float]:
        """(review, response) in seconds for this kind and severity; the most specific key wins."""
        table = self.settings.deadlines
        for key in (f"{kind}.{severity}", kind, severity):
            if key in table:
                return table[key].review_h * 3600, table[key].response_h * 3600
        return self.settings.review_deadline_h * 3600, self.settings.response_deadline_h * 3600

    def _transition(self, alert: Alert, kind: str, at: float, reason: str = "", person: bool = False) -> Transition:
        """The next transition of `alert`. Its id is `<alert id>.<n>`; a person's action adds `.<kind>`,
        so an id can never name both a person's act and the engine's own (should two engines ever
        count the same alert, the webhook-id of one could otherwise drop the other as a repeat)."""
        alert.transitions += 1
        self.dirty[alert.id] = alert
        self._touch((alert.device_id, alert.rule))
        snapshot = Alert(**{f: getattr(alert, f) for f in alert.__struct_fields__})
        snapshot.escalations = list(alert.escalations)
        transition_id = f"{alert.id}.{alert.transitions}.{kind}" if person else f"{alert.id}.{alert.transitions}"
        return Transition(id=transition_id, alert_id=alert.id, transition=kind, at=at, alert=snapshot, reason=reason)

    def is_open(self, device_id: str, rule: str) -> bool:
        return (device_id, rule) in self.by_key

    # -- findings ---------------------------------------------------------------------------

    def apply(self, device: Device, finding: Finding, at: float) -> Transition | None:
        """Fold one finding (at event time `at`) into the device's alert for that rule."""
        key = (device.id, finding.rule)
        alert = self.by_key.get(key)
        if finding.active:
            if alert is None:
                return self._maybe_open(key, device, finding, at)
            if self.clearing.pop(key, None) is not None:
                self._touch(key)
            if alert.status in _FOLLOWING_UP:
                return self._reopen(alert, finding, at)
            return self._update(alert, finding, at)
        if self.pending.pop(key, None) is not None:
            self._touch(key)
        if alert is None or alert.latched:
            return None
        if alert.status in _FOLLOWING_UP:
            return self._verified_clear(alert, at)
        if alert.status in _IN_HAND:
            return None  # a team is on it: the loop closes by rectification and verification
        if alert.flapping:
            return None  # resolves once quiet for flap_quiet_min (see tick)
        streak = self.clearing.get(key, 0) + 1
        self._touch(key)
        if streak < self._policy(finding.rule).clear_readings:
            self.clearing[key] = streak
            return None
        self.clearing.pop(key, None)
        return self._close(alert, at, None, "condition cleared")

    def _maybe_open(self, key: AlertKey, device: Device, finding: Finding, at: float) -> Transition | None:
        self._touch(key)
        if finding.rule in self.safety:
            self.pending.pop(key, None)
            return self._open(key, device, finding, at, at)  # fail safe: no hold for a life-safety rule
        policy = self._policy(finding.rule)
        count, since = self.pending.get(key, (0, at))
        count += 1
        if count < policy.hold_readings or at - since < policy.hold_s:
            self.pending[key] = (count, since)
            self.engaged.add(key[0])
            return None
        self.pending.pop(key, None)
        return self._open(key, device, finding, since if policy.hold_s or policy.hold_readings > 1 else at, at)

    def _update(self, alert: Alert, finding: Finding, at: float) -> Transition | None:
        alert.count += 1
        alert.value = finding.value
        alert.updated_at = max(alert.updated_at, at)
        alert.last_active_at = max(alert.last_active_at, at)
        self.dirty[alert.id] = alert
        self._touch((alert.device_id, alert.rule))
        if SEVERITY_RANK[finding.severity] <= SEVERITY_RANK[alert.severity]:
            if alert.suspect and not finding.suspect:
                alert.suspect, alert.suspect_reason = "", ""
                return self._transition(alert, "updated", at, "confirmed by a plausible reading")
            return None
        alert.severity = finding.severity
        alert.threshold = finding.threshold
        alert.message = finding.message
        alert.suspect, alert.suspect_reason = _suspicion(finding)
        review, response = self.deadlines(alert.kind, alert.severity)
        alert.review_deadline = min(alert.review_deadline, alert.opened_at + review)
        alert.response_deadline = min(alert.response_deadline, alert.opened_at + response)
        return self._transition(alert, "updated", at, "severity raised" + ("; sensor fault suspected"
                                                                           if alert.suspect else ""))

    def _open(self, key: AlertKey, device: Device, finding: Finding, started: float, at: float) -> Transition:
        cycles = self._recent_cycles(key, at)
        flapping = len(cycles) >= self.settings.flap_max_cycles and not finding.latched
        review, response = self.deadlines(device.kind, finding.severity)
        alert = Alert(
            id=alert_id(device.id, finding.rule, at), device_id=device.id, kind=device.kind, rule=finding.rule,
            severity=finding.severity, status="open", opened_at=at, updated_at=at, value=finding.value,
            threshold=finding.threshold, message=finding.message, latched=finding.latched,
            review_deadline=at + review, response_deadline=at + response,
            device=device_summary(device, device.id, device.kind), flapping=flapping,
            condition_since=started, last_active_at=at, safety=finding.rule in self.safety,
        )
        alert.suspect, alert.suspect_reason = _suspicion(finding)
        self._index(alert)
        cycles.append(at)
        del cycles[: max(0, len(cycles) - self.settings.flap_max_cycles)]
        if flapping:
            return self._transition(alert, "flapping", at, f"opened and resolved {len(cycles) - 1} times within "
                                                           f"{self.settings.flap_window_min:g} min")
        return self._transition(alert, "opened", at, alert.suspect_reason)

    def _recent_cycles(self, key: AlertKey, at: float) -> list[float]:
        cycles = self.cycles.setdefault(key, [])
        window_s = self.settings.flap_window_min * 60
        cycles[:] = [t for t in cycles if at - t <= window_s]
        return cycles

    def _close(self, alert: Alert, at: float, by: str | None, reason: str, person: bool = False) -> Transition:
        alert.status = "resolved"
        alert.resolved_at = at
        alert.resolved_by = by
        alert.updated_at = max(alert.updated_at, at)
        self._forget(alert)
        return self._transition(alert, "resolved", at, reason, person)

    def _forget(self, alert: Alert) -> None:
        del self.by_key[(alert.device_id, alert.rule)]
        del self.by_id[alert.id]
        self.clearing.pop((alert.device_id, alert.rule), None)

    # -- people and the dispatch system ----------------------------------------------------

    def _get(self, alert_id: str) -> Alert:
        alert = self.by_id.get(alert_id)
        if alert is None:
            raise AlertNotFound(f"no open alert {alert_id}")
        return alert

    def acknowledge(self, alert_id: str, by: str, at: float) -> Transition:
        alert = self._get(alert_id)
        if alert.status != "open":
            raise IllegalTransition(f"alert {alert_id} is already {alert.status}")
        alert.status = "acknowledged"
        alert.acked_at = at
        alert.acked_by = by
        alert.responded_at = at if alert.responded_at is None else alert.responded_at
        return self._transition(alert, "acknowledged", at, f"acknowledged by {by}", person=True)

    def resolve(self, alert_id: str, by: str, at: float) -> Transition:
        return self._close(self._get(alert_id), at, by, f"resolved by {by}", person=True)

    def dispatch(self, alert_id: str, action: str, by: str, at: float, *, assignee: str = "", note: str = "",
                 evidence: Iterable[str] = (), reason: str = "") -> Transition:
        """What the dispatch system (or a person) reports: `assigned` (to `assignee`), `on_site`,
        `rectified` (with `note` and `evidence` links), `rejected` (with `reason`: back to open for
        re-dispatch) or `closed` (a person confirms a rectification no sensor can verify).

        `rectified` on a rule with a measurable condition starts verification: the alert closes once
        the device's readings stayed clear for the rule's follow-up window (see `tick`)."""
        alert = self._get(alert_id)
        status = alert.status
        if action == "assigned":
            if not assignee.strip():
                raise IllegalTransition("assigned needs an assignee (team or person)")
            if status not in ("open", "acknowledged", "assigned", "on_site"):
                raise IllegalTransition(f"cannot assign alert {alert_id}: it is {status}")
            alert.status, alert.assignee, alert.assigned_at = "assigned", assignee.strip(), at
            alert.rejected_reason = ""
            alert.responded_at = at if alert.responded_at is None else alert.responded_at
            return self._transition(alert, "assigned", at, f"assigned to {alert.assignee} by {by}", person=True)
        if action == "on_site":
            if status != "assigned":
                raise IllegalTransition(f"on_site needs an assigned alert; {alert_id} is {status}")
            alert.status, alert.on_site_at = "on_site", at
            return self._transition(alert, "on_site", at, f"{alert.assignee} on site", person=True)
        if action == "rectified":
            if status not in ("assigned", "on_site"):
                raise IllegalTransition(f"rectified needs an assigned alert; {alert_id} is {status}")
            alert.rectified_at, alert.rectified_by = at, by
            alert.rectify_note, alert.evidence = note, [str(link) for link in evidence]
            if alert.latched:  # nothing to measure (a forced door): a person confirms the closure
                alert.status = "rectified"
                return self._transition(alert, "rectified", at, "rectified; awaiting confirmation", person=True)
            self._start_verification(alert, at)
            return self._transition(alert, "rectified", at, "rectified; verifying against the device's readings "
                                    f"for {self._verify_s(alert) / 60:g} min", person=True)
        if action == "rejected":
            if not reason.strip():
                raise IllegalTransition("rejected needs a reason")
            if status not in ("open", "acknowledged", "assigned", "on_site"):
                raise IllegalTransition(f"cannot reject alert {alert_id}: it is {status}")
            alert.status, alert.assignee, alert.rejected_reason = "open", None, reason.strip()
            return self._transition(alert, "rejected", at, f"rejected by {by}: {alert.rejected_reason}", person=True)
        if action == "closed":
            if status not in ("rectified", "verification_overdue"):
                raise IllegalTransition(f"only a rectified alert awaiting confirmation can be closed by a person; "
                                        f"{alert_id} is {status}")
            return self._finish(alert, at, by, f"closed: confirmed by {by}", person=True)
        raise IllegalTransition(f"unknown action {action!r}")

    # -- follow up and close ------------------------------------------------------------------

    def _verify_s(self, alert: Alert) -> float:
        return self.settings.verification.window_s(alert.rule)

    def _start_verification(self, alert: Alert, at: float) -> None:
        alert.status = "verifying"
        alert.verify_until = at + self._verify_s(alert)
        alert.verified_clear = 0
        self.dirty[alert.id] = alert

    def _verified_clear(self, alert: Alert, at: float) -> Transition | None:
        """A clear reading while following up: evidence for closure (a silent device's restarts it)."""
        self.dirty[alert.id] = alert
        if alert.status == "verification_overdue":
            self._start_verification(alert, at)
            alert.verified_clear = 1
            return self._transition(alert, "verifying", at, "readings resumed; verifying again")
        alert.verified_clear += 1
        return None

    def _reopen(self, alert: Alert, finding: Finding, at: float) -> Transition:
        """The condition came back during follow-up: the rectification failed."""
        alert.reopened += 1
        alert.status = "assigned" if alert.assignee else "open"
        alert.verify_until, alert.verified_clear = None, 0
        alert.count += 1
        alert.value, alert.last_active_at = finding.value, max(alert.last_active_at, at)
        alert.updated_at = max(alert.updated_at, at)
        if SEVERITY_RANK[finding.severity] > SEVERITY_RANK[alert.severity]:
            alert.severity, alert.threshold, alert.message = finding.severity, finding.threshold, finding.message
        return self._transition(alert, "reopened", at, f"condition returned during verification: {finding.message}")

    def _finish(self, alert: Alert, at: float, by: str | None, reason: str, person: bool = False) -> Transition:
        """Closed: rectified and verified (or confirmed). Leaves the engine like a resolved alert."""
        alert.status = "closed"
        alert.closed_at, alert.closed_by = at, by
        alert.updated_at = max(alert.updated_at, at)
        self._forget(alert)
        return self._transition(alert, "closed", at, reason, person)

    # -- clock ------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Transition]:
        """Close or flag alerts whose follow-up window ended; escalate alerts past a deadline (one
        level up the grid hierarchy each time); resolve flapping alerts that have gone quiet."""
        out: list[Transition] = []
        quiet_s = self.settings.flap_quiet_min * 60
        if len(self.engaged) > 2 * (len(self.by_key) + len(self.pending)) + 64:
            self.engaged = {key[0] for key in self.by_key} | {key[0] for key in self.pending}
        for alert in list(self.by_id.values()):
            if alert.status == "verifying" and alert.verify_until is not None and now >= alert.verify_until:
                out.append(self._verification_ended(alert, now))
                if alert.status == "closed":
                    continue
            if alert.flapping and alert.status in ("open", "acknowledged") and now - alert.last_active_at >= quiet_s:
                out.append(self._close(alert, now, None, "quiet after flapping"))
                continue
            escalation = self._due_escalation(alert, now)
            if escalation is not None:
                step, reason = escalation
                alert.escalations.append(step)
                alert.escalation_level = min(alert.escalation_level + 1, len(self.settings.escalation.levels) - 1)
                level = self.settings.escalation.levels[alert.escalation_level]
                out.append(self._transition(alert, "escalated", now, f"{reason}; escalated to the {level} level"))
        return out

    def _verification_ended(self, alert: Alert, now: float) -> Transition:
        minutes = self._verify_s(alert) / 60
        if alert.verified_clear > 0:
            return self._finish(alert, now, None, f"verified: the device's readings stayed clear for {minutes:g} min "
                                                  f"({alert.verified_clear} readings)")
        alert.status, alert.verify_until = "verification_overdue", None
        return self._transition(alert, "verification_overdue", now,
                                f"no reading from the device during the {minutes:g} min follow-up window")

    def _due_escalation(self, alert: Alert, now: float) -> tuple[str, str] | None:
        """The next missed deadline, if any: review (met by acknowledgement or assignment), response
        (met by closure), then every `escalation.repeat_h` without closure."""
        done = alert.escalations
        if alert.status == "open" and alert.acked_at is None and alert.assigned_at is None \
                and now >= alert.review_deadline and "review" not in done:
            return "review", "not acknowledged or assigned within the review deadline"
        if now < alert.response_deadline:
            return None
        if "response" not in done:
            return "response", "not closed within the response deadline"
        repeats = sum(1 for step in done if step.startswith("response+"))
        repeat_h = self.settings.escalation.repeat_h
        if now >= alert.response_deadline + (repeats + 1) * repeat_h * 3600:
            late_h = (repeats + 1) * repeat_h
            return f"response+{repeats + 1}", f"still not closed {late_h:g} h after the response deadline"
        return None

    def take_dirty(self) -> list[Alert]:
        dirty = list(self.dirty.values())
        self.dirty.clear()
        return dirty

    # -- state in and out (the Faust runner's Tables) -----------------------------------------

    def take_touched(self) -> set[AlertKey]:
        touched = self.touched
        self.touched = set()
        return touched

    def export_key(self, key: AlertKey) -> KeyState | None:
        """The state of one (device, rule); None when the engine holds nothing for it."""
        alert, pending = self.by_key.get(key), self.pending.get(key)
        clearing, cycles = self.clearing.get(key), self.cycles.get(key)
        if alert is None and pending is None and clearing is None and not cycles:
            return None
        return KeyState(alert=alert, pending=pending, clearing=clearing, cycles=list(cycles or ()))

    def restore_key(self, key: AlertKey, state: KeyState) -> None:
        """Put back what `export_key` gave (into an engine that holds nothing for `key`)."""
        if state.alert is not None:
            self.by_key[key] = state.alert
            self.by_id[state.alert.id] = state.alert
            self.engaged.add(key[0])
        if state.pending is not None:
            self.pending[key] = (state.pending[0], state.pending[1])
            self.engaged.add(key[0])
        if state.clearing is not None:
            self.clearing[key] = state.clearing
        if state.cycles:
            self.cycles[key] = list(state.cycles)
