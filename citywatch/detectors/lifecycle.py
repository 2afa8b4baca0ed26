"""The alert lifecycle: one open alert per (device, rule), opened / updated / escalated /
acknowledged / resolved, with deadlines from the city's closed loop.

Transport-free and clock-injected: event times come from readings, `now` from the runner,
so replay and live data give the same transitions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from citywatch.config import AlertSettings
from citywatch.errors import AlertError
from citywatch.model import SEVERITY_RANK, Alert, Device, Finding, Transition, device_summary

AlertKey = tuple[str, str]  # (device_id, rule)


def alert_id(device_id: str, rule: str, opened_at: float) -> str:
    """Deterministic, so every runner (embedded, Faust, replay) names the same alert the same way."""
    digest = hashlib.blake2b(f"{device_id}|{rule}|{opened_at:.3f}".encode(), digest_size=8).hexdigest()
    return f"al_{digest}"


class AlertEngine:
    """Holds the unresolved alerts and turns findings and people's actions into transitions."""

    def __init__(self, settings: AlertSettings, open_alerts: Iterable[Alert] = ()) -> None:
        self.settings = settings
        self.by_key: dict[AlertKey, Alert] = {}
        self.by_id: dict[str, Alert] = {}
        self.dirty: dict[str, Alert] = {}
        for alert in open_alerts:
            self._index(alert)

    def _index(self, alert: Alert) -> None:
        self.by_key[(alert.device_id, alert.rule)] = alert
        self.by_id[alert.id] = alert

    def _transition(self, alert: Alert, kind: str, at: float, reason: str = "") -> Transition:
        alert.transitions += 1
        self.dirty[alert.id] = alert
        snapshot = Alert(**{f: getattr(alert, f) for f in alert.__struct_fields__})
        snapshot.escalations = list(alert.escalations)
        return Transition(id=f"{alert.id}.{alert.transitions}", alert_id=alert.id, transition=kind,
                          at=at, alert=snapshot, reason=reason)

    def is_open(self, device_id: str, rule: str) -> bool:
        return (device_id, rule) in self.by_key

    def apply(self, device: Device, finding: Finding, at: float) -> Transition | None:
        """Fold one finding (at event time `at`) into the device's alert for that rule."""
        alert = self.by_key.get((device.id, finding.rule))
        if finding.active:
            if alert is None:
                return self._open(device, finding, at)
            alert.count += 1
            alert.value = finding.value
            alert.updated_at = max(alert.updated_at, at)
            self.dirty[alert.id] = alert
            if SEVERITY_RANK[finding.severity] > SEVERITY_RANK[alert.severity]:
                alert.severity = finding.severity
                alert.threshold = finding.threshold
                alert.message = finding.message
                return self._transition(alert, "updated", at, "severity raised")
            return None
        if alert is None or alert.latched:
            return None
        return self._close(alert, at, None, "condition cleared")

    def _open(self, device: Device, finding: Finding, at: float) -> Transition:
        s = self.settings
        alert = Alert(
            id=alert_id(device.id, finding.rule, at), device_id=device.id, kind=device.kind, rule=finding.rule,
            severity=finding.severity, status="open", opened_at=at, updated_at=at, value=finding.value,
            threshold=finding.threshold, message=finding.message, latched=finding.latched,
            review_deadline=at + s.review_deadline_h * 3600, response_deadline=at + s.response_deadline_h * 3600,
            device=device_summary(device, device.id, device.kind),
        )
        self._index(alert)
        return self._transition(alert, "opened", at)

    def _close(self, alert: Alert, at: float, by: str | None, reason: str) -> Transition:
        alert.status = "resolved"
        alert.resolved_at = at
        alert.resolved_by = by
        alert.updated_at = max(alert.updated_at, at)
        del self.by_key[(alert.device_id, alert.rule)]
        del self.by_id[alert.id]
        return self._transition(alert, "resolved", at, reason)

    def acknowledge(self, alert_id: str, by: str, at: float) -> Transition:
        alert = self.by_id.get(alert_id)
        if alert is None:
            raise AlertError(f"no open alert {alert_id}")
        if alert.status == "acknowledged":
            raise AlertError(f"alert {alert_id} is already acknowledged")
        alert.status = "acknowledged"
        alert.acked_at = at
        alert.acked_by = by
        return self._transition(alert, "acknowledged", at, f"acknowledged by {by}")

    def resolve(self, alert_id: str, by: str, at: float) -> Transition:
        alert = self.by_id.get(alert_id)
        if alert is None:
            raise AlertError(f"no open alert {alert_id}")
        return self._close(alert, at, by, f"resolved by {by}")

    def tick(self, now: float) -> list[Transition]:
        """Escalate alerts whose review (ack) or response (resolve) deadline has passed."""
        out: list[Transition] = []
        for alert in list(self.by_id.values()):
            if alert.status == "open" and now >= alert.review_deadline and "review" not in alert.escalations:
                alert.escalations.append("review")
                out.append(self._transition(alert, "escalated", now, "not acknowledged within the review deadline"))
            if now >= alert.response_deadline and "response" not in alert.escalations:
                alert.escalations.append("response")
                out.append(self._transition(alert, "escalated", now, "not resolved within the response deadline"))
        return out

    def take_dirty(self) -> list[Alert]:
        dirty = list(self.dirty.values())
        self.dirty.clear()
        return dirty
