"""What one finished case says about the loop: its outcome, times and deadlines met (the loop's figures).

One definition, used by the KPIs computed from the store (`citywatch.loop.kpis`: GET /kpis, the
report) and by the InfluxDB `cases` point written when a case finishes (`citywatch.sinks.lineprotocol`:
the Grafana panels), so the two agree. A case is one alert; it finishes with its terminal transition,
`closed` or `resolved` (model.TERMINAL_STATUSES). Definitions (times in seconds from `opened_at`):

- outcome: `closed_verified` (closed by the engine: the device's readings stayed clear through the
  follow-up window), `closed_confirmed` (closed by a person: nothing to measure, or verification
  overdue), `resolved_by_person` (a person resolved it, dispatched or not), `resolved_condition_cleared`
  (the engine resolved it: the condition cleared, or a flapping alert went quiet).
- dispatched: the case was ever assigned. `resolved_without_dispatch`: resolved (either way) and never
  assigned: it left before the dispatch part of the loop began.
- time_to_ack: first acknowledgement or assignment (`responded_at`; a re-assignment does not move it).
- time_to_rectify: the last `rectified` (the rectification that held, when one was reopened).
- time_to_close: the terminal transition; time to verified closure is this for `closed_verified`.
- within_review: the first acknowledgement or assignment came at or before the review deadline. Not
  applicable (None) to a case that finished unacknowledged and unassigned before its review deadline.
- within_response: closed (verified or confirmed) at or before the response deadline. Not applicable to
  a case never assigned that finished before its response deadline; a dispatched case a person resolved
  instead of closing counts as missed.
- closed_at_grid: closed (verified or confirmed) while escalation_level was 0 (never escalated above the
  grid): the city's headline figure. Not applicable to resolved cases.
- reopened_after_rectification: rectified, and reopened at least once (the condition returned during
  verification). Not applicable to a case never rectified.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

OUTCOMES: tuple[str, ...] = ("closed_verified", "closed_confirmed", "resolved_by_person",
                             "resolved_condition_cleared")


class CaseFields(Protocol):
    """The alert fields a case's figures need (model.Alert has them; so does kpis' slim view)."""

    status: str
    opened_at: float
    review_deadline: float
    response_deadline: float
    acked_at: float | None
    assigned_at: float | None
    responded_at: float | None
    rectified_at: float | None
    resolved_at: float | None
    resolved_by: str | None
    closed_at: float | None
    closed_by: str | None
    reopened: int
    escalation_level: int


class CaseFigures(NamedTuple):
    """One finished case (see the module docstring); None: not applicable to this case."""

    finished_at: float
    outcome: str
    dispatched: bool
    time_to_ack_s: float | None
    time_to_rectify_s: float | None
    time_to_close_s: float
    within_review: bool | None
    within_response: bool | None
    closed_at_grid: bool | None
    reopened_after_rectification: bool | None

    @property
    def resolved_without_dispatch(self) -> bool:
        return self.outcome.startswith("resolved_") and not self.dispatched


def first_response(alert: CaseFields) -> float | None:
    """`responded_at`; for alerts stored before that field, the earlier of acknowledgement and assignment."""
    if alert.responded_at is not None:
        return alert.responded_at
    times = [t for t in (alert.acked_at, alert.assigned_at) if t is not None]
    return min(times) if times else None


def case_figures(alert: CaseFields) -> CaseFigures | None:
    """The figures of a finished case; None while the alert is not closed or resolved."""
    if alert.status == "closed" and alert.closed_at is not None:
        finished = alert.closed_at
        outcome = "closed_confirmed" if alert.closed_by else "closed_verified"
    elif alert.status == "resolved" and alert.resolved_at is not None:
        finished = alert.resolved_at
        outcome = "resolved_by_person" if alert.resolved_by else "resolved_condition_cleared"
    else:
        return None
    opened = alert.opened_at
    closed = outcome.startswith("closed_")
    dispatched = alert.assigned_at is not None
    responded = first_response(alert)
    if responded is not None:
        within_review: bool | None = responded <= alert.review_deadline
    else:
        within_review = None if finished <= alert.review_deadline else False
    if dispatched or finished > alert.response_deadline:
        within_response: bool | None = closed and finished <= alert.response_deadline
    else:
        within_response = None
    rectified = alert.rectified_at is not None
    return CaseFigures(
        finished_at=finished, outcome=outcome, dispatched=dispatched,
        time_to_ack_s=None if responded is None else responded - opened,
        time_to_rectify_s=None if alert.rectified_at is None else alert.rectified_at - opened,
        time_to_close_s=finished - opened, within_review=within_review, within_response=within_response,
        closed_at_grid=(alert.escalation_level == 0) if closed else None,
        reopened_after_rectification=(alert.reopened > 0) if rectified else None,
    )


def place(device: dict[str, Any]) -> tuple[str, str, str, str]:
    """(city, district, community, grid) of an alert's device block ("" where not set)."""
    return (str(device.get("city") or ""), str(device.get("district") or ""), str(device.get("community") or ""),
            str(device.get("grid") or ""))
