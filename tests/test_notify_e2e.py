"""Notifications to people end to end: a real Mosquitto, the real runner, Apprise delivering to a real
SMTP server (aiosmtpd, with AUTH) and to a real HTTP server (Apprise's json:// target), through
receiver outages, refusals, a stop mid-send and a `kill -9` mid-send."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from citywatch.cli import main
from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device
from citywatch.sinks.store import store_path
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.runner_process import RunnerProcess
from tests.servers.mosquitto import MosquittoServer
from tests.servers.notify_sinks import JsonSink, SmtpSink

PUBLIC = "https://cw.jiaxing.example"
MAIL_PASSWORD = "mail-pa55-9f8e7d6c"
JSON_PASSWORD = "json-pa55-1a2b3c4d"
PATH_TOKEN = "pathtoken-0123456789abcdef"
HEADER_KEY = "hdrkey-fedcba9876543210"
FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.5, "public_url": PUBLIC}


def devices(n: int) -> list[Device]:
    return [Device(id=f"gas-{i}", kind="gas", district="Nanhu", grid="G0012", address=f"{i} Zhongshan Rd")
            for i in range(1, n + 1)]


def register(data_dir: Path, ds: list[Device]) -> None:
    registry = Registry(registry_path(data_dir))
    for d in ds:
        registry.add(d)
    registry.close()


SEQ: Counter[str] = Counter()


def gas(device: str, lel: float) -> tuple[str, bytes]:
    SEQ[device] += 1
    return (f"citywatch/gas/{device}/telemetry",
            json.dumps({"ts": time.time(), "seq": SEQ[device], "lel_pct": lel}).encode())


def json_url(sink: JsonSink, **query: str) -> str:
    """Apprise's json:// target at the sink, with a password, a token in the path and a key header."""
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return (f"json://cw:{JSON_PASSWORD}@127.0.0.1:{sink.port}/notify/{PATH_TOKEN}?+X-Api-Key={HEADER_KEY}"
            f"&rto=10{extra}")


def rows(data_dir: Path, where: str = "1", *args: Any) -> list[tuple[Any, ...]]:
    """(webhook_id, endpoint, alert_id, status, attempts) of outbox rows, in seq order (read-only)."""
    conn = sqlite3.connect(f"file:{store_path(data_dir)}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT webhook_id, endpoint, alert_id, status, attempts FROM webhook_outbox"
                            f" WHERE {where} ORDER BY seq", args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def test_every_notification_arrives_once_after_mail_and_http_outages(tmp_path: Path,
                                                                    mosquitto: MosquittoServer) -> None:
    mail, hook = SmtpSink("citywatch", MAIL_PASSWORD).start(), JsonSink().start()
    data = tmp_path / "data"
    register(data, devices(3))
    settings = make_settings(data, mqtt={"url": mosquitto.url, "client_id": "cw-notify-outage"}, webhooks={
        **FAST, "routes": [{"name": "ops-mail", "apprise": [mail.url()], "language": "en"},
                           {"name": "duty", "apprise": [json_url(hook)], "language": "zh-CN"}]})
    run = RunnerThread(settings).start().subscribed()
    try:
        publish_all(mosquitto, [gas("gas-1", 60)])  # both up: the way through works
        wait_until(lambda: len(mail.refs()) == 1 and len(hook.refs()) == 1)
        mail.stop()
        hook.stop()
        publish_all(mosquitto, [gas("gas-2", 60), gas("gas-3", 30), gas("gas-1", 2), gas("gas-3", 60)])
        # while both are down, every new notification is tried and fails (retried, not dead)
        wait_until(lambda: len({r[1] for r in rows(data, "status = 'pending' AND attempts >= 2")}) == 2)
        assert not rows(data, "status = 'dead'")
        mail.start()
        hook.start()
        wait_until(lambda: rows(data) and all(r[3] == "delivered" for r in rows(data)))
    finally:
        run.stop()
        mail.stop()
        hook.stop()
    sent = rows(data)
    expected = {endpoint: Counter(r[0] for r in sent if r[1] == endpoint) for endpoint in ("ops-mail#1", "duty#1")}
    # gas-1 opened, resolved; gas-2 opened; gas-3 opened, updated (and whatever else a rule made of it)
    assert sum(expected["ops-mail#1"].values()) >= 5 and expected["ops-mail#1"].keys() == expected["duty#1"].keys()
    assert mail.refs() == expected["ops-mail#1"] and hook.refs() == expected["duty#1"]  # each once, none lost
    by_ref = {r[0]: r[2] for r in sent}
    for received in (mail.refs, hook.refs):  # one alert's transitions arrive in their order
        order = [ref for ref in received() if by_ref[ref] == by_ref[sent[0][0]]]
        assert order == [r[0] for r in sent if r[2] == by_ref[sent[0][0]] and r[1] == "ops-mail#1"]
    subject, body = next((s, b) for s, b in mail.received() if "gas-2" in s)
    assert subject == "[critical] gas_level opened: gas-2, Nanhu / G0012"
    ref = body.rsplit("Ref: ", 1)[1].strip()
    assert f"Open in the console: {PUBLIC}/console/alerts/{by_ref[ref]}\n" in body and "(UTC+08:00)" in body
    message = next(b for b in hook.bodies() if ref in b["message"])
    assert "紧急" in message["title"] and "gas-2" in message["title"] and message["type"] == "failure"
    assert f"{PUBLIC}/console/alerts/{by_ref[ref]}" in message["message"] and f"编号：{ref}" in message["message"]
    assert not any(secret in json.dumps(hook.bodies()) for secret in (JSON_PASSWORD, MAIL_PASSWORD))


def test_a_refused_notification_is_dead_listed_and_resent(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    hook = JsonSink().start()
    hook.status = 404
    data = tmp_path / "data"
    register(data, devices(1))
    settings = make_settings(data, mqtt={"url": mosquitto.url, "client_id": "cw-notify-dead"}, webhooks={
        **FAST, "client_error_attempts": 2, "routes": [{"name": "duty", "apprise": [json_url(hook)]}]})
    cli = CliRunner()
    run = RunnerThread(settings).start().subscribed()
    try:
        publish_all(mosquitto, [gas("gas-1", 60)])
        wait_until(lambda: rows(data, "status = 'dead'"))
        assert len(hook.requests) == 2  # refused twice (client_error_attempts), then given up
        listed = cli.invoke(main, ["--data-dir", str(data), "webhooks", "list", "--dead", "--json"])
        assert listed.exit_code == 0, listed.output
        (dead,) = json.loads(listed.stdout)
        assert dead["endpoint"] == "duty#1" and dead["last_status"] == 404 and dead["attempts"] == 2
        assert "404" in dead["last_error"]
        for secret in (JSON_PASSWORD, PATH_TOKEN, HEADER_KEY):
            assert secret not in listed.output
        hook.status = 200
        resent = cli.invoke(main, ["--data-dir", str(data), "webhooks", "resend", "--endpoint", "duty#1"])
        assert resent.exit_code == 0 and "1 webhook(s) set back to pending" in resent.output, resent.output
        wait_until(lambda: rows(data, "status = 'delivered'"))
    finally:
        run.stop()
        hook.stop()
    assert len(hook.requests) == 3 and hook.refs() == Counter({dead["webhook_id"]: 3})


def test_a_stop_waits_for_a_notification_in_flight_and_records_it(tmp_path: Path,
                                                                  mosquitto: MosquittoServer) -> None:
    hook = JsonSink().start()
    hook.hold = threading.Event()
    data = tmp_path / "data"
    register(data, devices(1))
    settings = make_settings(data, mqtt={"url": mosquitto.url, "client_id": "cw-notify-stop"}, webhooks={
        **FAST, "routes": [{"name": "duty", "apprise": [json_url(hook)]}]})
    run = RunnerThread(settings).start().subscribed()
    try:
        publish_all(mosquitto, [gas("gas-1", 60)])
        assert hook.arrived.wait(15)  # the receiver has it; its answer is held back
        stopping = threading.Thread(target=run.stop)
        stopping.start()
        wait_until(lambda: run.stop_event is not None and run.stop_event.is_set())
        hook.hold.set()  # answered during the stop
        stopping.join(30)
    finally:
        hook.hold.set()
        run.stop()
        hook.stop()
    assert [r[3:] for r in rows(data)] == [("delivered", 1)]  # recorded: the next start will not repeat it


def test_a_kill_mid_send_repeats_that_notification_once_and_no_secret_is_logged(tmp_path: Path,
                                                                                mosquitto: MosquittoServer) -> None:
    """The documented duplicate: the receiver got the message, the runner died before recording it, the
    next start sends it again (same text, same Ref). Exactly one repeat. Logs at DEBUG, with a mail
    server down throughout (Apprise logging its failures), never show a secret of an Apprise URL."""
    hook = JsonSink().start()
    hook.hold = threading.Event()
    mail = SmtpSink("citywatch", MAIL_PASSWORD)  # never started: every mail attempt fails
    data = tmp_path / "data"
    register(data, devices(1))
    routes = [{"name": "duty", "apprise": [json_url(hook)]}, {"name": "ops-mail", "apprise": [mail.url()]}]

    def verbose(workdir: Path) -> RunnerProcess:
        runner = RunnerProcess(workdir, data, mosquitto.url, "cw-notify-kill", webhooks={**FAST, "routes": routes})
        config = yaml.safe_load(runner.config.read_text())
        runner.config.write_text(yaml.safe_dump({**config, "log_level": "DEBUG"}))
        return runner.start()

    first = verbose(tmp_path / "run1")
    second = None
    try:
        first.wait_healthy()
        publish_all(mosquitto, [gas("gas-1", 60)])
        assert hook.arrived.wait(15)
        wait_until(lambda: rows(data, "endpoint = 'ops-mail#1' AND attempts >= 2"))  # failures logged meanwhile
        assert first.proc is not None
        first.proc.kill()  # kill -9 while the receiver holds the request: sent, not recorded
        first.proc.wait(10)
        hook.hold.set()
        ((ref, _, _, status, attempts),) = rows(data, "endpoint = 'duty#1'")
        assert (status, attempts) == ("pending", 0) and hook.refs() == Counter({ref: 1})
        second = verbose(tmp_path / "run2")
        second.wait_healthy()
        wait_until(lambda: rows(data, "endpoint = 'duty#1' AND status = 'delivered'"))
        assert rows(data, "endpoint = 'duty#1'")[0][3:] == ("delivered", 1)
    finally:
        hook.hold.set()
        first.stop()
        if second is not None:
            second.stop()
        hook.stop()
    bodies = [b for b in hook.bodies() if ref in b["message"]]
    assert len(bodies) == 2 and bodies[0] == bodies[1]  # the same message twice: same title, body and Ref
    logs = first.stderr + (second.stderr if second is not None else "")
    assert "Connection error while submitting email" in logs and "DEBUG" in logs  # Apprise did log, verbosely
    for secret in (MAIL_PASSWORD, JSON_PASSWORD, PATH_TOKEN, HEADER_KEY):
        assert secret not in logs, f"{secret} leaked into the logs"
