"""Dispatch both ways: the dispatch system's signed messages (POST /dispatch/events) and people's
dispatch actions (API, CLI), on a real runner over a real Mosquitto, with real HTTP both ways.

Messages are signed by the simulated dispatch system with the standardwebhooks package, independently
of citywatch's endpoint code. Each refusal is checked to change nothing: the alert, its stored
transitions, the webhook outbox and the receipts stay as they were."""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from standardwebhooks.webhooks import Webhook

from citywatch.apitoken import api_token
from citywatch.cli import main
from citywatch.config import Settings
from citywatch.devices.registry import Registry, registry_path
from citywatch.errors import ConfigError
from citywatch.model import Device
from citywatch.sinks.store import AlertStore, store_path
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.dispatch import DispatchSystem, Sent, new_secret
from tests.servers.mosquitto import MosquittoServer
from tests.servers.receiver import WebhookReceiver

OUTBOUND = new_secret()  # citywatch's webhooks.secret
INBOUND = new_secret()  # the dispatch system's own secret (dispatch.secret)
ROTATED = new_secret()  # the dispatch system's next secret, during a rotation
DEVICES = [Device(id=f"gas-{i:02d}", kind="gas", district="Nanhu", grid="G001") for i in range(40)]


class Clock:
    """The runner's clock: the wall clock plus an offset a test can move (deadlines, retention)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class City:
    settings: Settings
    mosquitto: MosquittoServer
    receiver: WebhookReceiver
    run: RunnerThread
    dispatch: DispatchSystem
    clock: Clock
    next_device: int = 0

    @property
    def base(self) -> str:
        assert self.run.runner is not None
        return f"http://127.0.0.1:{self.run.runner.api_port}"

    def open_alert(self) -> str:
        """A gas alarm on a fresh device; the id of the alert it opened."""
        device = DEVICES[self.next_device]
        self.next_device += 1
        payload = {"ts": round(time.time() - 1, 3), "seq": 1, "lel_pct": 30.0}
        publish_all(self.mosquitto, [(f"citywatch/gas/{device.id}/telemetry", json.dumps(payload).encode())])
        runner = self.run.runner
        assert runner is not None
        alert_id = str(wait_until(lambda: next((a.id for a in list(runner.engine.by_id.values())
                                                if a.device_id == device.id), None)))
        # the engine holds the alert before the store's transaction writes it (with its transition and
        # outbox rows): a snapshot taken in between saw no alert and failed a test by a race
        wait_until(lambda: self.snapshot(alert_id)[0] is not None)
        return alert_id

    def send(self, event: dict[str, Any], **options: Any) -> Sent:
        return self.dispatch.send(json.dumps(event).encode(), event_type=str(event.get("type")), retry=False,
                                  **options)

    def snapshot(self, alert_id: str) -> tuple[Any, ...]:
        """Everything a refused message must leave as it was."""
        conn = sqlite3.connect(store_path(self.settings.data_dir))
        try:
            (body,) = conn.execute("SELECT body FROM alerts WHERE id = ?", (alert_id,)).fetchone() or (None,)
            transitions = conn.execute("SELECT id FROM transitions WHERE alert_id = ? ORDER BY id",
                                       (alert_id,)).fetchall()
            outbox = conn.execute("SELECT COUNT(*) FROM webhook_outbox").fetchone()[0]
            receipts = conn.execute("SELECT COUNT(*) FROM dispatch_receipts").fetchone()[0]
        finally:
            conn.close()
        runner = self.run.runner
        assert runner is not None
        live = runner.engine.by_id.get(alert_id)
        return body, transitions, outbox, receipts, (live.status, live.transitions) if live else None

    def stored(self, alert_id: str) -> Any:
        store = AlertStore(store_path(self.settings.data_dir))
        try:
            return next(a for a in store.alerts(None) if a.id == alert_id), \
                [t.transition for t in store.transitions(alert_id)]
        finally:
            store.close()


def register(data_dir: Path) -> None:
    registry = Registry(registry_path(data_dir))
    for device in DEVICES:
        registry.add(device)
    registry.close()


def start_city(workdir: Path, **dispatch: Any) -> City:
    mosquitto = MosquittoServer(workdir / "mosquitto")
    mosquitto.start()
    receiver = WebhookReceiver().start()
    clock = Clock()
    settings = make_settings(workdir / "data", mqtt={"url": mosquitto.url, "client_id": f"cw-{workdir.name}"},
                             webhooks={"url": receiver.url, "secret": OUTBOUND, "backoff_initial_s": 0.05},
                             dispatch=dispatch or {"secret": f"{INBOUND} {ROTATED}"})
    register(settings.data_dir)
    run = RunnerThread(settings, clock=clock).start()
    assert run.runner is not None
    sim = DispatchSystem(f"http://127.0.0.1:{run.runner.api_port}", INBOUND, OUTBOUND, clock=clock).start()
    return City(settings, mosquitto, receiver, run, sim, clock)


def stop_city(city: City) -> None:
    city.dispatch.stop()
    city.run.stop()
    city.receiver.stop()
    city.mosquitto.stop()


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[City]:
    c = start_city(tmp_path_factory.mktemp("dispatch"))
    yield c
    stop_city(c)


def webhook_types(city: City, alert_id: str) -> list[str]:
    return [b["type"] for b in city.receiver.bodies() if b["alert"]["id"] == alert_id]


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


# -- accepted --------------------------------------------------------------------------------------


def test_each_signed_message_is_a_stored_transition_sent_onward(city: City) -> None:
    alert_id = city.open_alert()
    assigned = city.send({"type": "alert.assigned", "alert_id": alert_id, "assignee": "gas crew 3"})
    assert assigned.status == 200, assigned.response
    assert assigned.response["code"] == "accepted" and assigned.response["webhook_id"] == assigned.webhook_id
    [made] = assigned.response["transitions"]
    assert made["alert_id"] == alert_id and made["transition"] == "assigned" and made["status"] == "assigned"
    assert city.send({"type": "alert.on_site", "alert_id": alert_id}).status == 200
    rectified = city.send({"type": "alert.rectified", "alert_id": alert_id, "note": "valve replaced\nsealed",
                           "evidence": ["https://dispatch.example/p/1.jpg"], "by": "crew lead li"})
    assert rectified.status == 200 and rectified.response["transitions"][0]["status"] == "verifying"
    alert, transitions = city.stored(alert_id)
    assert transitions == ["opened", "assigned", "on_site", "rectified"]
    assert alert.assignee == "gas crew 3" and alert.rectify_note == "valve replaced\nsealed"
    assert alert.evidence == ["https://dispatch.example/p/1.jpg"] and alert.rectified_by == "crew lead li"
    wait_until(lambda: webhook_types(city, alert_id) == ["alert.opened", "alert.assigned", "alert.on_site",
                                                         "alert.rectified"])
    sent_ids = {h["webhook-id"] for h, _ in city.receiver.requests}
    assert made["id"] in sent_ids  # the transition's id is the webhook-id it went onward with


def test_a_repeated_webhook_id_changes_nothing_and_gets_the_first_answer(city: City) -> None:
    alert_id = city.open_alert()
    first = city.send({"type": "alert.assigned", "alert_id": alert_id, "assignee": "grid team 1"})
    assert first.status == 200
    wait_until(lambda: "alert.assigned" in webhook_types(city, alert_id))
    before = city.snapshot(alert_id)
    again = city.dispatch.resend(first)  # same id and body, fresh timestamp and signature
    assert (again.status, again.response, again.repeat) == (200, first.response, True)
    assert city.snapshot(alert_id) == before
    assert city.send({"type": "alert.on_site", "alert_id": alert_id}).status == 200
    late = city.dispatch.resend(first)  # after the alert moved on: still the first answer, not a re-assignment
    assert late.status == 200 and late.response == first.response and late.repeat
    moved = city.snapshot(alert_id)
    reused = city.dispatch.send(json.dumps({"type": "alert.rejected", "alert_id": alert_id,
                                            "reason": "not ours"}).encode(), webhook_id=first.webhook_id,
                                retry=False)
    assert reused.status == 409 and reused.response["code"] == "webhook_id_reused"
    assert city.snapshot(alert_id) == moved
    assert city.stored(alert_id)[1] == ["opened", "assigned", "on_site"]


# -- refused, and nothing changed --------------------------------------------------------------------

STALE, FUTURE = -301.0, 301.0


@pytest.mark.parametrize(("case", "status", "code"), [
    ("signed with citywatch's outbound secret", 401, "bad_signature"),
    ("signature of another body", 401, "bad_signature"),
    ("stale timestamp", 400, "stale_timestamp"),
    ("future timestamp", 400, "future_timestamp"),
    ("not JSON", 400, "malformed_body"),
    ("not an object", 400, "malformed_body"),
    ("unknown type", 422, "invalid_event"),
    ("no alert_id", 422, "invalid_event"),
    ("assigned without assignee", 422, "invalid_event"),
    ("rejected without reason", 422, "invalid_event"),
    ("evidence not a web link", 422, "invalid_event"),
    ("unknown alert", 404, "unknown_alert"),
    ("rectified before assigned", 409, "illegal_transition"),
    ("on_site before assigned", 409, "illegal_transition"),
    ("anything after closed", 409, "illegal_transition"),
])
def test_bad_messages_get_a_clear_4xx_and_change_nothing(city: City, case: str, status: int, code: str) -> None:
    alert_id = city.open_alert()
    event: dict[str, Any] = {"type": "alert.assigned", "alert_id": alert_id, "assignee": "grid team 2"}
    options: dict[str, Any] = {}
    body: bytes | None = None
    if case == "signed with citywatch's outbound secret":
        options["secret"] = OUTBOUND
    elif case == "stale timestamp":
        options["timestamp"] = city.clock() + STALE
    elif case == "future timestamp":
        options["timestamp"] = city.clock() + FUTURE
    elif case == "not JSON":
        body = b'{"type": "alert.assigned", '
    elif case == "not an object":
        body = b'[{"type": "alert.assigned"}]'
    elif case == "unknown type":
        event["type"] = "alert.exploded"
    elif case == "no alert_id":
        del event["alert_id"]
    elif case == "assigned without assignee":
        event["assignee"] = "  "
    elif case == "rejected without reason":
        event = {"type": "alert.rejected", "alert_id": alert_id}
    elif case == "evidence not a web link":
        event = {"type": "alert.rectified", "alert_id": alert_id, "evidence": ["file:///etc/passwd"]}
    elif case == "unknown alert":
        event["alert_id"] = "al_0000000000000000"
    elif case == "rectified before assigned":
        event = {"type": "alert.rectified", "alert_id": alert_id, "note": "done"}
    elif case == "on_site before assigned":
        event = {"type": "alert.on_site", "alert_id": alert_id}
    elif case == "anything after closed":
        token = api_token(city.settings.api, city.settings.data_dir, create=False)
        assert raw_post(f"{city.base}/alerts/{alert_id}/resolve", b"",
                        {"Authorization": f"Bearer {token}"})[0] == 200
    before = city.snapshot(alert_id)
    if case == "signature of another body":  # a genuine signature, on a body it was not made for
        stamp = int(city.clock())
        genuine = json.dumps(event).encode()
        signature = Webhook(INBOUND).sign("msg_tampered", datetime.fromtimestamp(stamp, UTC), genuine.decode())
        answer = raw_post(f"{city.base}/dispatch/events", json.dumps({**event, "assignee": "mallory"}).encode(),
                          {"webhook-id": "msg_tampered", "webhook-timestamp": str(stamp),
                           "webhook-signature": signature})
    else:
        sent = city.dispatch.send(body if body is not None else json.dumps(event).encode(), retry=False,
                                  **options)
        answer = (sent.status or 0, sent.response)
    assert (answer[0], answer[1].get("code")) == (status, code), answer
    assert answer[1]["error"]
    assert city.snapshot(alert_id) == before


def test_missing_signature_headers_are_401_and_a_bearer_token_is_no_substitute(city: City) -> None:
    alert_id = city.open_alert()
    before = city.snapshot(alert_id)
    body = json.dumps({"type": "alert.assigned", "alert_id": alert_id, "assignee": "x"}).encode()
    token = api_token(city.settings.api, city.settings.data_dir, create=False)
    status, answer = raw_post(f"{city.base}/dispatch/events", body, {"Authorization": f"Bearer {token}"})
    assert status == 401 and answer["code"] == "bad_signature" and "webhook-signature" in answer["error"]
    status, answer = raw_post(f"{city.base}/dispatch/events", body,
                              {"webhook-id": "m1", "webhook-timestamp": "soon", "webhook-signature": "v1,AAAA"})
    assert status == 401 and "integer seconds" in answer["error"]
    assert city.snapshot(alert_id) == before
    # the endpoint's exemption from the bearer token is exactly that path
    assert raw_post(f"{city.base}/alerts/{alert_id}/assign", b'{"assignee": "x"}', {})[0] == 401
    assert raw_post(f"{city.base}/dispatch/events/", body, {})[0] == 401
    assert city.snapshot(alert_id) == before


def test_a_rotated_secret_is_accepted_beside_the_current_one(city: City) -> None:
    alert_id = city.open_alert()
    sent = city.send({"type": "alert.assigned", "alert_id": alert_id, "assignee": "grid team 1"}, secret=ROTATED)
    assert sent.status == 200


def test_incident_messages_name_an_incident(city: City) -> None:
    """incident.<action> goes to the runner's incident dispatch (fanned out to the member alerts, see
    test_closed_loop_e2e); an id it does not know is refused."""
    sent = city.send({"type": "incident.assigned", "incident_id": "in_0000000000000000", "assignee": "x"})
    assert (sent.status, sent.response["code"]) == (404, "unknown_incident")
    assert city.send({"type": "incident.assigned", "assignee": "x"}).status == 422  # no incident_id


# -- receipts: kept across restarts, forgotten after retention ---------------------------------------


def receipts(settings: Settings) -> list[str]:
    conn = sqlite3.connect(store_path(settings.data_dir))
    try:
        return [r[0] for r in conn.execute("SELECT webhook_id FROM dispatch_receipts ORDER BY received_at")]
    finally:
        conn.close()


def test_receipts_survive_a_restart_and_are_forgotten_after_retention(tmp_path: Path) -> None:
    c = start_city(tmp_path, secret=INBOUND, receipts_days=1.0)
    try:
        alert_id = c.open_alert()
        first = c.send({"type": "alert.assigned", "alert_id": alert_id, "assignee": "grid team 1"})
        assert first.status == 200 and receipts(c.settings) == [first.webhook_id]
        c.run.stop()
        c.run = RunnerThread(c.settings, clock=c.clock).start()
        assert c.run.runner is not None
        c.dispatch.citywatch_url = c.base
        again = c.dispatch.resend(first)
        assert again.status == 200 and again.repeat and again.response == first.response
        assert c.stored(alert_id)[1] == ["opened", "assigned"]
        c.clock.offset = 86400 + 60  # a day later: the next accepted message forgets the first
        second = c.send({"type": "alert.on_site", "alert_id": alert_id})
        assert second.status == 200 and receipts(c.settings) == [second.webhook_id]
    finally:
        stop_city(c)


def test_without_a_dispatch_secret_the_endpoint_answers_503(tmp_path: Path) -> None:
    c = start_city(tmp_path, tolerance_s=300)
    try:
        sent = c.send({"type": "alert.assigned", "alert_id": "al_x", "assignee": "x"})
        assert sent.status == 503 and sent.response["code"] == "not_configured"
        assert "dispatch.secret" in sent.response["error"]
    finally:
        stop_city(c)


@pytest.mark.parametrize("webhooks", [
    {"secret": INBOUND},
    {"secret": OUTBOUND, "routes": [{"name": "gas", "url": "http://127.0.0.1:9/h", "secret": INBOUND}]},
    {"secret": f"{OUTBOUND} {INBOUND}"},
])
def test_the_dispatch_secret_must_be_the_dispatch_sides_own(tmp_path: Path, webhooks: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="dispatch.secret: must be the dispatch system's own"):
        make_settings(tmp_path, webhooks=webhooks, dispatch={"secret": f"{ROTATED} {INBOUND}"})
    assert make_settings(tmp_path, webhooks=webhooks, dispatch={"secret": ROTATED}).dispatch.secret is not None


# -- people: the API with the bearer token, and the CLI ---------------------------------------------


def test_people_dispatch_through_the_api_and_the_cli(city: City) -> None:
    alert_id = city.open_alert()
    token = api_token(city.settings.api, city.settings.data_dir, create=False)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    status, answer = raw_post(f"{city.base}/alerts/{alert_id}/assign", b'{"assignee": "grid team 2", "by": "wang"}',
                              auth)
    assert status == 200 and answer["transition"] == "assigned" and answer["alert"]["assignee"] == "grid team 2"
    assert raw_post(f"{city.base}/alerts/{alert_id}/close", b"", auth)[0] == 409  # not rectified yet
    assert raw_post(f"{city.base}/alerts/al_nope/on-site", b"", auth)[0] == 404
    assert raw_post(f"{city.base}/alerts/{alert_id}/reject", b"{}", auth)[0] == 422  # a reason is needed

    cli = CliRunner()
    args = ["--data-dir", str(city.settings.data_dir), "alerts"]
    result = cli.invoke(main, [*args, "on-site", alert_id, "--by", "li"])
    assert result.exit_code == 0 and f"on_site: {alert_id} (now on_site)" in result.output, result.output
    result = cli.invoke(main, [*args, "rectify", alert_id, "--note", "valve closed", "--evidence",
                               "https://dispatch.example/p/9.jpg", "--evidence", "https://dispatch.example/p/10.jpg"])
    assert result.exit_code == 0 and "(now verifying)" in result.output, result.output
    result = cli.invoke(main, [*args, "rectify", alert_id, "--note", "again"])
    assert result.exit_code == 1 and "rectified needs an assigned alert" in result.output
    result = cli.invoke(main, [*args, "rectify", alert_id, "--note", "x", "--evidence", "not a link"])
    assert result.exit_code == 1 and "http(s) URL" in result.output
    alert, transitions = city.stored(alert_id)
    assert transitions == ["opened", "assigned", "on_site", "rectified"]
    assert alert.evidence == ["https://dispatch.example/p/9.jpg", "https://dispatch.example/p/10.jpg"]
    assert alert.assignee == "grid team 2" and alert.rectified_by == os.environ.get("USER", "cli")
    wait_until(lambda: webhook_types(city, alert_id)[-1] == "alert.rectified")


def test_the_cli_acts_on_the_store_directly_when_no_runner_holds_it(tmp_path: Path) -> None:
    c = start_city(tmp_path, secret=INBOUND)
    try:
        alert_id = c.open_alert()
    finally:
        stop_city(c)
    cli = CliRunner(env={"CITYWATCH_WEBHOOKS__URL": c.receiver.url, "CITYWATCH_WEBHOOKS__SECRET": OUTBOUND})
    args = ["--data-dir", str(c.settings.data_dir), "alerts"]
    result = cli.invoke(main, [*args, "assign", alert_id, "--to", "grid team 1"])
    assert result.exit_code == 0 and "(now assigned)" in result.output, result.output
    result = cli.invoke(main, [*args, "reject", alert_id, "--reason", "not our district"])
    assert result.exit_code == 0 and "(now open)" in result.output, result.output
    assert cli.invoke(main, [*args, "reject", "al_nope", "--reason", "x"]).exit_code == 1
    alert, transitions = c.stored(alert_id)
    assert transitions == ["opened", "assigned", "rejected"] and alert.rejected_reason == "not our district"
    conn = sqlite3.connect(store_path(c.settings.data_dir))
    pending = conn.execute("SELECT COUNT(*) FROM webhook_outbox WHERE alert_id = ? AND status = 'pending'",
                           (alert_id,)).fetchone()[0]
    conn.close()
    assert pending == 2  # sent by the next run
