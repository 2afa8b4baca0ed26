"""Accounts, roles and scopes enforced by the running API (issue 15), over real HTTP against the
embedded runner fed by a real Mosquitto: what each role sees and may do, refusals audited, `by` taken
from the account, the dispatch system's messages audited, the chain surviving a restart and tampering
found, failed tokens throttled."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from citywatch.apitoken import api_token
from citywatch.cli import main
from citywatch.config import Settings
from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device
from citywatch.sinks.store import store_path
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.dispatch import DispatchSystem, new_secret
from tests.servers.mosquitto import MosquittoServer

INBOUND = new_secret()  # the dispatch system's own signing secret (dispatch.secret)
LOCKS = [Device(id=f"lock-{place}", kind="lock", district=district, grid=grid, tenants=2)
         for place, district, grid in (("n1", "Nanhu", "G1"), ("n2", "Nanhu", "G2"), ("n3", "Nanhu", "G3"),
                                       ("x1", "Xiuzhou", "G9"), ("x2", "Xiuzhou", "G9"))]
ACCOUNTS = {"op-nanhu": ("operator", ["--scope", "district=Nanhu"]), "op-city": ("operator", []),
            "field-li": ("field", ["--scope", "district=Nanhu", "--team", "grid team 1"]),
            "inst-wang": ("installer", []), "dispatch-co": ("dispatch", [])}


def http(url: str, method: str = "GET", token: str | None = None,
         body: dict[str, Any] | None = None) -> tuple[int, Any, dict[str, str]]:
    headers = {"Content-Type": "application/json", "User-Agent": "people-test/1"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None and method == "GET" else json.dumps(body or {}).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)


def cli(settings: Settings, *args: str, token: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--data-dir", str(settings.data_dir), *args],
                              env={"CITYWATCH_TOKEN": token})


def audit_records(settings: Settings, *args: str) -> list[dict[str, Any]]:
    result = cli(settings, "audit", "--json", *args)
    assert result.exit_code == 0, result.output
    records: list[dict[str, Any]] = json.loads(result.stdout)
    return records


@dataclass
class City:
    settings: Settings
    run: RunnerThread
    tokens: dict[str, str]
    alerts: dict[str, str]  # device id -> its alert

    @property
    def base(self) -> str:
        assert self.run.runner is not None
        return f"http://127.0.0.1:{self.run.runner.api_port}"

    def get(self, path: str, who: str) -> tuple[int, Any]:
        return http(self.base + path, token=self.tokens[who])[:2]

    def post(self, path: str, who: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        return http(self.base + path, "POST", self.tokens[who], body)[:2]


def add_accounts(settings: Settings) -> dict[str, str]:
    tokens = {}
    for name, (role, options) in ACCOUNTS.items():
        added = cli(settings, "users", "add", name, "--role", role, *options)
        assert added.exit_code == 0, added.output
        tokens[name] = added.stdout.strip()
    return tokens


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[City]:
    work = tmp_path_factory.mktemp("people")
    mosquitto = MosquittoServer(work / "mosquitto")
    mosquitto.start()
    settings = make_settings(work / "data", mqtt={"url": mosquitto.url, "client_id": "cw-people"},
                             dispatch={"secret": INBOUND})
    registry = Registry(registry_path(settings.data_dir))
    for device in LOCKS:
        registry.add(device)
    registry.close()
    tokens = add_accounts(settings)
    run = RunnerThread(settings).start()
    try:
        tokens["bootstrap"] = str(api_token(settings.api, settings.data_dir, create=False))
        now = time.time() - 2
        publish_all(mosquitto, [(f"citywatch/lock/{d.id}/telemetry",
                                 json.dumps({"ts": now, "seq": 1, "event": "forced_open"}).encode()) for d in LOCKS])
        runner = run.runner
        assert runner is not None
        wait_until(lambda: len(runner.engine.by_id) == len(LOCKS))
        alerts = {a.device_id: a.id for a in list(runner.engine.by_id.values())}
        yield City(settings, run, tokens, alerts)
    finally:
        run.stop()
        mosquitto.stop()


def test_a_district_operator_sees_and_acts_only_in_its_district_and_refusals_are_audited(city: City) -> None:
    n1, x1 = city.alerts["lock-n1"], city.alerts["lock-x1"]
    status, everything = city.get("/alerts", "bootstrap")
    assert status == 200 and x1 in {a["id"] for a in everything}
    status, mine = city.get("/alerts", "op-nanhu")
    nanhu = {a["id"] for a in everything if a["device"]["district"] == "Nanhu"}
    assert status == 200 and {a["id"] for a in mine} == nanhu and len(nanhu) >= 2

    status, body = city.get(f"/alerts/{x1}", "op-nanhu")
    assert status == 403 and "outside your scope" in body["error"] and "Xiuzhou" not in body["error"]
    assert city.post(f"/alerts/{x1}/ack", "op-nanhu")[0] == 403
    assert city.run.runner is not None and city.run.runner.engine.by_id[x1].status == "open"  # nothing changed

    status, body = city.post(f"/alerts/{n1}/ack", "op-nanhu", {"by": "somebody else"})
    assert status == 200 and body["alert"]["acked_by"] == "op-nanhu"  # the account acts, not what it types

    trail = audit_records(city.settings, "--user", "op-nanhu")
    refused = [r for r in trail if r["outcome"] == "refused"]
    assert [(r["action"], r["target_type"], r["target_id"]) for r in refused] == [("view_alert", "alert", x1),
                                                                                 ("ack", "alert", x1)]
    assert all(r["role"] == "operator" and r["source"] == "127.0.0.1" and r["user_agent"] == "people-test/1"
               and "district=Xiuzhou" in r["reason"] for r in refused)
    (ack,) = [r for r in trail if r["action"] == "ack" and r["outcome"] == "ok"]
    assert ack["target_id"] == n1 and ack["on_behalf_of"] == "somebody else" and ack["chain"] == "state"
    assert ack["before"]["status"] == "open" and ack["after"]["status"] == "acknowledged"
    conn = sqlite3.connect(store_path(city.settings.data_dir))  # written with the transition it records
    try:
        stored = conn.execute("SELECT t.id FROM transitions t WHERE t.alert_id = ? AND t.transition = "
                              "'acknowledged'", (n1,)).fetchone()
    finally:
        conn.close()
    assert stored is not None and ack["after"]["transition_id"] == stored[0]
    shown = json.loads(cli(city.settings, "users", "show", "op-nanhu", "--json").stdout)
    assert shown["last_used_at"] is not None and "token_hash" not in shown and "token_id" not in shown


def test_incidents_and_figures_follow_the_scope(city: City) -> None:
    status, everything = city.get("/incidents", "bootstrap")
    assert status == 200 and len(everything) >= 2
    status, mine = city.get("/incidents", "op-nanhu")
    assert status == 200 and mine and all(m["device"]["district"] == "Nanhu" for i in mine for m in i["members"])
    xiuzhou = next(i["id"] for i in everything if i["members"][0]["device"]["district"] == "Xiuzhou")
    assert city.get(f"/incidents/{xiuzhou}", "op-nanhu")[0] == 403
    assert city.get(f"/incidents/{xiuzhou}", "op-city")[0] == 200
    assert city.get("/kpis", "op-nanhu")[0] == 403  # the whole city's figures: not a district's
    assert city.get("/kpis", "op-city")[0] == 200


def test_a_field_user_acts_only_on_what_is_assigned_to_them(city: City) -> None:
    n2, n3 = city.alerts["lock-n2"], city.alerts["lock-n3"]
    status, body = city.post(f"/alerts/{n2}/ack", "field-li")
    assert status == 403 and "not assigned to you" in body["error"]
    assert city.post(f"/alerts/{n2}/on-site", "field-li")[0] == 403
    assert city.get(f"/alerts/{n2}", "field-li")[0] == 200  # in their scope: they may look
    assert city.post(f"/alerts/{n2}/assign", "op-nanhu", {"assignee": "grid team 1"})[0] == 200
    assert city.post(f"/alerts/{n3}/assign", "op-nanhu", {"assignee": "grid team 2"})[0] == 200
    status, body = city.post(f"/alerts/{n2}/ack", "field-li")
    assert status == 409, body  # theirs now: the policy lets it through, the alert (assigned) is past ack
    assert city.post(f"/alerts/{n2}/on-site", "field-li")[0] == 200
    assert city.post(f"/alerts/{n3}/on-site", "field-li")[0] == 403  # another team's
    assert city.post(f"/alerts/{n2}/resolve", "field-li")[0] == 403  # resolving is the operator's
    trail = audit_records(city.settings, "--user", "field-li")
    assert [(r["action"], r["outcome"]) for r in trail] == [
        ("ack", "refused"), ("on_site", "refused"), ("ack", "error"), ("on_site", "ok"), ("on_site", "refused"),
        ("resolve", "refused")]
    assert "HTTP 409" in trail[2]["reason"] and trail[3]["after"]["status"] == "on_site"


def test_an_installer_manages_devices_but_not_alerts(city: City) -> None:
    n1 = city.alerts["lock-n1"]
    assert city.get("/alerts", "inst-wang")[0] == 403
    assert city.post(f"/alerts/{n1}/ack", "inst-wang")[0] == 403
    assert city.post("/silences", "inst-wang", {"district": "Nanhu", "duration": "1h", "reason": "x"})[0] == 403
    status, stats = city.get("/stats", "inst-wang")
    assert status == 200 and "auth" in stats
    trail = audit_records(city.settings, "--user", "inst-wang")
    assert [(r["action"], r["outcome"]) for r in trail] == [("view_alert", "refused"), ("ack", "refused"),
                                                            ("silence", "refused")]
    assert all("role installer may not" in r["reason"] for r in trail)


def test_silences_are_set_within_the_scope_by_the_account(city: City) -> None:
    works = {"duration": "1h", "reason": "road works", "by": "typed name"}
    status, silence = city.post("/silences", "op-nanhu", {"district": "Nanhu", **works})
    assert status == 201 and silence["author"] == "op-nanhu"
    assert city.post("/silences", "op-nanhu", {"district": "Xiuzhou", **works})[0] == 403
    assert city.post("/silences", "op-nanhu", {"grid": "G9", **works})[0] == 403  # which district's G9?
    status, one_lock = city.post("/silences", "op-nanhu", {"device": "lock-n1", **works})
    assert status == 201
    status, ended = city.post(f"/silences/{one_lock['id']}/end", "op-nanhu")
    assert status == 200 and ended["ended_by"] == "op-nanhu"
    trail = [r for r in audit_records(city.settings, "--action", "silence") if r["username"] == "op-nanhu"]
    assert [(r["target_id"], r["outcome"]) for r in trail] == [(silence["id"], "ok"), ("", "refused"),
                                                              ("", "refused"), (one_lock["id"], "ok"),
                                                              (one_lock["id"], "ok")]
    assert trail[0]["after"]["matchers"] == {"district": ["Nanhu"]} and trail[-1]["after"]["ended_by"] == "op-nanhu"


def test_the_dispatch_system_is_audited_for_its_people(city: City) -> None:
    x1, n1 = city.alerts["lock-x1"], city.alerts["lock-n1"]
    status, body = city.post(f"/alerts/{x1}/assign", "dispatch-co", {"assignee": "crew 9", "by": "crew lead zhao"})
    assert status == 200 and body["alert"]["assignee"] == "crew 9" and "by crew lead zhao" in body["reason"]
    assert city.post(f"/alerts/{x1}/ack", "dispatch-co")[0] == 403  # acknowledging is the operators'
    signed = DispatchSystem(city.base, INBOUND, new_secret())
    sent = signed.send(json.dumps({"type": "alert.assigned", "alert_id": n1, "assignee": "crew 3",
                                   "by": "dispatcher wu"}).encode(), event_type="alert.assigned", retry=False)
    assert sent.status == 200, sent.response
    unknown = signed.send(json.dumps({"type": "alert.on_site", "alert_id": "al_0000000000000000",
                                      "by": "dispatcher wu"}).encode(), event_type="alert.on_site", retry=False)
    assert unknown.status == 404
    forged = signed.send(b'{"type": "alert.on_site"}', event_type="alert.on_site", retry=False, secret=new_secret())
    assert forged.status == 401
    account = audit_records(city.settings, "--user", "dispatch-co")
    assert [(r["action"], r["outcome"], r["on_behalf_of"]) for r in account] == [
        ("assign", "ok", "crew lead zhao"), ("ack", "refused", "")]
    system = audit_records(city.settings, "--user", "dispatch-system")
    assert [(r["action"], r["target_id"], r["outcome"], r["on_behalf_of"]) for r in system] == [
        ("assign", n1, "ok", "dispatcher wu"), ("on_site", "al_0000000000000000", "error", "dispatcher wu")]
    assert system[0]["after"]["assignee"] == "crew 3" and "HTTP 404" in system[1]["reason"]  # forged: not audited


def test_the_cli_through_the_api_presents_the_account_token(city: City) -> None:
    x2 = city.alerts["lock-x2"]
    refused = cli(city.settings, "alerts", "resolve", x2, token=city.tokens["field-li"])
    assert refused.exit_code == 1 and "403" in refused.output and "audit" in refused.output, refused.output
    bad = cli(city.settings, "alerts", "resolve", x2, token="cwt.0123456789abcdef.not-a-secret")
    assert bad.exit_code == 1 and "401" in bad.output and "--token" in bad.output
    done = cli(city.settings, "alerts", "resolve", x2, "--by", "duty officer ma")  # the bootstrap token
    assert done.exit_code == 0, done.output
    (record,) = [r for r in audit_records(city.settings, "--target", f"alert:{x2}") if r["outcome"] == "ok"]
    assert record["username"] == "bootstrap-admin" and record["on_behalf_of"] == "duty officer ma"
    assert record["after"]["status"] == "resolved"


def test_disabled_and_rotated_tokens_are_refused(city: City) -> None:
    assert city.get("/alerts", "op-city")[0] == 200
    assert cli(city.settings, "users", "disable", "op-city").exit_code == 0
    assert city.get("/alerts", "op-city")[0] == 401  # from the next request on, no restart
    assert cli(city.settings, "users", "enable", "op-city").exit_code == 0
    assert city.get("/alerts", "op-city")[0] == 200
    rotated = cli(city.settings, "users", "rotate", "op-city")
    assert rotated.exit_code == 0
    old, city.tokens["op-city"] = city.tokens["op-city"], rotated.stdout.strip()
    assert http(city.base + "/alerts", token=old)[0] == 401
    assert city.get("/alerts", "op-city")[0] == 200
    refusals = [r for r in audit_records(city.settings, "--user", "op-city") if r["action"] == "authenticate"]
    assert [(r["reason"], r["outcome"], r["source"]) for r in refusals] == [
        ("user op-city is disabled", "refused", "127.0.0.1")]  # the old token's id is gone: unknown, not audited


def test_the_chain_verifies_and_an_edited_record_is_found(city: City, tmp_path: Path) -> None:
    assert city.post(f"/alerts/{city.alerts['lock-x1']}/ack", "op-nanhu")[0] == 403  # audited: a record, alone too
    ok = cli(city.settings, "audit", "verify")
    assert ok.exit_code == 0 and "state: ok" in ok.output and "registry: ok" in ok.output, ok.output
    copy = make_settings(tmp_path / "copy")
    copy.data_dir.mkdir()
    for name in ("state.db", "registry.db"):  # a consistent copy while the runner writes
        src = sqlite3.connect(city.settings.data_dir / name)
        dst = sqlite3.connect(copy.data_dir / name)
        src.backup(dst)
        src.close()
        dst.close()
    assert cli(copy, "audit", "verify").exit_code == 0
    conn = sqlite3.connect(store_path(copy.data_dir))
    conn.executescript("DROP TRIGGER audit_no_update; UPDATE audit SET outcome = 'ok', reason = '' WHERE seq = 1;")
    conn.close()
    broken = cli(copy, "audit", "verify")
    assert broken.exit_code == 1 and "state: BROKEN at record #1" in broken.output and "registry: ok" in broken.output
    shutil.rmtree(copy.data_dir)


def test_the_trail_survives_a_restart_and_repeated_bad_tokens_get_429(tmp_path: Path,
                                                                     mosquitto: MosquittoServer) -> None:
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-people-2"},
                             api={"port": 0, "auth_block_s": 1.0})
    run = RunnerThread(settings).start()
    token = str(api_token(settings.api, settings.data_dir, create=False))
    assert run.runner is not None
    base = f"http://127.0.0.1:{run.runner.api_port}"
    status, silence = http(base + "/silences", "POST", token, {"grid": "G7", "duration": "1h", "reason": "works"})[:2]
    assert status == 201
    run.stop()
    run = RunnerThread(settings).start()
    try:
        assert run.runner is not None
        base = f"http://127.0.0.1:{run.runner.api_port}"
        assert http(base + f"/silences/{silence['id']}/end", "POST", token)[0] == 200
        trail = audit_records(settings)
        assert [(r["seq"], r["action"], r["target_id"]) for r in trail] == [(1, "silence", silence["id"]),
                                                                           (2, "silence", silence["id"])]
        assert cli(settings, "audit", "verify").exit_code == 0

        for n in range(5):
            assert http(base + "/alerts", token=f"guess-{n}")[0] == 401
        status, body, headers = http(base + "/alerts", token="guess-5")
        assert status == 429 and int(headers["Retry-After"]) >= 1 and "retry after" in body["error"]
        assert http(base + "/alerts", token=token)[0] == 429  # blocked: not even a good token is looked at
        assert http(base + "/health")[0] == 200  # supervisors' probes stay open
        wait_until(lambda: http(base + "/alerts", token=token)[0] == 200, timeout=5)
        status, stats = http(base + "/stats", token=token)[:2]
        assert status == 200 and stats["auth"]["blocks"] == 1 and stats["auth"]["failures"] == 5
    finally:
        run.stop()


def test_every_route_of_the_api_has_an_access_rule(city: City) -> None:
    """A route someone adds without a line in people/api.py ROUTES would be admin-only: list it there."""
    from citywatch.api import make_app
    from citywatch.people.api import ACCESS_KEY, OPEN_PATHS, ROUTES, SIGNED_PATHS, _session_path

    runner = city.run.runner
    app = city.run.call(lambda: make_app(runner, "unused"))  # type: ignore[arg-type]
    try:
        routes = {("GET" if r.method == "HEAD" else r.method, r.resource.canonical)
                  for r in app.router.routes() if r.resource is not None}
        ruled = set(app[ACCESS_KEY].routes)  # ROUTES and what modules declared
    finally:
        app[ACCESS_KEY].users.close()
    assert set(ROUTES) <= ruled
    unlisted = {route for route in routes if route[1] not in OPEN_PATHS | SIGNED_PATHS and route not in ruled
                and not _session_path(route[1])}  # the console checks its own sessions (tests/test_console.py)
    assert not unlisted, f"routes without an access rule in citywatch/people/api.py ROUTES: {sorted(unlisted)}"
    assert len(routes) >= 14
