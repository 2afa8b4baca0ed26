"""Silences without a broker: what may be silenced, what a silence holds in the real outbox (SQLite),
what its end releases, and the CLI writing state.db directly when no runner owns it."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from citywatch.cli import main
from citywatch.config import AlertSettings, Settings, WebhookRoute, WebhookSettings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.loop import silences as sil
from citywatch.loop.silence_book import SilenceBook, policy, silence_line
from citywatch.loop.silences import Holds, SilenceOver, SilenceRefused, SilenceRequest
from citywatch.model import Device, Finding, Incident, IncidentMember, Output, Transition
from citywatch.sinks.outbox import Outbox
from citywatch.sinks.store import AlertStore, store_path
from tests.conftest import make_settings

T0 = 1_795_000_000.0
H = 3600.0
SAFETY = AlertSettings().safety_rules
NOISE = Device(id="noise-1", kind="noise", district="Nanhu", grid="G7", community="Jianshe", city="Jiaxing")
GAS = Device(id="gas-1", kind="gas", district="Nanhu", grid="G7", community="Jianshe", city="Jiaxing")
OTHER = Device(id="noise-2", kind="noise", district="Nanhu", grid="G8")


def ask(**fields: Any) -> SilenceRequest:
    return SilenceRequest(**{"reason": "road works", "by": "works-office", **fields})


def build(now: float = T0, **fields: Any) -> sil.Silence:
    return sil.build(ask(**fields), policy(Settings()), now)


# -- what may be silenced -------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "message"), [
    ({"duration": "1h"}, "at least one matcher"),
    ({"grid": "G7", "duration": "1h", "reason": "  "}, "reason"),
    ({"grid": "G7", "duration": "1h", "by": ""}, "by"),
    ({"grid": "G7"}, "give an end"),
    ({"grid": "G7", "end": T0 - 60}, "end must be after start"),
    ({"grid": "G7", "start": T0 - 7200, "end": T0 - 60}, "in the past"),
    ({"grid": "G7", "duration": "91d"}, "at most silences.max_days (90 days)"),
    ({"grid": "G7", "duration": "3 hours"}, "duration"),
    ({"grid": "G7", "end": "2030-01-01T08:00:00"}, "no UTC offset"),
    ({"grid": "G7", "duration": "1h", "end": T0 + 60}, "not both"),
    ({"kind": "radar", "duration": "1h"}, "kind: unknown"),
    ({"rule": "water_dept", "duration": "1h"}, "rule: unknown"),
    ({"grid": "G7", "rule": "gas_level", "duration": "1h"}, "only per device"),
    ({"device": ["gas-1", "gas-2"], "rule": "gas_level", "duration": "1h"}, "only per device"),
    ({"device": "gas-1", "rule": ["noise_limit", "gas_level"], "duration": "25h"}, "at most silences.max_safety_h"),
    ({"grid": "G\n7", "duration": "1h"}, "printable"),
])
def test_silences_that_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(SilenceRefused, match=re.escape(message)):
        build(**fields)


def test_what_a_silence_covers() -> None:
    works = build(grid="G7", kind=["noise", "water"], duration="3h")
    assert works.scope_text() == "grid=G7 kind=noise|water" and not works.safety
    assert works.ends_at == T0 + 3 * H and works.state(T0) == "active" and works.state(T0 + 3 * H) == "expired"
    noise = {"device": "noise-1", "grid": "G7", "kind": "noise", "rule": "noise_limit"}
    assert works.covers(noise, safety=False)
    assert not works.covers({**noise, "grid": "G8"}, safety=False)
    assert not works.covers({**noise, "grid": None}, safety=False)  # unknown place: not in scope
    assert not works.covers({**noise, "kind": "water", "rule": "water_depth"}, safety=True)  # safety: never by a grid
    calibration = build(device="gas-1", duration="2h")  # one device, short: it may hold its safety alarms
    assert calibration.safety and calibration.covers({"device": "gas-1", "rule": "gas_level"}, safety=True)
    long_one = build(device="gas-1", duration="3d")  # accepted, but holds only the device's other rules
    assert not long_one.safety and not long_one.covers({"device": "gas-1", "rule": "gas_level"}, safety=True)
    assert long_one.covers({"device": "gas-1", "rule": "battery_low"}, safety=False)
    scheduled = build(grid="G7", start=T0 + H, duration="4h")
    assert scheduled.state(T0) == "scheduled" and sil.silence_for([scheduled], noise, safety=False, now=T0) is None
    assert sil.silence_for([scheduled, works], noise, safety=False, now=T0 + 1.5 * H) is scheduled  # ends last
    assert sil.parse_duration("1h30m") == 5400 and sil.parse_time("2026-11-27T08:00:00+08:00", "start") == \
        sil.parse_time("2026-11-27T00:00:00Z", "start")


# -- held, then released, in the real outbox -------------------------------------------------------


class City:
    """An alert store with the outbox hook and a silence book, all on one injected clock."""

    def __init__(self, tmp_path: Path, routes: list[WebhookRoute] | None = None) -> None:
        self.now = T0
        settings = WebhookSettings(url="http://127.0.0.1:9/hook", routes=routes or [])
        self.outbox = Outbox(settings, clock=lambda: self.now, safety_rules=SAFETY)
        self.store = AlertStore(tmp_path / "state.db", hooks=[self.outbox.enqueue])
        self.book = SilenceBook(self.store.conn, Settings(), clock=lambda: self.now)
        self.engine = AlertEngine(AlertSettings(rules={}))  # noise opens at its first loud reading

    def apply(self, device: Device, finding: Finding) -> Transition:
        t = self.engine.apply(device, finding, self.now)
        assert t is not None
        out = Output()
        out.transitions.append(t)
        self.store.commit(out, self.engine.take_dirty(), {})
        return t

    def rows(self) -> list[tuple[str, str, str, str | None]]:
        """(webhook_id, endpoint, status, silence_id) in seq order."""
        return self.store.conn.execute(
            "SELECT webhook_id, endpoint, status, silence_id FROM webhook_outbox ORDER BY seq").fetchall()

    def status(self, webhook_id: str) -> list[tuple[str, str | None]]:
        return [(s, i) for w, _, s, i in self.rows() if w == webhook_id]

    def deliver_pending(self) -> None:
        self.store.conn.execute("UPDATE webhook_outbox SET status = 'delivered' WHERE status = 'pending'")


def loud(value: float = 80.0) -> Finding:
    return Finding("noise_limit", True, "warning", value, 60.0, "loud")


def quiet() -> Finding:
    return Finding("noise_limit", False, value=40.0)


def gas(level: float = 30.0) -> Finding:
    return Finding("gas_level", True, "warning", level, 25.0, "gas")


def test_a_held_alert_that_clears_unseen_is_suppressed_and_one_still_open_is_sent(tmp_path: Path) -> None:
    city = City(tmp_path)
    works = city.book.add(ask(grid="G7", duration="2h"))
    opened = city.apply(NOISE, loud())
    elsewhere = city.apply(OTHER, loud())
    alarm = city.apply(GAS, gas())  # gas_level: a grid silence never holds it
    assert city.status(opened.id) == [("held", works.id)]
    assert city.status(elsewhere.id) == [("pending", None)] and city.status(alarm.id) == [("pending", None)]
    brief = Device(id="noise-3", kind="noise", district="Nanhu", grid="G7")
    short = city.apply(brief, loud())
    city.now += 60
    cleared = city.apply(brief, quiet())
    assert cleared.transition == "resolved" and city.status(cleared.id) == [("held", works.id)]
    city.now += 30
    assert city.book.tick(city.now) is None  # still in force
    city.now = works.ends_at
    assert city.book.tick(city.now) == sil.Released(pending=1, suppressed=2, reheld=0)
    assert city.status(opened.id) == [("pending", works.id)]  # the row keeps which silence held it
    assert [s for s, _ in city.status(short.id) + city.status(cleared.id)] == ["suppressed", "suppressed"]
    assert city.book.tick(city.now + 1) is None  # released once
    assert sil.get(city.store.conn, works.id).released_at == city.now  # type: ignore[union-attr]


def test_an_alert_announced_before_the_silence_is_told_how_it_ended(tmp_path: Path) -> None:
    """Opened (and sent) before the silence, resolved during it: the receiver must not keep a case
    open for ever, so its held rows go out when the silence ends."""
    city = City(tmp_path)
    opened = city.apply(NOISE, loud())
    city.deliver_pending()
    works = city.book.add(ask(grid="G7", duration="2h"))
    city.now += 60
    resolved = city.apply(NOISE, quiet())
    assert city.status(resolved.id) == [("held", works.id)]
    silence, released = city.book.end(works.id, "works-office")  # ended early: released at once
    assert silence.ended_by == "works-office" and released.pending == 1 and released.suppressed == 0
    assert city.status(resolved.id)[0][0] == "pending" and city.status(opened.id) == [("delivered", None)]
    with pytest.raises(SilenceOver):
        city.book.end(works.id, "again")


def test_a_held_lane_holds_what_follows_and_an_overlapping_silence_keeps_holding(tmp_path: Path) -> None:
    city = City(tmp_path)
    first = city.book.add(ask(grid="G7", duration="1h"))
    second = city.book.add(ask(kind="noise", district="Nanhu", duration="3h"))
    opened = city.apply(NOISE, loud())
    assert city.status(opened.id) == [("held", second.id)]  # the one lasting longest
    city.book.end(second.id, "ops")  # the first still covers it: held on, under the first
    assert city.status(opened.id) == [("held", first.id)]
    city.now = first.ends_at  # over, but the runner has not ticked yet
    raised = city.apply(NOISE, Finding("noise_limit", True, "critical", 99.0, 60.0, "very loud"))
    assert raised.transition == "updated"
    assert city.status(raised.id) == [("held", first.id)]  # behind the held opening, not before it
    city.book.tick(city.now)
    assert [w for w, _, s, _ in city.rows() if s == "pending"] == [opened.id, raised.id]


def test_a_per_device_safety_silence_holds_its_gas_alarm_for_at_most_a_day(tmp_path: Path) -> None:
    city = City(tmp_path)
    with pytest.raises(SilenceRefused):
        city.book.add(ask(device="gas-1", rule="gas_level", duration="25h", reason="calibration"))
    calibration = city.book.add(ask(device="gas-1", rule="gas_level", duration="2h", reason="calibration gas"))
    assert calibration.safety
    alarm = city.apply(GAS, gas())
    assert city.status(alarm.id) == [("held", calibration.id)]
    other = city.apply(Device(id="gas-2", kind="gas", district="Nanhu", grid="G7"), gas())
    assert city.status(other.id) == [("pending", None)]


def test_routes_each_hold_their_own_lane(tmp_path: Path) -> None:
    routes = [WebhookRoute(name="noise-team", url="http://127.0.0.1:9/a", kinds=["noise"]),
              WebhookRoute(name="all", url="http://127.0.0.1:9/b")]
    city = City(tmp_path, routes)
    works = city.book.add(ask(grid="G7", duration="1h"))
    opened = city.apply(NOISE, loud())
    assert sorted((e, s) for w, e, s, _ in city.rows() if w == opened.id) == [("all", "held"), ("noise-team", "held")]
    assert city.outbox.counters["held"] == 2
    city.book.end(works.id, "ops")
    assert {s for w, _, s, _ in city.rows() if w == opened.id} == {"pending"}


def test_incidents_are_held_only_when_every_member_is_covered(tmp_path: Path) -> None:
    city = City(tmp_path)
    works = city.book.add(ask(grid="G7", duration="1h"))

    def member(device: Device, rule: str) -> IncidentMember:
        return IncidentMember(alert_id=f"al_{device.id}_{rule}", device_id=device.id, kind=device.kind, rule=rule,
                              severity="warning", status="open", joined_at=T0,
                              device={"grid": device.grid, "district": device.district})

    noisy = Incident(id="in_1", group="noise", key={"group": "noise", "grid": "G7"}, status="open",
                     severity="warning", opened_at=T0, updated_at=T0, last_joined_at=T0,
                     members=[member(NOISE, "noise_limit")])
    with_alarm = Incident(id="in_2", group="gas", key={"group": "gas", "grid": "G7"}, status="open",
                          severity="critical", opened_at=T0, updated_at=T0, last_joined_at=T0,
                          members=[member(GAS, "battery_low"), member(GAS, "gas_level")])
    spread = Incident(id="in_3", group="noise", key={"group": "noise"}, status="open", severity="warning",
                      opened_at=T0, updated_at=T0, last_joined_at=T0,
                      members=[member(NOISE, "noise_limit"), member(OTHER, "noise_limit")])
    holds = Holds(city.store.conn, city.now, SAFETY)
    assert holds.for_incident(noisy) is not None and holds.for_incident(noisy).id == works.id  # type: ignore[union-attr]
    assert holds.for_incident(with_alarm) is None  # a life-safety member: never held by a grid
    assert holds.for_incident(spread) is None  # a member outside the grid
    # release looks incidents up in their table: closed unseen -> suppressed
    conn = city.store.conn
    conn.execute("INSERT INTO incidents VALUES ('in_1', 'closed', 'warning', ?, ?, ?)",
                 (T0, T0, json.dumps({**_incident_json(noisy), "status": "closed"})))
    conn.execute("INSERT INTO webhook_outbox (webhook_id, endpoint, url, alert_id, body, created_at, status,"
                 " silence_id) VALUES ('in_1.1', 'default', 'http://x/h', 'in_1', ?, ?, 'held', ?)",
                 (json.dumps({"transition": "opened"}).encode(), T0, works.id))
    assert city.book.end(works.id, "ops")[1] == sil.Released(pending=0, suppressed=1, reheld=0)


def _incident_json(incident: Incident) -> dict[str, Any]:
    import msgspec

    return msgspec.to_builtins(incident)  # type: ignore[no-any-return]


def test_an_outbox_from_before_silences_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE webhook_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, webhook_id TEXT NOT NULL,"
                 " endpoint TEXT NOT NULL, url TEXT NOT NULL, alert_id TEXT NOT NULL, body BLOB NOT NULL,"
                 " created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL"
                 " DEFAULT 0, status TEXT NOT NULL DEFAULT 'pending', delivered_at REAL, last_attempt_at REAL,"
                 " last_status INTEGER, last_error TEXT, UNIQUE (webhook_id, endpoint))")
    conn.commit()
    conn.close()
    city = City(tmp_path)
    works = city.book.add(ask(grid="G7", duration="1h"))
    opened = city.apply(NOISE, loud())
    assert city.status(opened.id) == [("held", works.id)]


# -- the InfluxDB point --------------------------------------------------------------------------


def test_the_influx_point_names_the_scope_and_the_end() -> None:
    works = build(grid="G 7", kind=["noise", "water"], duration="2h", reason='road "works"')
    line = silence_line(works)
    assert line.startswith(f"silences,grid=G\\ 7,scope=grid\\=G\\ 7\\ kind\\=noise|water,silence={works.id} ")
    assert f"end_s={T0 + 2 * H!r}" in line and 'reason="road \\"works\\""' in line and "ended=false" in line
    assert line.endswith(f" {int(T0 * 1e9)}")


# -- the CLI with no runner: direct, under the data dir's lock --------------------------------------


def test_the_cli_writes_directly_when_no_runner_owns_the_data_dir(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", webhooks={"url": "http://127.0.0.1:9/hook"})
    cli = CliRunner()

    def run(*args: str) -> Any:
        return cli.invoke(main, ["--data-dir", str(settings.data_dir), "silences", *args])

    added = run("add", "--grid", "G7", "--kind", "noise", "--start", "2099-01-01 08:00", "--for", "3h",
                "--reason", "road works", "--by", "works-office", "--json")
    assert added.exit_code == 0, added.output
    silence = json.loads(added.output)
    assert silence["state"] == "scheduled"
    assert silence["starts_at"] == "2099-01-01T00:00:00Z"  # local time (Asia/Shanghai) without an offset
    assert silence["ends_at"] == "2099-01-01T03:00:00Z"
    refused = run("add", "--device", "gas-1", "--rule", "gas_level", "--for", "2d", "--reason", "swap")
    assert refused.exit_code == 1 and "max_safety_h" in refused.output
    listed = run("list")
    assert listed.exit_code == 0 and silence["id"] in listed.output and "grid=G7 kind=noise" in listed.output
    ended = run("end", silence["id"], "--by", "ops")
    assert ended.exit_code == 0 and "ended" in ended.output
    again = run("end", silence["id"])
    assert again.exit_code == 1 and "already over" in again.output
    unknown = run("end", "si_nope")
    assert unknown.exit_code == 1 and "no silence si_nope" in unknown.output
    store = AlertStore(store_path(settings.data_dir))
    try:
        stored = sil.get(store.conn, silence["id"])
    finally:
        store.close()
    assert stored is not None and stored.ended_by == "ops" and stored.released_at is not None
    assert json.loads(run("list", "--all", "--json").output)[0]["state"] == "ended"


def test_the_kafka_sink_holds_and_its_tick_releases(tmp_path: Path) -> None:
    """The Faust runner's sink writes the outbox too: silences set with the CLI (it holds no data-dir
    lock) hold there, and its timer's tick releases them."""
    import time

    from citywatch.streams.faust_sink import TransitionSink

    settings = make_settings(tmp_path / "data", webhooks={"url": "http://127.0.0.1:9/hook"})
    sink = TransitionSink(settings)
    try:
        works = sink.silences.add(ask(grid="G7", duration="1h"))
        engine = AlertEngine(AlertSettings(rules={}))
        opened = engine.apply(NOISE, loud(), time.time())
        assert opened is not None
        sink.write([opened])
        held = sink.store.conn.execute("SELECT status, silence_id FROM webhook_outbox").fetchall()
        assert held == [("held", works.id)]
        assert sink.silences.tick(time.time() + 2 * H) == sil.Released(pending=1, suppressed=0, reheld=0)
        assert sink.store.conn.execute("SELECT status FROM webhook_outbox").fetchall() == [("pending",)]
    finally:
        sink.close()


def test_incident_webhooks_are_held_like_their_members(tmp_path: Path) -> None:
    from citywatch.model import IncidentTransition

    settings = WebhookSettings(url="http://127.0.0.1:9/hook", receive=["incidents"])
    outbox = Outbox(settings, clock=lambda: T0, safety_rules=SAFETY)
    store = AlertStore(tmp_path / "state.db", hooks=[outbox.enqueue])
    book = SilenceBook(store.conn, Settings(), clock=lambda: T0)
    works = book.add(ask(grid="G7", duration="1h"))

    def opening(incident_id: str, device: Device, rule: str) -> IncidentTransition:
        member = IncidentMember(alert_id=f"al_{incident_id}", device_id=device.id, kind=device.kind, rule=rule,
                                severity="warning", status="open", joined_at=T0, device={"grid": device.grid})
        incident = Incident(id=incident_id, group=device.kind, key={"grid": device.grid}, status="open",
                            severity="warning", opened_at=T0, updated_at=T0, last_joined_at=T0, members=[member])
        return IncidentTransition(id=f"{incident_id}.1", incident_id=incident_id, transition="opened", at=T0,
                                  incident=incident)

    out = Output()
    out.incident_transitions += [opening("in_noise", NOISE, "noise_limit"), opening("in_gas", GAS, "gas_level"),
                                 opening("in_other", OTHER, "noise_limit")]
    store.commit(out, [], {})
    rows = {lane: (status, silence) for lane, status, silence in
            store.conn.execute("SELECT alert_id, status, silence_id FROM webhook_outbox")}
    assert rows == {"in_noise": ("held", works.id), "in_gas": ("pending", None), "in_other": ("pending", None)}
    store.close()


def test_suppressed_rows_are_purged_like_dead_ones_and_held_ones_never(tmp_path: Path) -> None:
    from citywatch.config import RetentionSettings
    from citywatch.sinks.retention import Retention

    city = City(tmp_path)
    works = city.book.add(ask(grid="G7", duration="1h"))
    city.apply(NOISE, loud())
    city.now += 60
    city.apply(NOISE, quiet())  # opened and cleared under the silence: suppressed when it ends
    still = city.apply(Device(id="noise-4", kind="noise", grid="G7"), loud())
    city.book.end(works.id, "ops")
    city.book.add(ask(grid="G7", duration="80d"))
    kept = city.apply(Device(id="noise-5", kind="noise", grid="G7"), loud())
    assert [s for w, _, s, _ in city.rows()] == ["suppressed", "suppressed", "pending", "held"]
    report = Retention(RetentionSettings(outbox={"dead_days": 30}), tmp_path).run_once(T0 + 31 * 86400)
    assert report.outbox_purged == 2
    assert [(w, s) for w, _, s, _ in city.rows()] == [(still.id, "pending"), (kept.id, "held")]


def test_a_lane_held_under_two_silences_is_released_whole(tmp_path: Path) -> None:
    """The opening held under one silence, a later rise under another: whichever ends first, the
    receiver never gets the rise before the opening."""
    city = City(tmp_path)
    first = city.book.add(ask(grid="G7", duration="1h"))
    opened = city.apply(NOISE, loud())
    second = city.book.add(ask(kind="noise", duration="3h"))
    city.now += 60
    raised = city.apply(NOISE, Finding("noise_limit", True, "critical", 99.0, 60.0, "very loud"))
    assert city.status(opened.id) == [("held", first.id)] and city.status(raised.id) == [("held", second.id)]
    city.now = first.ends_at + 1  # the first is over, but no tick has released it yet
    city.book.end(second.id, "ops")
    assert [(w, s) for w, _, s, _ in city.rows()] == [(opened.id, "pending"), (raised.id, "pending")]
