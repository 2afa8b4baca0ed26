"""Notifications to people without a broker: the texts in zh-CN and en, the routes (config, filters,
rows in the real outbox, silences), and what is secret in an Apprise URL."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from citywatch.cli import main
from citywatch.config import AlertSettings, Settings, WebhookRoute, WebhookSettings, load_settings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.errors import ConfigError
from citywatch.loop import silences as sil
from citywatch.loop.silence_book import SilenceBook
from citywatch.loop.silences import SilenceRequest
from citywatch.model import Alert, Device, Finding, Incident, IncidentMember, IncidentTransition, Output, Transition
from citywatch.sinks.apprise_urls import secret_values
from citywatch.sinks.notify import decode_notification
from citywatch.sinks.notify_text import alert_notification, incident_notification
from citywatch.sinks.outbox import Outbox
from citywatch.sinks.store import AlertStore

TS = 1795829405.0  # 2026-11-28 01:30:05 UTC = 09:30 in Shanghai
SHANGHAI = "2026-11-28 09:30 (UTC+08:00)"
PLACE = {"id": "gas-1", "kind": "gas", "district": "Nanhu", "grid": "G0012", "address": "12 Zhongshan Rd"}


def gas_alarm(**changes: object) -> Transition:
    alert = Alert(id="gas-1.gas_level.1", device_id="gas-1", kind="gas", rule="gas_level", severity="critical",
                  status="open", opened_at=TS, updated_at=TS, value=60.0, threshold=50.0,
                  message="combustible gas at 60% LEL (level-2 alarm at 50%)", review_deadline=TS + 3600,
                  response_deadline=TS + 7200, device=PLACE, assignee="zhang-wei")
    for key, value in changes.items():
        setattr(alert, key, value)
    return Transition(id="gas-1.gas_level.1.1", alert_id=alert.id, transition="opened", at=TS, alert=alert)


def flood(members: int = 12) -> IncidentTransition:
    ms = [IncidentMember(alert_id=f"water-{n}.water_depth.1", device_id=f"water-{n}", kind="water", rule="water_depth",
                         severity="warning", status="open", joined_at=TS, device={"district": "Nanhu", "grid": "G7"})
          for n in range(members)]
    incident = Incident(id="in-7", group="water", key={"group": "water", "grid": "G7"}, status="open",
                        severity="warning", opened_at=TS, updated_at=TS, last_joined_at=TS, members=ms)
    return IncidentTransition(id="in-7.1", incident_id="in-7", transition="opened", at=TS, incident=incident)


# -- what a person reads -----------------------------------------------------------------------------


def test_an_alarm_reads_in_chinese_with_local_times_and_the_console_link() -> None:
    note = alert_notification(gas_alarm(), "zh-CN", "Asia/Shanghai", "https://cw.jiaxing.example/")
    # the wording is the catalog's (citywatch/locale); what must be in it:
    assert all(part in note.title for part in ("紧急", "可燃气体浓度超限", "告警产生", "gas-1", "Nanhu / G0012"))
    lines = note.body.splitlines()
    assert lines[0] == "可燃气体浓度 60% LEL（2级报警值 50%）"  # the rule's message, translated
    assert all(part in note.body for part in ("待处理", "zhang-wei", "燃气", "12 Zhongshan Rd"))  # data as it is
    assert note.body.count(SHANGHAI) == 2 and "01:30" not in note.body  # the city's zone, not UTC
    assert "2026-11-28 10:30 (UTC+08:00)" in note.body and "2026-11-28 11:30 (UTC+08:00)" in note.body  # deadlines
    assert "https://cw.jiaxing.example/console/alerts/gas-1.gas_level.1" in lines[-2]
    assert lines[-1] == "编号：gas-1.gas_level.1.1"  # the reference a person quotes (and sees repeated)
    assert not any(word in note.body for word in ("Status", "Device", "Opened", "Open in", "Ref:"))  # no English
    assert note.link == "https://cw.jiaxing.example/console/alerts/gas-1.gas_level.1"
    assert (note.id, note.type, note.subject, note.language, note.notify_type) == (
        "gas-1.gas_level.1.1", "alert.opened", "gas-1.gas_level.1", "zh-CN", "failure")


def test_the_same_alarm_reads_in_english_in_another_zone() -> None:
    note = alert_notification(gas_alarm(), "en", "Europe/Paris", "https://cw.jiaxing.example")
    assert note.title == "[critical] gas_level opened: gas-1, Nanhu / G0012"
    lines = note.body.splitlines()
    assert lines[0] == "combustible gas at 60% LEL (level-2 alarm at 50%)"
    assert "Status: open, assigned to zhang-wei" in lines
    assert "Opened: 2026-11-28 02:30 (UTC+01:00) · This change: 2026-11-28 02:30 (UTC+01:00)" in lines
    assert lines[-2:] == ["Open in the console: https://cw.jiaxing.example/console/alerts/gas-1.gas_level.1",
                          "Ref: gas-1.gas_level.1.1"]


def test_an_ended_alarm_has_no_deadlines_and_a_suspect_one_says_why() -> None:
    ended = alert_notification(gas_alarm(status="resolved"), "en", "Asia/Shanghai", "http://x")
    assert "Review by" not in ended.body and ended.notify_type == "success"
    suspect = alert_notification(gas_alarm(suspect="sensor_fault", suspect_reason="sensor fault suspected: lel_pct "
                                           "stuck at 60 for 10 readings (30 min)"), "zh-CN", "Asia/Shanghai", "http://x")
    assert "可燃气体浓度连续 10 次读数停在 60（30 分钟）" in suspect.body  # the fault's message, translated


def test_an_incident_lists_its_first_members_and_links_its_page() -> None:
    zh = incident_notification(flood(), "zh-CN", "Asia/Shanghai", "https://cw.example")
    assert all(part in zh.title for part in ("警告", "积水", "事件产生", "12", "Nanhu / G7"))
    assert "12" in zh.body.splitlines()[0] and "incident" not in zh.title
    assert "- water-0: 道路积水, 警告, 待处理" in zh.body and "- water-9:" in zh.body and "- water-10" not in zh.body
    assert "另有 2 条" in zh.body and "https://cw.example/console/incidents/in-7" in zh.body
    en = incident_notification(flood(1), "en", "Asia/Shanghai", "https://cw.example")
    assert en.title == "[warning] water incident opened: 1 alert, Nanhu / G7"  # singular
    assert en.body.splitlines()[0] == "1 alert, 1 still open" and "more" not in en.body
    assert en.link == "https://cw.example/console/incidents/in-7" and en.type == "incident.opened"


# -- routes: configuration ---------------------------------------------------------------------------


def write(tmp_path: Path, routes: list[dict[str, object]], **top: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), **top, "webhooks": {"routes": routes}}))
    return path


MAIL = "mailto://cw:pa55-w0rd-xyz@smtp.example.org?to=ops@example.org"
DING = "dingtalk://dingtokenabcdef0123456789/?secret=SECdingsecret98765"


@pytest.mark.parametrize(("route", "says"), [
    ({"name": "ops", "url": "https://dispatch.example/hook", "apprise": [MAIL]}, "give either url"),
    ({"name": "ops"}, "give either url"),
    ({"name": "ops", "apprise": [MAIL], "secret": "whsec_abc"}, "an apprise route has none"),
    ({"name": "ops", "apprise": [MAIL], "language": "fr"}, "unknown language 'fr'"),
    ({"name": "ops", "apprise": [MAIL], "timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"name": "ops", "apprise": ["nosuchservice://pa55-w0rd-xyz@host"]}, "webhooks.routes[ops].apprise #1: Apprise "
                                                                         "cannot load this nosuchservice://"),
    ({"name": "ops", "apprise": [MAIL, "mailto//pa55-w0rd-xyz"]}, "webhooks.routes[ops].apprise #2: not a URL"),
])
def test_a_bad_route_to_people_is_refused_without_echoing_its_secret(tmp_path: Path, route: dict[str, object],
                                                                     says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, [route]))
    assert says in str(caught.value) and "pa55-w0rd-xyz" not in str(caught.value)


def test_urls_from_a_file_the_city_language_and_zone_and_config_masks_them(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CITYWATCH_LANGUAGE", raising=False)  # the tests' English (conftest) would beat the file
    secrets_file = tmp_path / "ops.apprise"
    secrets_file.write_text(f"# the duty team's DingTalk group\n\n{DING}\n")
    config = write(tmp_path, [{"name": "ops", "apprise": [MAIL], "apprise_file": str(secrets_file)},
                              {"name": "duty", "apprise": [MAIL], "language": "en", "timezone": "UTC"}],
                   language="zh-CN", timezone="Asia/Urumqi")
    settings = load_settings(config)
    ops, duty = settings.webhooks.routes
    assert [u.get_secret_value() for u in ops.apprise] == [MAIL, DING] and ops.notifies and ops.url is None
    assert (ops.language, ops.timezone, duty.language, duty.timezone) == ("zh-CN", "Asia/Urumqi", "en", "UTC")
    shown = CliRunner().invoke(main, ["--config", str(config), "config"])
    assert shown.exit_code == 0, shown.output
    routes = json.loads(shown.output)["webhooks"]["routes"]
    assert routes[0]["apprise"] == ["**********", "**********"]  # the file's URL too, masked like the inline one
    for secret in ("pa55-w0rd-xyz", "dingtokenabcdef0123456789", "SECdingsecret98765"):
        assert secret not in shown.output


# -- rows in the real outbox ---------------------------------------------------------------------------

SYSTEM = WebhookRoute(name="dispatch", url="http://127.0.0.1:9/dispatch", districts=["Xiuzhou"])


def people(name: str = "nanhu-team", **fields: object) -> WebhookRoute:
    base: dict[str, object] = {"name": name, "apprise": [MAIL, "json://127.0.0.1:9/notify"], "districts": ["Nanhu"]}
    return WebhookRoute.model_validate({**base, **fields})


def enqueue(tmp_path: Path, settings: WebhookSettings, *transitions: Transition | IncidentTransition,
            ) -> list[tuple[str, str, str, bytes, str]]:
    store = AlertStore(tmp_path / "state.db", hooks=[Outbox(settings, clock=lambda: TS).enqueue])
    out = Output()
    for t in transitions:
        (out.incident_transitions if isinstance(t, IncidentTransition) else out.transitions).append(t)  # type: ignore
    store.commit(out, [], {})
    rows = store.conn.execute("SELECT webhook_id, endpoint, url, body, status FROM webhook_outbox ORDER BY seq")
    return list(rows)


def test_each_apprise_url_is_an_endpoint_with_the_text_in_the_routes_language(tmp_path: Path) -> None:
    settings = WebhookSettings(url="http://127.0.0.1:9/default", public_url="https://cw.example",
                               routes=[SYSTEM, people(language="zh-CN"), people("duty", language="en", districts=[])])
    rows = enqueue(tmp_path, settings, gas_alarm())
    assert [(r[1], r[2]) for r in rows] == [
        ("nanhu-team#1", "apprise:mailto"), ("nanhu-team#2", "apprise:json"),  # never the URL: it holds secrets
        ("duty#1", "apprise:mailto"), ("duty#2", "apprise:json"),
        ("default", "http://127.0.0.1:9/default"),  # routes to people claim nothing: the default still gets it
    ]
    assert {r[0] for r in rows} == {"gas-1.gas_level.1.1"} and {r[4] for r in rows} == {"pending"}
    zh, en = decode_notification(rows[0][3]), decode_notification(rows[2][3])
    assert zh.language == "zh-CN" and "紧急" in zh.title and en.title.startswith("[critical]")
    assert zh.link == en.link == "https://cw.example/console/alerts/gas-1.gas_level.1"
    assert json.loads(rows[4][3])["type"] == "alert.opened"  # the system's JSON payload, unchanged


def test_routes_to_people_filter_like_webhook_routes(tmp_path: Path) -> None:
    xiuzhou = gas_alarm(device={**PLACE, "district": "Xiuzhou"})
    settings = WebhookSettings(url="http://127.0.0.1:9/default", routes=[
        SYSTEM, people(), people("zhang", assignees=["zhang-wei"], districts=[]),
        people("li", assignees=["li-na"], districts=[]),
        people("critical-only", min_severity="critical", kinds=["water"], districts=[])])
    rows = enqueue(tmp_path, settings, xiuzhou)
    # Xiuzhou: the dispatch system (a system route: no default), and Zhang, whose alert it is
    assert [r[1] for r in rows] == ["dispatch", "zhang#1", "zhang#2"]


def test_incidents_reach_routes_to_people_that_receive_them(tmp_path: Path) -> None:
    settings = WebhookSettings(routes=[people(receive=["incidents"]), people("alerts-only")])
    rows = enqueue(tmp_path, settings, flood(3))
    assert [r[1] for r in rows] == ["nanhu-team#1", "nanhu-team#2"]
    note = decode_notification(rows[0][3])
    assert note.subject == "in-7" and note.type == "incident.opened" and note.link.endswith("/console/incidents/in-7")


def test_a_silence_holds_notifications_and_its_end_releases_or_suppresses_them(tmp_path: Path) -> None:
    now = [TS]
    settings = WebhookSettings(routes=[WebhookRoute(name="team", apprise=["json://127.0.0.1:9/n"])])
    store = AlertStore(tmp_path / "state.db", hooks=[Outbox(settings, clock=lambda: now[0]).enqueue])
    book = SilenceBook(store.conn, Settings(), clock=lambda: now[0])
    engine = AlertEngine(AlertSettings(rules={}))
    works = book.add(SilenceRequest(grid="G7", duration="2h", reason="road works", by="works-office"))

    def apply(device: Device, finding: Finding) -> Transition:
        t = engine.apply(device, finding, now[0])
        assert t is not None
        out = Output()
        out.transitions.append(t)
        store.commit(out, engine.take_dirty(), {})
        return t

    def status(t: Transition) -> str:
        return str(store.conn.execute("SELECT status FROM webhook_outbox WHERE webhook_id = ?", (t.id,)).fetchone()[0])

    street = Device(id="noise-1", kind="noise", district="Nanhu", grid="G7")
    brief = Device(id="noise-2", kind="noise", district="Nanhu", grid="G7")
    loud = Finding("noise_limit", True, "warning", 80.0, 60.0, "loud")
    still_open = apply(street, loud)
    short = apply(brief, loud)
    now[0] += 60
    cleared = apply(brief, Finding("noise_limit", False, value=40.0))
    assert [status(t) for t in (still_open, short, cleared)] == ["held", "held", "held"]
    now[0] = works.ends_at
    assert book.tick(now[0]) == sil.Released(pending=1, suppressed=2, reheld=0)
    assert [status(t) for t in (still_open, short, cleared)] == ["pending", "suppressed", "suppressed"]


# -- secrets ---------------------------------------------------------------------------------------------


def test_what_is_secret_in_an_apprise_url_is_masked_in_apprise_log_records(caplog: pytest.LogCaptureFixture) -> None:
    header = "json://127.0.0.1:9/hooks/pathtoken0123456789abc?+Authorization=Bearer%20hdrtok-123456"
    values = set(secret_values(DING) + secret_values(MAIL) + secret_values(header))
    for part in ("dingtokenabcdef0123456789", "SECdingsecret98765", "pa55-w0rd-xyz", "pathtoken0123456789abc",
                 "hdrtok-123456", "Bearer%20hdrtok-123456"):
        assert part in values, part
    assert "hooks" not in values and "127.0.0.1" not in values  # short, ordinary parts are left readable
    caplog.set_level(logging.DEBUG)
    logging.getLogger("apprise").debug("JSON POST URL: http://127.0.0.1:9/hooks/pathtoken0123456789abc with %s",
                                       "Bearer hdrtok-123456")
    assert "JSON POST URL: http://127.0.0.1:9/hooks/*** with ***" in caplog.text


def test_what_a_send_comes_to_decides_the_rows_fate() -> None:
    """A target removed from the configuration cannot be sent to (dead at once, resendable once it is
    back); an HTTP status Apprise reports is judged like a webhook's answer; anything else is retried."""
    from citywatch.sinks.notify import Attempt, Notifier
    from citywatch.sinks.webhooks import _notification_outcome

    body = b'{"id": "t.1", "type": "alert.opened", "transition": "opened", "subject": "a", "language": "en",' \
           b' "title": "t", "body": "b", "link": "l"}'
    gone = asyncio.run(Notifier([]).send("duty#3", body))
    assert gone.unusable and "no Apprise target 'duty#3'" in str(gone.error)
    assert _notification_outcome(gone).kind == "dead"
    assert _notification_outcome(Attempt(False, 410, "error=410")).kind == "dead"
    assert _notification_outcome(Attempt(False, 404, "error=404")).kind == "refused"  # dead after N attempts
    assert _notification_outcome(Attempt(False, 503, "error=503")).kind == "retry"
    down = _notification_outcome(Attempt(False, None, "Connection error while submitting email", unreachable=True))
    assert down.kind == "retry" and down.unreachable
    assert _notification_outcome(Attempt(True)).kind == "delivered"
