"""The alert lifecycle: hold and clear periods, flapping, deadlines and escalation on an injected clock."""

from __future__ import annotations

from typing import Any

import pytest

from citywatch.config import AlertSettings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.errors import AlertError
from citywatch.model import Device, Finding, Transition

GAS = Device(id="g1", kind="gas", district="Nanhu", grid="G1", address="1 Main St", lat=30.7, lon=120.7)
T0 = 1_795_000_000.0


def active(severity: str = "warning", rule: str = "gas_level", latched: bool = False) -> Finding:
    return Finding(rule, True, severity, 30.0, 25.0, "gas", latched=latched)


def clear(rule: str = "gas_level") -> Finding:
    return Finding(rule, False)


def engine(**settings: Any) -> AlertEngine:
    return AlertEngine(AlertSettings(**settings))


def run(e: AlertEngine, findings: list[Finding], start: float = T0, step: float = 60) -> list[Transition]:
    out = []
    for i, f in enumerate(findings):
        t = e.apply(GAS, f, start + i * step)
        if t is not None:
            out.append(t)
    return out


def names(ts: list[Transition]) -> list[str]:
    return [t.transition for t in ts]


def test_open_update_resolve_and_ids() -> None:
    e = engine()
    ts = run(e, [active(), active(), active("critical"), clear()])
    assert names(ts) == ["opened", "updated", "resolved"]
    assert [t.id for t in ts] == [f"{ts[0].alert_id}.{n}" for n in (1, 2, 3)]
    assert ts[0].alert.device["district"] == "Nanhu" and ts[0].alert.device["lat"] == 30.7
    assert ts[-1].alert.count == 3 and ts[-1].alert.status == "resolved"


def test_hold_readings_and_hold_seconds_before_opening() -> None:
    e = engine(hold_readings=3)
    rule = "battery_low"  # holds apply to rules that are not life-safety
    assert names(run(e, [active(rule=rule), active(rule=rule), clear(rule), active(rule=rule),
                         active(rule=rule)])) == []
    assert names(run(e, [active(rule=rule)], start=T0 + 300)) == ["opened"]
    timed = engine(hold_s=120)
    assert names(run(timed, [active(rule=rule)] * 3, step=50)) == []  # 100 s so far
    assert names(run(timed, [active(rule=rule)], start=T0 + 130)) == ["opened"]


def test_a_safety_rule_opens_at_the_first_reading_whatever_the_global_hold() -> None:
    e = engine(hold_readings=3, hold_s=600)
    first = e.apply(GAS, active(), T0)  # gas_level: life-safety
    assert first is not None and first.transition == "opened" and first.alert.safety
    marked = engine(hold_readings=3, rules={"battery_low": {"safety": True}})
    opened = marked.apply(GAS, active(rule="battery_low"), T0)
    assert opened is not None and opened.transition == "opened" and opened.alert.safety


@pytest.mark.parametrize("rules", [{"gas_level": {"hold_readings": 2}}, {"lock_tamper": {"hold_s": 10}},
                                   {"water_depth": {"safety": False}},
                                   {"noise_limit": {"safety": True, "hold_readings": 2}}])
def test_config_refuses_to_hold_back_or_demote_a_safety_rule(rules: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="life-safety"):
        AlertSettings(rules=rules)


def test_per_rule_policy_overrides_default() -> None:
    e = engine(rules={"noise_limit": {"hold_readings": 2}})
    assert names(run(e, [active(rule="noise_limit")])) == []
    other = e.apply(GAS, active(rule="battery_low"), T0)
    assert other is not None and other.transition == "opened"


def test_clear_readings_before_resolving() -> None:
    e = engine(clear_readings=3)
    assert names(run(e, [active(), clear(), clear(), active(), clear(), clear()])) == ["opened"]
    assert names(run(e, [clear()], start=T0 + 600)) == ["resolved"]


def test_flapping_becomes_one_alert_instead_of_many_webhooks() -> None:
    e = engine(flap_max_cycles=3, flap_window_min=30, flap_quiet_min=10)
    findings = [active(), clear()] * 10  # 10 cycles in 20 minutes
    ts = run(e, findings)
    assert names(ts) == ["opened", "resolved"] * 3 + ["flapping"]
    flapping = ts[-1].alert
    assert flapping.flapping and e.is_open("g1", "gas_level")
    assert e.tick(T0 + 19 * 60 + 5 * 60) == []  # last active 19 min after start; quiet only 5 min
    quiet = e.tick(T0 + 19 * 60 + 11 * 60)
    assert names(quiet) == ["resolved"] and quiet[0].reason == "quiet after flapping"
    # well outside the window the next opening is a normal one
    assert names(run(e, [active()], start=T0 + 4 * 3600)) == ["opened"]


def test_slow_cycles_are_not_flapping() -> None:
    e = engine(flap_max_cycles=3, flap_window_min=30)
    ts = run(e, [active(), clear()] * 6, step=20 * 60)  # one cycle every 40 minutes
    assert "flapping" not in names(ts) and names(ts).count("opened") == 6


def test_escalation_on_review_and_response_deadlines() -> None:
    e = engine(review_deadline_h=6, response_deadline_h=15)
    opened = run(e, [active()])[0]
    assert opened.alert.review_deadline == T0 + 6 * 3600
    assert e.tick(T0 + 6 * 3600 - 1) == []
    review = e.tick(T0 + 6 * 3600)
    assert names(review) == ["escalated"] and "review" in review[0].reason
    assert e.tick(T0 + 7 * 3600) == []  # once
    response = e.tick(T0 + 15 * 3600)
    assert names(response) == ["escalated"] and "response" in response[0].reason
    assert response[0].alert.escalations == ["review", "response"]


def test_acknowledged_alert_escalates_only_on_response_deadline() -> None:
    e = engine()
    alert_id = run(e, [active()])[0].alert_id
    ack = e.acknowledge(alert_id, "grid-worker-7", T0 + 3600)
    assert ack.transition == "acknowledged" and ack.alert.acked_by == "grid-worker-7"
    with pytest.raises(AlertError):
        e.acknowledge(alert_id, "again", T0 + 3700)
    assert e.tick(T0 + 6 * 3600) == []
    assert names(e.tick(T0 + 15 * 3600)) == ["escalated"]
    resolved = e.resolve(alert_id, "grid-worker-7", T0 + 16 * 3600)
    assert resolved.alert.status == "resolved" and resolved.alert.resolved_by == "grid-worker-7"
    with pytest.raises(AlertError):
        e.resolve(alert_id, "again", T0 + 17 * 3600)


def test_deadlines_by_kind_and_severity() -> None:
    e = engine(deadlines={"gas.critical": {"review_h": 0.5, "response_h": 2}, "critical": {"review_h": 1,
               "response_h": 4}, "water": {"review_h": 2, "response_h": 8}})
    assert e.deadlines("gas", "critical") == (1800, 7200)
    assert e.deadlines("lock", "critical") == (3600, 14400)
    assert e.deadlines("water", "warning") == (7200, 28800)
    assert e.deadlines("noise", "warning") == (6 * 3600, 15 * 3600)
    ts = run(e, [active("warning"), active("critical")])
    assert names(ts) == ["opened", "updated"]
    assert ts[1].alert.review_deadline == T0 + 1800  # a raised severity tightens the deadlines


def test_latched_alert_waits_for_a_person() -> None:
    e = engine()
    ts = run(e, [active(rule="lock_forced_open", latched=True), clear("lock_forced_open")])
    assert names(ts) == ["opened"]
    assert e.is_open("g1", "lock_forced_open")


def test_a_persons_transition_id_can_never_be_the_engines_own() -> None:
    """Finding: an ack written by a second engine took id <alert>.N, and the owner's next transition
    (a rise to critical) got the same id and was dropped as a repeat."""
    owner = engine()
    opened = run(owner, [active()])[0]
    other_copy = AlertEngine(AlertSettings(), [opened.alert.__copy__()])
    ack = other_copy.acknowledge(opened.alert_id, "cli", T0 + 60)
    rise = owner.apply(GAS, active("critical"), T0 + 61)
    assert rise is not None and rise.transition == "updated"
    assert ack.id == f"{opened.alert_id}.2.acknowledged" and rise.id == f"{opened.alert_id}.2" and ack.id != rise.id
    assert owner.resolve(opened.alert_id, "ops", T0 + 120).id == f"{opened.alert_id}.3.resolved"


def test_restart_restores_open_alerts() -> None:
    e = engine()
    opened = run(e, [active()])[0]
    restored = AlertEngine(AlertSettings(), [opened.alert])
    assert names(run(restored, [active()], start=T0 + 60)) == []  # the same alert, updated
    resolved = run(restored, [clear()], start=T0 + 120)
    assert names(resolved) == ["resolved"] and resolved[0].alert_id == opened.alert_id
    assert resolved[0].id == f"{opened.alert_id}.2"


def test_engaged_devices_cover_every_open_alert_and_streak_after_pruning() -> None:
    """The pipeline folds a clear finding in only for an engaged device: every device with an
    unresolved alert or an active streak must stay in the set, whatever tick prunes."""
    e = engine(hold_readings=2)
    others = [Device(id=f"d{i}", kind="gas") for i in range(200)]
    for i, device in enumerate(others):
        e.apply(device, active(), T0 + i)  # a streak of one: pending, so engaged
        e.apply(device, clear(), T0 + i + 1)  # streak broken: nothing held any more
    run(e, [active(), active()])  # GAS: an open alert
    streak = Device(id="s1", kind="gas")
    e.apply(streak, active(), T0 + 500)
    assert len(e.engaged) >= 202
    e.tick(T0 + 600)
    assert e.engaged == {GAS.id, streak.id}  # pruned to what the engine holds
    assert names(run(e, [clear()], start=T0 + 700)) == ["resolved"]
