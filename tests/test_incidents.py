"""Incidents (issue 14, item 1): the grouping of alert transitions into incidents, on the real alert
engine and a real SQLite store (window, radius, keys, hazard groups, severity, closure, exactly one
incident per alert, restart, incident-level dispatch), and the incident webhooks and their routing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from citywatch.config import AlertSettings, IncidentSettings, WebhookSettings, load_settings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.errors import ConfigError
from citywatch.loop.incidents import (
    BadIncidentAction,
    IncidentBook,
    IncidentConflict,
    IncidentNotFound,
    dispatch_incident,
    distance_m,
    open_book,
)
from citywatch.model import Device, Finding, IncidentTransition, Output, Transition
from citywatch.sinks.outbox import Outbox
from citywatch.sinks.store import AlertStore

T0 = 1_795_000_000.0
MIN = 60.0


def gauge(i: int, grid: str = "G1", district: str = "Nanhu", lat: float | None = None, lon: float | None = None,
          kind: str = "water") -> Device:
    return Device(id=f"{kind}-{grid}-{i}", kind=kind, district=district, grid=grid, lat=lat, lon=lon,
                  address=f"{i} River Rd")


def water(depth: float) -> Finding:
    severity = "critical" if depth >= 25 else "warning" if depth >= 10 else "info"
    return Finding("water_depth", True, severity, depth, 3.0, f"water at {depth} cm")


def clear(rule: str = "water_depth") -> Finding:
    return Finding(rule, False, value=0.0)


class Book:
    """The real engine and an IncidentBook over a real store: feed findings, get both kinds of transition."""

    def __init__(self, path: Path, **incident_settings: Any) -> None:
        self.settings = IncidentSettings(**incident_settings)
        self.store = AlertStore(path)
        self.engine = AlertEngine(AlertSettings(), self.store.open_alerts())
        self.book, start = open_book(self.settings, self.store, T0)
        self.commit(start)

    def commit(self, out: Output) -> None:
        changes = self.book.take_changes()
        self.store.commit(out, self.engine.take_dirty(), {}, incidents=changes.incidents, members=changes.members)

    def apply(self, device: Device, finding: Finding, at: float) -> tuple[Transition | None, list[IncidentTransition]]:
        out = Output()
        transition = self.engine.apply(device, finding, at)
        if transition is not None:
            out.transitions.append(transition)
        self.book.group(out)
        self.commit(out)
        return transition, out.incident_transitions

    def open(self, device: Device, at: float, depth: float = 5.0) -> tuple[str, list[IncidentTransition]]:
        transition, incident_transitions = self.apply(device, water(depth), at)
        assert transition is not None and transition.transition == "opened"
        return transition.alert_id, incident_transitions

    def incident_of(self, alert_id: str) -> str | None:
        return self.store.incident_of(alert_id)

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def book(tmp_path: Path) -> Any:
    b = Book(tmp_path / "state.db")
    yield b
    b.close()


def kinds(transitions: list[IncidentTransition]) -> list[str]:
    return [t.transition for t in transitions]


# -- grouping -------------------------------------------------------------------------------------------------


def test_a_storm_in_one_grid_is_one_incident_that_pages_only_when_it_opens_and_worsens(book: Book) -> None:
    first, sent = book.open(gauge(0), T0)
    assert kinds(sent) == ["opened"]
    incident = sent[0].incident
    assert incident.id.startswith("in_") and incident.key == {"group": "water", "grid": "G1"}
    assert incident.severity == "info" and [m.alert_id for m in incident.members] == [first]
    joined = []
    for i in range(1, 10):  # nine more gauges within 20 minutes: members, no webhook each
        alert_id, sent = book.open(gauge(i), T0 + i * 2 * MIN)
        assert sent == []
        joined.append(alert_id)
    _, sent = book.apply(gauge(3), water(12.0), T0 + 19 * MIN)  # one gauge rises: the incident worsens
    assert kinds(sent) == ["updated"] and sent[0].incident.severity == "warning"
    assert "severity raised to warning" in sent[0].reason
    _, sent = book.apply(gauge(4), water(15.0), T0 + 19.5 * MIN)  # not higher than the incident: nothing
    assert sent == []
    live = book.book.get(incident.id)
    assert live is not None and [m.alert_id for m in live.members] == [first, *joined]
    assert {book.incident_of(a) for a in [first, *joined]} == {incident.id}


def test_window_counts_from_the_last_growth_and_a_quiet_key_opens_a_new_incident(book: Book) -> None:
    _, sent = book.open(gauge(0), T0)
    first = sent[0].incident.id
    for i, minutes in enumerate((50, 100, 150), start=1):  # each within 60 min of the previous growth
        alert_id, sent = book.open(gauge(i), T0 + minutes * MIN)
        assert sent == [] and book.incident_of(alert_id) == first
    alert_id, sent = book.open(gauge(9), T0 + (150 + 61) * MIN)  # 61 min after the last growth
    assert kinds(sent) == ["opened"] and sent[0].incident.id != first
    assert book.incident_of(alert_id) == sent[0].incident.id
    assert len(book.book.by_id) == 2  # the first stays open (its members are open) but takes no one new


def test_a_late_alert_inside_the_window_before_the_opening_joins(book: Book) -> None:
    _, sent = book.open(gauge(0), T0)
    alert_id, late = book.open(gauge(1), T0 - 30 * MIN)  # event time before the incident's first member
    assert late == [] and book.incident_of(alert_id) == sent[0].incident.id
    alert_id, late = book.open(gauge(2), T0 - 61 * MIN)
    assert kinds(late) == ["opened"]


def test_keys_grid_and_hazard_group_separate_incidents(book: Book) -> None:
    _, a = book.open(gauge(0, grid="G1"), T0)
    _, b = book.open(gauge(0, grid="G2"), T0 + MIN)  # same hazard, other grid
    gas = Device(id="gas-1", kind="gas", district="Nanhu", grid="G1")
    t, c = book.apply(gas, Finding("gas_level", True, "warning", 30.0, 25.0, "gas at 30"), T0 + 2 * MIN)
    assert [kinds(x) for x in (a, b, c)] == [["opened"]] * 3
    assert c[0].incident.key == {"group": "gas", "grid": "G1"}
    assert len({x[0].incident_id for x in (a, b, c)}) == 3


def test_key_fields_are_configurable(tmp_path: Path) -> None:
    book = Book(tmp_path / "state.db", key=["group", "district"])
    try:
        _, a = book.open(gauge(0, grid="G1"), T0)
        alert_id, b = book.open(gauge(0, grid="G2"), T0 + MIN)  # same district: the same incident
        assert b == [] and book.incident_of(alert_id) == a[0].incident_id
        assert a[0].incident.key == {"group": "water", "district": "Nanhu"}
        _, c = book.open(gauge(0, grid="G3", district="Xiuzhou"), T0 + 2 * MIN)
        assert kinds(c) == ["opened"]
    finally:
        book.close()


def test_hazard_groups_default_and_configured(tmp_path: Path) -> None:
    groups = IncidentBook(IncidentSettings()).group_of
    assert [groups(r) for r in ("gas_slow_rise", "water_fast_rise", "noise_night_burst", "parking_overstay",
                                "lock_forced_open", "sensor_jump", "battery_low", "device_offline",
                                "reporting_interval", "something_new")] == \
        ["gas", "water", "noise", "parking", "security", "device_health", "device_health", "device_health",
         "device_health", "something_new"]
    custom = IncidentBook(IncidentSettings(groups={"flood": ["water_*", "device_offline"],
                                                   "outage": ["device_*"]})).group_of
    assert (custom("water_depth"), custom("device_offline"), custom("device_flooding")) == \
        ("flood", "flood", "outage")  # an exact name beats a pattern listed earlier or later


def test_radius_splits_a_key_by_distance_and_unlocated_alerts_go_by_key(tmp_path: Path) -> None:
    book = Book(tmp_path / "state.db", radius_m=500.0)
    try:
        _, a = book.open(gauge(0, lat=30.7500, lon=120.7500), T0)
        near = gauge(1, lat=30.7527, lon=120.7500)  # about 300 m north
        far = gauge(2, lat=30.7700, lon=120.7500)  # about 2.2 km north
        assert 250 < distance_m(30.75, 120.75, 30.7527, 120.75) < 350
        alert_near, b = book.open(near, T0 + MIN)
        alert_far, c = book.open(far, T0 + 2 * MIN)
        alert_nowhere, d = book.open(gauge(3), T0 + 3 * MIN)  # no coordinates: the key alone decides
        assert b == [] and book.incident_of(alert_near) == a[0].incident_id
        assert kinds(c) == ["opened"] and book.incident_of(alert_far) == c[0].incident_id
        assert d == [] and book.incident_of(alert_nowhere) in {a[0].incident_id, c[0].incident_id}
        alert_next_to_far, e = book.open(gauge(4, lat=30.7705, lon=120.7500), T0 + 4 * MIN)
        assert e == [] and book.incident_of(alert_next_to_far) == c[0].incident_id  # the nearest incident
    finally:
        book.close()


# -- lifecycle -------------------------------------------------------------------------------------------------


def test_closes_when_every_member_is_terminal_and_never_reopens(book: Book) -> None:
    g0, g1 = gauge(0), gauge(1)
    _, sent = book.open(g0, T0)
    incident_id = sent[0].incident_id
    book.open(g1, T0 + MIN)
    _, sent = book.apply(g0, clear(), T0 + 10 * MIN)
    assert sent == []  # one member still open
    _, sent = book.apply(g1, clear(), T0 + 11 * MIN)
    assert kinds(sent) == ["closed"] and sent[0].incident.status == "closed"
    assert sent[0].incident.closed_at == T0 + 11 * MIN
    assert {m.status for m in sent[0].incident.members} == {"resolved"}
    assert book.book.get(incident_id) is None
    stored = book.store.incident(incident_id)
    assert stored is not None and stored.status == "closed"
    alert_id, sent = book.open(g0, T0 + 12 * MIN)  # same key, within the window: a new incident
    assert kinds(sent) == ["opened"] and sent[0].incident_id != incident_id
    assert book.incident_of(alert_id) == sent[0].incident_id


def test_every_alert_is_in_exactly_one_incident_and_the_store_refuses_a_second(book: Book) -> None:
    ids = [book.open(gauge(i, grid=f"G{i % 3}"), T0 + i * MIN)[0] for i in range(9)]
    rows = book.store.conn.execute("SELECT alert_id, COUNT(*) FROM incident_members GROUP BY alert_id").fetchall()
    assert sorted(rows) == sorted((a, 1) for a in ids)
    before = book.store.conn.execute("SELECT COUNT(*) FROM transitions").fetchone()[0]
    out = Output()
    out.transitions.append(book.engine.apply(gauge(0, grid="G9"), water(5.0), T0 + 20 * MIN))  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):  # a bug that put an alert in a second incident
        book.store.commit(out, book.engine.take_dirty(), {}, members=[(ids[0], "in_other", T0)])
    assert book.store.conn.execute("SELECT COUNT(*) FROM transitions").fetchone()[0] == before  # nothing of it


def test_restart_resumes_the_open_incident_with_the_same_ids(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    book = Book(path)
    _, sent = book.open(gauge(0), T0)
    incident_id = sent[0].id.rsplit(".", 1)[0]
    book.open(gauge(1), T0 + MIN)
    book.close()
    again = Book(path)  # a restart: open incidents and members from the store
    try:
        alert_id, sent = again.open(gauge(2), T0 + 2 * MIN)
        assert sent == [] and again.incident_of(alert_id) == incident_id
        _, sent = again.apply(gauge(2), water(30.0), T0 + 3 * MIN)
        assert kinds(sent) == ["updated"] and sent[0].id == f"{incident_id}.2"  # numbering goes on
        assert len(sent[0].incident.members) == 3
    finally:
        again.close()
    fresh = Book(tmp_path / "other.db")  # the same alerts in another store: the same ids (webhook-ids)
    try:
        _, sent = fresh.open(gauge(0), T0)
        assert sent[0].incident_id == incident_id
    finally:
        fresh.close()


def test_start_catches_up_with_actions_taken_while_no_runner_ran(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    book = Book(path)
    a0, sent = book.open(gauge(0), T0)
    incident_id = sent[0].incident_id
    book.close()
    store = AlertStore(path)  # `citywatch alerts resolve` with no runner: the store only, no incidents
    engine = AlertEngine(AlertSettings(), store.open_alerts())
    out = Output()
    out.transitions.append(engine.resolve(a0, "cli", T0 + 5 * MIN))
    store.commit(out, engine.take_dirty(), {})
    store.close()
    again = Book(path)
    try:
        assert again.book.get(incident_id) is None
        closed = again.store.incident(incident_id)
        assert closed is not None and closed.status == "closed"
        assert kinds(again.store.incident_transitions(incident_id)) == ["opened", "closed"]
    finally:
        again.close()


def test_open_alerts_from_before_incidents_are_grouped_at_start(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = AlertStore(path)
    engine = AlertEngine(AlertSettings())
    out = Output()
    out.transitions += [engine.apply(gauge(i), water(5.0), T0 + i * MIN) for i in range(3)]  # type: ignore[misc]
    store.commit(out, engine.take_dirty(), {})
    store.close()
    book = Book(path)
    try:
        incidents = book.store.incidents()
        assert len(incidents) == 1 and len(incidents[0].members) == 3
        assert kinds(book.store.incident_transitions(incidents[0].id)) == ["opened"]
    finally:
        book.close()


def test_disabled_groups_nothing(tmp_path: Path) -> None:
    book = Book(tmp_path / "state.db", enabled=False)
    try:
        alert_id, sent = book.open(gauge(0), T0)
        assert sent == [] and book.incident_of(alert_id) is None
    finally:
        book.close()


# -- incident-level dispatch -----------------------------------------------------------------------------------


def test_dispatch_on_an_incident_fans_out_to_the_members_that_can_take_it(book: Book) -> None:
    a0, sent = book.open(gauge(0), T0)
    incident_id = sent[0].incident_id
    a1, _ = book.open(gauge(1), T0 + MIN)
    a2, _ = book.open(gauge(2), T0 + 2 * MIN)
    book.apply(gauge(2), clear(), T0 + 3 * MIN)  # resolved before dispatch: skipped
    result, out = dispatch_incident(book.book, book.engine, incident_id, "assigned", "dispatch", T0 + 4 * MIN,
                                    assignee="drainage crew 2", stored=book.store.incident)
    book.commit(out)
    assert sorted(t.alert_id for t in result.applied) == sorted([a0, a1])
    assert result.skipped == {a2: "already resolved"}
    assert result.transition is not None and result.transition.id.endswith(".assigned")
    assert result.transition.incident.status == "assigned"
    assert result.transition.incident.assignee == "drainage crew 2"
    assert {book.engine.by_id[a].status for a in (a0, a1)} == {"assigned"}
    assert kinds(book.store.incident_transitions(incident_id)) == ["opened", "assigned"]
    # on_site before assigned is illegal for every member: nothing changes, 409
    b0, sent = book.open(gauge(0, grid="G7"), T0)
    with pytest.raises(IncidentConflict) as conflict:
        dispatch_incident(book.book, book.engine, sent[0].incident_id, "on_site", "dispatch", T0 + 5 * MIN)
    assert conflict.value.http_status == 409 and b0 in str(conflict.value)
    assert book.engine.by_id[b0].status == "open"
    with pytest.raises(IncidentNotFound) as missing:
        dispatch_incident(book.book, book.engine, "in_nope", "on_site", "dispatch", T0, stored=book.store.incident)
    assert missing.value.http_status == 404
    with pytest.raises(BadIncidentAction):
        dispatch_incident(book.book, book.engine, incident_id, "assigned", "dispatch", T0, assignee=" ")
    with pytest.raises(BadIncidentAction):
        dispatch_incident(book.book, book.engine, incident_id, "teleported", "dispatch", T0)


def test_closing_the_members_through_the_incident_closes_it_and_then_it_is_409(book: Book) -> None:
    door = Device(id="lock-1", kind="lock", district="Nanhu", grid="G1")
    forced = Finding("lock_forced_open", True, "critical", "forced_open", None, "door forced", latched=True)
    transition, sent = book.apply(door, forced, T0)
    incident_id = sent[0].incident_id
    for action, detail in (("assigned", {"assignee": "security 1"}), ("on_site", {}),
                           ("rectified", {"note": "lock replaced", "evidence": ["https://x.example/p.jpg"]})):
        _, out = dispatch_incident(book.book, book.engine, incident_id, action, "dispatch", T0 + MIN, **detail)
        book.commit(out)
    result, out = dispatch_incident(book.book, book.engine, incident_id, "closed", "officer 7", T0 + 2 * MIN)
    book.commit(out)
    assert result.transition is None and result.closed
    assert kinds(out.incident_transitions) == ["closed"]
    assert kinds(book.store.incident_transitions(incident_id)) == ["opened", "assigned", "on_site", "rectified",
                                                                     "closed"]
    with pytest.raises(IncidentConflict, match="closed"):
        dispatch_incident(book.book, book.engine, incident_id, "assigned", "x", T0, assignee="y",
                          stored=book.store.incident)
    assert transition is not None


# -- webhooks: routing and payload --------------------------------------------------------------------------


def outbox_rows(store: AlertStore) -> list[tuple[str, str, str]]:
    return store.conn.execute("SELECT endpoint, webhook_id, alert_id FROM webhook_outbox ORDER BY seq").fetchall()


def test_routes_receive_alerts_incidents_or_both(tmp_path: Path) -> None:
    hooks = WebhookSettings(url="http://127.0.0.1:9/default", receive=["incidents"], routes=[
        {"name": "alerts-only", "url": "http://127.0.0.1:9/a"},
        {"name": "both", "url": "http://127.0.0.1:9/b", "receive": ["alerts", "incidents"], "grids": ["G1"]},
        {"name": "critical-incidents", "url": "http://127.0.0.1:9/c", "receive": ["incidents"],
         "min_severity": "critical"},
    ])
    outbox = Outbox(hooks)
    store = AlertStore(tmp_path / "state.db", hooks=[outbox.enqueue])
    engine, book = AlertEngine(AlertSettings()), IncidentBook(IncidentSettings())
    out = Output()
    out.transitions.append(engine.apply(gauge(0, grid="G1"), water(5.0), T0))  # type: ignore[arg-type]
    out.transitions.append(engine.apply(gauge(0, grid="G2"), water(30.0), T0))  # type: ignore[arg-type]
    book.group(out)
    changes = book.take_changes()
    store.commit(out, engine.take_dirty(), {}, incidents=changes.incidents, members=changes.members)
    rows = outbox_rows(store)
    alert_rows = {(e, w) for e, w, _ in rows if w.startswith("al_")}
    incident_rows = {(e, w) for e, w, _ in rows if w.startswith("in_")}
    a1, a2 = (t.id for t in out.transitions)
    i1, i2 = (t.id for t in out.incident_transitions)
    assert alert_rows == {("alerts-only", a1), ("alerts-only", a2), ("both", a1)}
    # G1's incident (info): the route filtered to G1; G2's (critical): the critical route only; the default
    # route (receive: [incidents]) takes incidents no route claims, and never alerts
    assert incident_rows == {("both", i1), ("critical-incidents", i2)}
    store.close()
    outbox = Outbox(WebhookSettings(url="http://127.0.0.1:9/default", receive=["incidents"]))
    store = AlertStore(tmp_path / "other.db", hooks=[outbox.enqueue])
    store.commit(out, [], {})
    assert {(e, w) for e, w, _ in outbox_rows(store)} == {("default", i1), ("default", i2)}
    assert {lane for _, w, lane in outbox_rows(store)} == {t.incident_id for t in out.incident_transitions}
    store.close()


def test_incident_payload_is_utc_with_stable_codes_members_and_links(tmp_path: Path) -> None:
    outbox = Outbox(WebhookSettings(url="http://127.0.0.1:9/hook", receive=["incidents"],
                                    public_url="https://citywatch.example/api/"))
    store = AlertStore(tmp_path / "state.db", hooks=[outbox.enqueue])
    engine, book = AlertEngine(AlertSettings()), IncidentBook(IncidentSettings())
    out = Output()
    for i in range(3):
        out.transitions.append(engine.apply(gauge(i, lat=30.75, lon=120.75 + i / 1000), water(5.0 + 10 * i),
                                            T0 + i * MIN))  # type: ignore[arg-type]
    book.group(out)
    changes = book.take_changes()
    store.commit(out, engine.take_dirty(), {}, incidents=changes.incidents, members=changes.members)
    bodies = [json.loads(b) for (b,) in store.conn.execute("SELECT body FROM webhook_outbox ORDER BY seq")]
    store.close()
    assert [b["type"] for b in bodies] == ["incident.opened", "incident.updated", "incident.updated"]
    last = bodies[-1]
    incident = last["incident"]
    assert last["at"] == "2026-11-18T11:08:40.000Z" and incident["opened_at"] == "2026-11-18T11:06:40.000Z"
    assert incident["severity"] == "critical" and incident["status"] == "open" and incident["group"] == "water"
    assert incident["key"] == {"group": "water", "grid": "G1"} and incident["member_count"] == 3
    assert incident["open_member_count"] == 3 and incident["kinds"] == ["water"] and incident["grids"] == ["G1"]
    assert incident["location"] == {"lat": 30.75, "lon": 120.75}
    assert [m["device_id"] for m in incident["members"]] == ["water-G1-0", "water-G1-1", "water-G1-2"]
    member = incident["members"][0]
    assert member["status"] == "open" and member["rule"] == "water_depth" and member["opened_at"].endswith("Z")
    assert member["device"]["address"] == "0 River Rd"
    assert member["link"] == f"https://citywatch.example/api/alerts/{member['alert_id']}"
    assert last["links"] == {"self": f"https://citywatch.example/api/incidents/{incident['id']}"}
    assert bodies[0]["incident"]["member_count"] == 1  # as it was at that transition


@pytest.mark.parametrize("overrides,key", [
    ({"webhooks": {"receive": ["alert"]}}, "webhooks.receive"),
    ({"webhooks": {"receive": []}}, "webhooks.receive"),
    ({"webhooks": {"routes": [{"name": "x", "url": "http://h/", "receive": ["incidents", "incidents"]}]}},
     "receive"),
    ({"incidents": {"key": ["group", "street"]}}, "incidents.key"),
    ({"incidents": {"window_min": 0}}, "incidents.window_min"),
    ({"incidents": {"radius_m": -5}}, "incidents.radius_m"),
    ({"incidents": {"groups": {"water": []}}}, "incidents.groups"),
])
def test_bad_incident_and_receive_settings_are_named(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(None, overrides)


def test_an_alert_joining_a_dispatched_incident_goes_to_its_team_and_dispatch_hears_of_it(tmp_path: Path) -> None:
    b = Book(tmp_path / "state.db")
    first, _ = b.open(gauge(1), T0)
    incident_id = b.incident_of(first)
    assert incident_id is not None
    _, out = dispatch_incident(b.book, b.engine, incident_id, "assigned", "dispatch", T0 + MIN, assignee="drainage 2")
    b.commit(out)
    out = Output()
    joined = b.engine.apply(gauge(2), water(12.0), T0 + 10 * MIN)
    assert joined is not None
    out.transitions.append(joined)
    b.book.group(out)
    b.book.assign_joiners(b.engine, T0 + 10 * MIN, out)
    b.commit(out)
    assert b.incident_of(joined.alert_id) == incident_id
    assert b.engine.by_id[joined.alert_id].status == "assigned"
    assert b.engine.by_id[joined.alert_id].assignee == "drainage 2"
    said = [(t.transition, t.reason) for t in out.incident_transitions]
    assert any(kind == "updated" and "joined the incident while it was assigned" in why for kind, why in said)
