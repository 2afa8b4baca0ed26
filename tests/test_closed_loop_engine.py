"""The closed loop in the alert engine: dispatch, rectification, sensor-verified closure, escalation
up the grid hierarchy; on an injected clock (event times and `now` are plain numbers)."""

from __future__ import annotations

from typing import Any

import pytest

from citywatch.config import AlertSettings
from citywatch.detectors.lifecycle import AlertEngine, AlertNotFound, IllegalTransition
from citywatch.model import Device, Finding, Transition

GAS = Device(id="g1", kind="gas", district="Nanhu", grid="G1")
LOCK = Device(id="l1", kind="lock", district="Nanhu", grid="G1")
T0 = 1_795_000_000.0
H = 3600.0


def active(rule: str = "gas_level", severity: str = "warning", latched: bool = False) -> Finding:
    return Finding(rule, True, severity, 30.0, 25.0, "gas at 30", latched=latched)


def clear(rule: str = "gas_level") -> Finding:
    return Finding(rule, False, value=1.0)


def opened(e: AlertEngine, device: Device = GAS, finding: Finding | None = None, at: float = T0) -> str:
    t = e.apply(device, finding or active(), at)
    assert t is not None and t.transition == "opened"
    return t.alert_id


def engine(**settings: Any) -> AlertEngine:
    return AlertEngine(AlertSettings(**settings))


def test_assigned_on_site_rectified_then_verified_by_the_devices_readings() -> None:
    e = engine()
    alert_id = opened(e)
    steps = [e.dispatch(alert_id, "assigned", "dispatch", T0 + 60, assignee="gas crew 3"),
             e.dispatch(alert_id, "on_site", "dispatch", T0 + 600),
             e.dispatch(alert_id, "rectified", "dispatch", T0 + 1200, note="valve replaced",
                        evidence=["https://dispatch.example/photos/1"])]
    assert [t.transition for t in steps] == ["assigned", "on_site", "rectified"]
    assert all(t.id.endswith("." + t.transition) for t in steps)  # people's acts: ids of their own
    alert = e.by_id[alert_id]
    assert alert.status == "verifying" and alert.verify_until == T0 + 1200 + 30 * 60
    assert alert.assignee == "gas crew 3" and alert.evidence == ["https://dispatch.example/photos/1"]
    assert e.apply(GAS, clear(), T0 + 1300) is None  # clear readings are evidence, not a resolution
    assert e.tick(T0 + 1200 + 30 * 60 - 1) == []
    closed = e.tick(T0 + 1200 + 30 * 60)
    assert [t.transition for t in closed] == ["closed"] and "verified" in closed[0].reason
    assert closed[0].alert.status == "closed" and closed[0].alert.closed_at == T0 + 1200 + 30 * 60
    assert not e.is_open("g1", "gas_level")


def test_a_rectification_too_early_reopens_the_same_alert_and_is_counted() -> None:
    e = engine()
    alert_id = opened(e)
    e.dispatch(alert_id, "assigned", "dispatch", T0 + 60, assignee="crew")
    e.dispatch(alert_id, "rectified", "dispatch", T0 + 120)
    back = e.apply(GAS, active(severity="critical"), T0 + 180)  # the sensor still alarms
    assert back is not None and back.transition == "reopened" and back.alert_id == alert_id
    assert back.alert.reopened == 1 and back.alert.status == "assigned" and back.alert.severity == "critical"
    e.dispatch(alert_id, "rectified", "dispatch", T0 + 3600)
    e.apply(GAS, clear(), T0 + 3700)
    assert [t.transition for t in e.tick(T0 + 3600 + 1800)] == ["closed"]


def test_a_silent_device_leaves_verification_overdue_until_readings_resume() -> None:
    e = engine()
    alert_id = opened(e)
    e.dispatch(alert_id, "assigned", "dispatch", T0 + 60, assignee="crew")
    e.dispatch(alert_id, "rectified", "dispatch", T0 + 120)
    overdue = e.tick(T0 + 120 + 1800)
    assert [t.transition for t in overdue] == ["verification_overdue"]
    resumed = e.apply(GAS, clear(), T0 + 4000)
    assert resumed is not None and resumed.transition == "verifying" and resumed.alert.verify_until == T0 + 4000 + 1800
    assert [t.transition for t in e.tick(T0 + 4000 + 1800)] == ["closed"]


def test_clear_readings_do_not_resolve_an_alert_a_team_holds() -> None:
    e = engine()
    alert_id = opened(e)
    e.dispatch(alert_id, "assigned", "dispatch", T0 + 60, assignee="crew")
    assert e.apply(GAS, clear(), T0 + 120) is None and e.by_id[alert_id].status == "assigned"
    unassigned = engine()
    opened(unassigned)
    resolved = unassigned.apply(GAS, clear(), T0 + 120)  # nobody dispatched yet: cleared is resolved
    assert resolved is not None and resolved.transition == "resolved"


def test_nothing_to_measure_closes_on_a_persons_confirmation() -> None:
    e = engine()
    alert_id = opened(e, LOCK, active("lock_forced_open", "critical", latched=True))
    e.dispatch(alert_id, "assigned", "dispatch", T0 + 60, assignee="police")
    rectified = e.dispatch(alert_id, "rectified", "dispatch", T0 + 600, note="door repaired")
    assert rectified.alert.status == "rectified"
    assert e.tick(T0 + 10 * H) == [] and e.by_id[alert_id].status == "rectified"  # no sensor can close it
    closed = e.dispatch(alert_id, "closed", "inspector wang", T0 + 700)
    assert closed.transition == "closed" and closed.alert.closed_by == "inspector wang"


@pytest.mark.parametrize(("steps", "action", "kwargs", "message"), [
    ([], "rectified", {}, "rectified needs an assigned alert"),
    ([], "on_site", {}, "on_site needs an assigned alert"),
    ([], "assigned", {"assignee": " "}, "needs an assignee"),
    ([], "rejected", {}, "needs a reason"),
    ([], "closed", {}, "only a rectified alert"),
    ([("assigned", {"assignee": "crew"}), ("rectified", {})], "assigned", {"assignee": "x"}, "cannot assign"),
    ([("assigned", {"assignee": "crew"}), ("rectified", {})], "closed", {}, "only a rectified alert"),
    ([], "exploded", {}, "unknown action"),
])
def test_illegal_transitions_are_refused_and_change_nothing(steps: list[tuple[str, dict[str, Any]]], action: str,
                                                            kwargs: dict[str, Any], message: str) -> None:
    e = engine()
    alert_id = opened(e)
    for step, step_kwargs in steps:
        e.dispatch(alert_id, step, "dispatch", T0 + 60, **step_kwargs)
    before = e.by_id[alert_id].__copy__()
    transitions = before.transitions
    with pytest.raises(IllegalTransition, match=message):
        e.dispatch(alert_id, action, "dispatch", T0 + 120, **kwargs)
    after = e.by_id[alert_id]
    assert after.status == before.status and after.transitions == transitions


def test_anything_after_closure_is_not_found() -> None:
    e = engine()
    alert_id = opened(e)
    e.resolve(alert_id, "ops", T0 + 60)
    with pytest.raises(AlertNotFound):
        e.dispatch(alert_id, "assigned", "dispatch", T0 + 120, assignee="crew")


def test_rejected_goes_back_to_open_for_re_dispatch() -> None:
    e = engine()
    alert_id = opened(e)
    e.dispatch(alert_id, "assigned", "dispatch", T0 + 60, assignee="crew")
    rejected = e.dispatch(alert_id, "rejected", "dispatch", T0 + 120, reason="not our district")
    assert rejected.alert.status == "open" and rejected.alert.assignee is None
    assert rejected.alert.rejected_reason == "not our district"


def levels(ts: list[Transition]) -> list[int]:
    return [t.alert.escalation_level for t in ts if t.transition == "escalated"]


def test_missed_deadlines_climb_the_grid_hierarchy_one_level_each() -> None:
    e = engine(escalation={"repeat_h": 6})
    opened(e)
    assert levels(e.tick(T0 + 6 * H)) == [1]  # review missed: community
    assert levels(e.tick(T0 + 15 * H)) == [2]  # response missed: district
    assert levels(e.tick(T0 + 20 * H)) == []
    last = e.tick(T0 + 21 * H)
    assert levels(last) == [3] and "city level" in last[0].reason  # 6 h later still not closed: the city
    assert levels(e.tick(T0 + 27 * H)) == [3]  # the top stays the top, and says so again


def test_assignment_meets_the_review_deadline() -> None:
    e = engine()
    alert_id = opened(e)
    e.dispatch(alert_id, "assigned", "dispatch", T0 + 60, assignee="crew")
    assert e.tick(T0 + 6 * H) == []
    assert levels(e.tick(T0 + 15 * H)) == [1]  # closure is what meets the response deadline
