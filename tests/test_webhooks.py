"""Webhook outbox and delivery against a real HTTP receiver: signing, routing, retries, order, restart."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import socket
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from citywatch.config import AlertSettings, WebhookRoute, WebhookSettings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.model import Device, Finding, Output, Transition
from citywatch.sinks import webhooks
from citywatch.sinks.outbox import Outbox, rfc3339
from citywatch.sinks.store import AlertStore
from citywatch.sinks.webhooks import (
    WebhookDelivery,
    backoff_s,
    parse_retry_after,
    sign,
    signing_keys,
    verify,
)
from tests.helpers import T0

FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.2, "timeout_s": 2.0}
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
WHSEC2 = "whsec_" + base64.b64encode(b"rotated-key-rotated-key-rotated!").decode()
PLAIN = "plain secret, not base64!"


# -- helpers ----------------------------------------------------------------------------------

async def wait_for(cond: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int | None = None

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


Behave = Callable[[Request], "web.Response | Awaitable[web.Response]"]


class Receiver:
    """A real aiohttp server on 127.0.0.1 in the test's loop; `behave` picks each response."""

    def __init__(self, behave: Behave | None = None) -> None:
        self.behave: Behave = behave or (lambda req: web.Response(status=200))
        self.requests: list[Request] = []
        self.inflight: Counter[str] = Counter()
        self.max_inflight: Counter[str] = Counter()
        self.release = asyncio.Event()  # handlers that hang wait on it; set at shutdown
        self.port = 0

    async def _handle(self, request: web.Request) -> web.Response:
        rec = Request(request.path, {k.lower(): v for k, v in request.headers.items()}, await request.read(),
                      time.time())
        self.requests.append(rec)
        self.inflight[rec.path] += 1
        self.max_inflight[rec.path] = max(self.max_inflight[rec.path], self.inflight[rec.path])
        try:
            response = self.behave(rec)
            if not isinstance(response, web.Response):
                response = await response
            rec.status = response.status
            return response
        finally:
            self.inflight[rec.path] -= 1

    async def hang(self) -> web.Response:
        await self.release.wait()
        return web.Response(status=503)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def ok(self, path: str) -> list[str]:
        return [r.id for r in self.requests if r.path == path and r.status is not None and r.status < 300]

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self.runner.cleanup()


@contextlib.asynccontextmanager
async def delivering(path: Path, settings: WebhookSettings) -> AsyncIterator[WebhookDelivery]:
    delivery = WebhookDelivery(path, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(delivery.run(stop))
    try:
        yield delivery
    finally:
        stop.set()
        await task
        delivery.close()


def device(n: int, kind: str = "gas", district: str = "north", grid: str = "G1") -> Device:
    return Device(id=f"{kind}-{n}", kind=kind, district=district, grid=grid, address=f"{n} Main St",
                  lat=30.0, lon=120.0)


def finding(active: bool = True, severity: str = "warning", rule: str = "level") -> Finding:
    return Finding(rule, active, severity=severity, value=42.5, threshold=25.0, message="too high")


def lifecycle(engine: AlertEngine, dev: Device, at: float = T0, rule: str = "level") -> list[Transition]:
    """opened, updated (severity raised), acknowledged, resolved: four transitions of one alert."""
    opened = engine.apply(dev, finding(severity="warning", rule=rule), at)
    assert opened is not None
    raised = engine.apply(dev, finding(severity="critical", rule=rule), at + 60)
    assert raised is not None
    acked = engine.acknowledge(opened.alert_id, "ops", at + 120)
    resolved = engine.resolve(opened.alert_id, "ops", at + 180)
    return [opened, raised, acked, resolved]


def commit(store: AlertStore, transitions: list[Transition]) -> None:
    out = Output()
    out.transitions.extend(transitions)
    store.commit(out, [], {})


def make_store(tmp_path: Path, settings: WebhookSettings) -> tuple[AlertStore, Outbox]:
    outbox = Outbox(settings)
    return AlertStore(tmp_path / "state.db", hooks=[outbox.enqueue]), outbox


def rows(path: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM webhook_outbox ORDER BY seq").fetchall()
    finally:
        conn.close()


def by_status(path: Path) -> dict[str, str]:
    return {f"{r['endpoint']}:{r['webhook_id']}": r["status"] for r in rows(path)}


# -- signing ----------------------------------------------------------------------------------

def test_signatures_verify_with_the_standard_webhooks_library(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> list[Request]:
        async with Receiver() as rx:
            settings = WebhookSettings(routes=[
                WebhookRoute(name="whsec", url=rx.url("whsec"), secret=SecretStr(WHSEC)),
                WebhookRoute(name="plain", url=rx.url("plain"), secret=SecretStr(PLAIN)),
                WebhookRoute(name="rotating", url=rx.url("rotating"), secret=SecretStr(f"{WHSEC2} {WHSEC}")),
                WebhookRoute(name="open", url=rx.url("open")),
            ], **FAST)
            store, _ = make_store(tmp_path, settings)
            commit(store, lifecycle(AlertEngine(AlertSettings()), device(1))[:1])
            async with delivering(tmp_path / "state.db", settings):
                await wait_for(lambda: len(rx.requests) == 4)
            store.close()
            return rx.requests

    with caplog.at_level(logging.WARNING, logger="citywatch.sinks.webhooks"):
        reqs = {r.path: r for r in asyncio.run(go())}
    whsec, plain, rotating, unsigned = reqs["/whsec"], reqs["/plain"], reqs["/rotating"], reqs["/open"]
    # the reference library accepts them; a whsec_ secret is base64, any other is raw UTF-8 bytes
    assert Webhook(WHSEC).verify(whsec.body, whsec.headers)["type"] == "alert.opened"
    Webhook(PLAIN.encode()).verify(plain.body, plain.headers)
    Webhook(WHSEC).verify(rotating.body, rotating.headers)
    Webhook(WHSEC2).verify(rotating.body, rotating.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(PLAIN.encode()).verify(whsec.body, whsec.headers)
    assert len(rotating.headers["webhook-signature"].split()) == 2
    # our receiver helper agrees, and rejects wrong keys, tampering and missing headers
    assert verify(WHSEC, whsec.headers, whsec.body) and verify(PLAIN, plain.headers, plain.body)
    assert not verify(PLAIN, whsec.headers, whsec.body)
    assert not verify(WHSEC, whsec.headers, whsec.body.replace(b"warning", b"info"))
    assert not verify(WHSEC, {**whsec.headers, "webhook-id": "other"}, whsec.body)
    assert not verify(WHSEC, unsigned.headers, unsigned.body)
    for r in reqs.values():
        assert r.id == r.json["id"] and r.id.endswith(".1")
        assert r.headers["content-type"] == "application/json"
        assert r.headers["user-agent"] == "citywatch/0.1"
        assert abs(int(r.headers["webhook-timestamp"]) - time.time()) < 60
    assert "webhook-signature" not in unsigned.headers
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and "open" in warnings[0] and "unsigned" in warnings[0]
    assert PLAIN not in caplog.text and WHSEC[6:] not in caplog.text


def test_verify_enforces_the_timestamp_tolerance() -> None:
    body = b'{"id":"al_1.1"}'
    stamp = int(time.time()) - 120
    headers = {"Webhook-Id": "al_1.1", "Webhook-Timestamp": str(stamp),
               "Webhook-Signature": sign(signing_keys(SecretStr(WHSEC)), "al_1.1", stamp, body)}
    assert verify(WHSEC, headers, body)
    assert not verify(WHSEC, headers, body, tolerance_s=60)
    with pytest.raises(ValueError):
        verify(WHSEC, headers, body, tolerance_s=3600)


# -- routing and payload ----------------------------------------------------------------------

ROUTES = [
    WebhookRoute(name="gas-north", url="http://h/gas", kinds=["gas"], districts=["north"]),
    WebhookRoute(name="critical", url="http://h/crit", min_severity="critical"),
    WebhookRoute(name="grid9-valve", url="http://h/g9", grids=["G9"], rules=["valve"]),
]


def test_routing_by_kind_district_grid_rule_and_severity(tmp_path: Path) -> None:
    settings = WebhookSettings(url="http://h/default", routes=ROUTES)
    store, outbox = make_store(tmp_path, settings)
    engine = AlertEngine(AlertSettings())
    cases = {
        "gas-north": (device(1), "warning", "level"),
        "gas-south": (device(2, district="south"), "warning", "level"),
        "noise-crit": (device(3, kind="noise"), "critical", "level"),
        "gas-north-crit": (device(4), "critical", "level"),
        "g9-valve": (device(5, kind="water", district="east", grid="G9"), "info", "valve"),
        "g9-other": (device(6, kind="water", district="east", grid="G9"), "info", "level"),
    }
    ids = {}
    for name, (dev, severity, rule) in cases.items():
        t = engine.apply(dev, finding(severity=severity, rule=rule), T0)
        assert t is not None
        commit(store, [t])
        ids[t.id] = name
    got: dict[str, set[str]] = {}
    for r in rows(tmp_path / "state.db"):
        got.setdefault(ids[r["webhook_id"]], set()).add(r["endpoint"])
        assert (r["status"], r["attempts"]) == ("pending", 0)
    assert got == {
        "gas-north": {"gas-north"}, "gas-south": {"default"}, "noise-crit": {"critical"},
        "gas-north-crit": {"gas-north", "critical"}, "g9-valve": {"grid9-valve"}, "g9-other": {"default"},
    }
    assert outbox.counters["unrouted"] == 0
    store.close()


def test_unrouted_without_default_is_counted_and_redelivery_does_not_double(tmp_path: Path) -> None:
    store, outbox = make_store(tmp_path, WebhookSettings(routes=ROUTES))
    engine = AlertEngine(AlertSettings())
    lost = engine.apply(device(1, district="south"), finding(), T0)
    kept = engine.apply(device(2), finding(), T0)
    assert lost is not None and kept is not None
    commit(store, [lost, kept])
    first = [tuple(r) for r in rows(tmp_path / "state.db")]
    commit(store, [lost, kept])  # the broker redelivered the batch after a crash
    assert [tuple(r) for r in rows(tmp_path / "state.db")] == first  # not doubled, not replaced
    assert [(r["webhook_id"], r["endpoint"]) for r in rows(tmp_path / "state.db")] == [(kept.id, "gas-north")]
    assert outbox.counters["unrouted"] == 2
    store.close()


def test_payload_carries_the_alert_device_and_links(tmp_path: Path) -> None:
    settings = WebhookSettings(url="http://h/default", public_url="https://city.example/", routes=ROUTES)
    store, _ = make_store(tmp_path, settings)
    opened, raised, acked, _resolved = lifecycle(AlertEngine(AlertSettings()), device(7))
    commit(store, [opened, raised, acked])
    bodies = {(r["webhook_id"], r["endpoint"]): json.loads(r["body"]) for r in rows(tmp_path / "state.db")}
    assert bodies[(raised.id, "gas-north")] == bodies[(raised.id, "critical")]
    body = bodies[(acked.id, "gas-north")]
    alert = acked.alert
    assert body["id"] == acked.id and body["type"] == "alert.acknowledged"
    assert body["transition"] == "acknowledged" and body["reason"] == "acknowledged by ops"
    assert body["at"] == rfc3339(T0 + 120) and body["at"].endswith("Z")
    assert body["alert"] == {
        "id": alert.id, "rule": "level", "kind": "gas", "severity": "critical", "status": "acknowledged",
        "value": 42.5, "threshold": 25.0, "message": "too high", "count": 2,
        "opened_at": "2026-11-18T11:06:40.000Z", "updated_at": rfc3339(T0 + 60),
        "acked_at": rfc3339(T0 + 120), "acked_by": "ops", "resolved_at": None, "resolved_by": None,
        "review_deadline": rfc3339(alert.review_deadline),
        "response_deadline": rfc3339(alert.response_deadline),
        "escalations": [], "safety": False, "suspect": None, "suspect_reason": None,
        "loop": {"assignee": None, "assigned_at": None, "on_site_at": None, "rectified_at": None,
                 "rectified_by": None, "rectify_note": None, "evidence": [], "verify_until": None, "reopened": 0,
                 "rejected_reason": None, "escalation_level": 0, "closed_at": None, "closed_by": None},
    }
    assert body["device"] == {"id": "gas-7", "kind": "gas", "district": "north", "grid": "G1", "community": "",
                              "city": "", "address": "7 Main St", "lat": 30.0, "lon": 120.0}
    base = f"https://city.example/alerts/{alert.id}"
    assert body["links"] == {"ack": f"{base}/ack", "resolve": f"{base}/resolve", "self": base}
    store.close()


# -- retries ----------------------------------------------------------------------------------

def test_retry_policy_helpers() -> None:
    assert backoff_s(1, 0.5, 60, rand=lambda: 1.0) == 0.5
    assert backoff_s(4, 0.5, 60, rand=lambda: 1.0) == 4.0
    assert backoff_s(40, 0.5, 60, rand=lambda: 1.0) == 60.0
    assert backoff_s(3, 0.5, 60, rand=lambda: 0.0) == 0.0  # full jitter reaches down to zero
    assert parse_retry_after("7", 1000.0) == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", 1445412480.0) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", 1445412999.0) == 0.0
    assert parse_retry_after("soon", 0.0) is None and parse_retry_after(None, 0.0) is None


def test_500_then_200_is_delivered_once_after_a_retry_with_the_same_id(tmp_path: Path) -> None:
    seen: set[str] = set()

    def behave(req: Request) -> web.Response:
        first = req.id not in seen
        seen.add(req.id)
        return web.Response(status=500 if first else 200)

    async def go() -> list[Request]:
        async with Receiver(behave) as rx:
            settings = WebhookSettings(url=rx.url("hook"), **FAST)
            store, _ = make_store(tmp_path, settings)
            commit(store, lifecycle(AlertEngine(AlertSettings()), device(1))[:1])
            async with delivering(tmp_path / "state.db", settings) as d:
                d.notify()
                await wait_for(lambda: d.stats()["delivered"] == 1)
                assert d.stats() == {"delivered": 1, "pending": 0, "retrying": 0, "dead": 0, "attempts": 2}
                assert d.purge_delivered(3600) == 0
                d.clock = lambda: time.time() + 7200
                assert d.purge_delivered(3600) == 1
            store.close()
            return rx.requests

    reqs = asyncio.run(go())
    assert [r.status for r in reqs] == [500, 200]
    assert reqs[0].id == reqs[1].id == reqs[0].json["id"]
    assert verify_unsigned(reqs[1])


def verify_unsigned(req: Request) -> bool:
    return "webhook-signature" not in req.headers and req.headers["webhook-id"] == req.json["id"]


def test_timeouts_and_connection_errors_are_retried_not_dropped(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    hung: set[str] = set()

    async def go() -> None:
        async def behave(req: Request) -> web.Response:
            if req.id in hung:
                return web.Response(status=204)
            hung.add(req.id)
            return await rx.hang()  # longer than timeout_s

        async with Receiver(behave) as rx:
            settings = WebhookSettings(routes=[
                WebhookRoute(name="slow-once", url=rx.url("slow")),
                WebhookRoute(name="refused", url=f"http://127.0.0.1:{closed_port}/hook"),
            ], **{**FAST, "timeout_s": 0.3})
            store, _ = make_store(tmp_path, settings)
            t = lifecycle(AlertEngine(AlertSettings()), device(1))[0]
            commit(store, [t])
            async with delivering(tmp_path / "state.db", settings) as d:
                d.notify()
                await wait_for(lambda: rx.ok("/slow") == [t.id])
                await wait_for(lambda: next(r for r in rows(tmp_path / "state.db")
                                            if r["endpoint"] == "refused")["attempts"] >= 3)
                # the receiver sees the request before the delivery task records the 2xx: wait for that
                await wait_for(lambda: d.stats()["delivered"] == 1)
                stats = d.stats()
            store.close()
            assert stats["delivered"] == 1 and stats["retrying"] == 1 and stats["dead"] == 0

    asyncio.run(go())
    refused = next(r for r in rows(tmp_path / "state.db") if r["endpoint"] == "refused")
    assert refused["status"] == "pending" and refused["last_status"] is None and refused["last_error"]


def test_429_retry_after_pauses_the_endpoint(tmp_path: Path) -> None:
    def behave(req: Request) -> web.Response:
        if len(rx.requests) == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(status=200)

    rx = Receiver(behave)

    async def go() -> None:
        async with rx:
            settings = WebhookSettings(url=rx.url("hook"), concurrency=1, **FAST)
            store, _ = make_store(tmp_path, settings)
            engine = AlertEngine(AlertSettings())
            commit(store, [lifecycle(engine, device(i))[0] for i in range(3)])
            async with delivering(tmp_path / "state.db", settings) as d:
                d.notify()
                await wait_for(lambda: d.stats()["delivered"] == 3)
            store.close()

    asyncio.run(go())
    first, *later = rx.requests
    assert first.status == 429 and len(later) == 3
    assert first.id in [r.id for r in later]
    # backoff_max is 0.2 s: only Retry-After explains a 1 s gap, for this alert and the others
    assert min(r.at for r in later) - first.at >= 0.99


def test_400_is_dead_after_client_error_attempts_with_the_body_and_later_transitions_still_go(
        tmp_path: Path) -> None:
    def behave(req: Request) -> web.Response:
        if req.json["transition"] == "updated":
            return web.Response(status=400, text="rejected: " + "x" * 5000)
        return web.Response(status=200)

    async def go() -> list[Request]:
        async with Receiver(behave) as rx:
            settings = WebhookSettings(url=rx.url("hook"), client_error_attempts=2, **FAST)
            store, _ = make_store(tmp_path, settings)
            commit(store, lifecycle(AlertEngine(AlertSettings()), device(1)))
            async with delivering(tmp_path / "state.db", settings) as d:
                d.notify()
                await wait_for(lambda: d.stats()["delivered"] == 3)
                assert d.stats()["dead"] == 1
                d.clock = lambda: time.time() + 7200
                assert d.purge_delivered(3600) == 3  # the dead row stays for people to look at
            store.close()
            return rx.requests

    reqs = asyncio.run(go())
    assert [(r.json["transition"], r.status) for r in reqs] == [
        ("opened", 200), ("updated", 400), ("updated", 400), ("acknowledged", 200), ("resolved", 200)]
    (dead,) = rows(tmp_path / "state.db")
    assert dead["status"] == "dead" and dead["last_status"] == 400 and dead["attempts"] == 2
    assert dead["last_error"].startswith("rejected: xxx") and len(dead["last_error"].encode()) == 2048


# -- isolation, order, restart ----------------------------------------------------------------

def test_a_hanging_endpoint_does_not_hold_back_another(tmp_path: Path) -> None:
    async def behave(req: Request) -> web.Response:
        return await rx.hang() if req.path == "/slow" else web.Response(status=200)

    rx = Receiver(behave)

    async def go() -> None:
        async with rx:
            settings = WebhookSettings(routes=[WebhookRoute(name="slow", url=rx.url("slow")),
                                               WebhookRoute(name="fast", url=rx.url("fast"))],
                                       concurrency=2, **{**FAST, "timeout_s": 5.0})
            store, _ = make_store(tmp_path, settings)
            engine = AlertEngine(AlertSettings())
            transitions = [t for i in range(10) for t in lifecycle(engine, device(i))]
            commit(store, transitions)
            started = time.monotonic()
            async with delivering(tmp_path / "state.db", settings) as d:
                d.notify()
                # the fast endpoint's 40 answered and recorded as delivered (the receiver counts first)
                await wait_for(lambda: len(rx.ok("/fast")) == 40 and d.stats()["pending"] == 40, timeout=4)
                assert time.monotonic() - started < 4  # before the slow endpoint's first timeout
                assert rx.max_inflight["/slow"] == 2  # concurrency per endpoint, reached, not exceeded
                assert rx.inflight["/slow"] == 2 and d.stats()["pending"] == 40
            store.close()
            assert sorted(rx.ok("/fast")) == sorted(t.id for t in transitions)

    asyncio.run(go())


def test_per_alert_order_holds_under_random_failures(tmp_path: Path) -> None:
    rng = random.Random(7)
    delivered: set[str] = set()
    violations: list[str] = []

    def behave(req: Request) -> web.Response:
        alert_id, n = req.id.split(".")[:2]  # <alert>.<n>, a person's act <alert>.<n>.<kind>
        missing = [k for k in range(1, int(n)) if not any(d.startswith(f"{alert_id}.{k}") for d in delivered)]
        if missing:
            violations.append(f"{req.id} before {missing}")
        if rng.random() < 0.3:
            return web.Response(status=500)
        delivered.add(req.id)
        return web.Response(status=200)

    async def go() -> list[Transition]:
        async with Receiver(behave) as rx:
            settings = WebhookSettings(url=rx.url("hook"), **FAST)
            store, _ = make_store(tmp_path, settings)
            engine = AlertEngine(AlertSettings())
            per_alert = [lifecycle(engine, device(i), T0 + i) for i in range(50)]
            steps = [list(step) for step in zip(*per_alert, strict=True)]  # all opens, all raises, ...
            transitions = [t for step in steps for t in step]
            async with delivering(tmp_path / "state.db", settings) as d:
                for i in range(0, len(transitions), 20):  # batches committed while delivery runs
                    commit(store, transitions[i:i + 20])
                    d.notify()
                    await asyncio.sleep(0.02)
                await wait_for(lambda: d.stats()["delivered"] == 200, timeout=30)
                stats = d.stats()
            store.close()
            assert stats["pending"] == stats["dead"] == 0 and stats["attempts"] == len(rx.requests)
            assert sum(r.status == 500 for r in rx.requests) > 30
            assert sorted(rx.ok("/hook")) == sorted(t.id for t in transitions)  # each exactly once
            return transitions

    transitions = asyncio.run(go())
    assert len(transitions) == 200 and len({t.alert_id for t in transitions}) == 50
    assert violations == []


RUN_DELIVERY = """
import asyncio, sys
from pathlib import Path
from citywatch.config import WebhookSettings
from citywatch.sinks.webhooks import WebhookDelivery
settings = WebhookSettings.model_validate_json(sys.argv[2])
asyncio.run(WebhookDelivery(Path(sys.argv[1]), settings).run(asyncio.Event()))
"""


def test_rows_survive_kill_9_and_go_out_again_with_the_same_ids(tmp_path: Path) -> None:
    phase = ["hang"]

    async def behave(req: Request) -> web.Response:
        return await rx.hang() if phase[0] == "hang" else web.Response(status=200)

    rx = Receiver(behave)

    async def go() -> None:
        async with rx:
            settings = WebhookSettings(url=rx.url("hook"), **FAST)
            store, _ = make_store(tmp_path, settings)
            engine = AlertEngine(AlertSettings())
            transitions = [t for i in range(3) for t in lifecycle(engine, device(i))[:2]]
            commit(store, transitions)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", RUN_DELIVERY, str(tmp_path / "state.db"), settings.model_dump_json(),
                stderr=asyncio.subprocess.DEVNULL)
            try:
                await wait_for(lambda: len(rx.requests) == 3, timeout=20)
            finally:
                proc.kill()
                await proc.wait()
            before = {r.id for r in rx.requests}
            assert before == {t.id for t in transitions if t.transition == "opened"}
            assert {r["status"] for r in rows(tmp_path / "state.db")} == {"pending"}
            phase[0] = "answer"
            async with delivering(tmp_path / "state.db", settings) as d:
                await wait_for(lambda: d.stats()["delivered"] == 6)  # no notify(): found at start
            store.close()
            after = rx.ok("/hook")
            assert sorted(after) == sorted(t.id for t in transitions)
            assert before <= set(after)

    asyncio.run(go())


async def deliver_second_row(tmp_path: Path, notify: bool, within: float) -> None:
    """Row 1 goes out at start; row 2 is committed while delivery idles, with or without notify()."""
    async with Receiver() as rx:
        settings = WebhookSettings(url=rx.url("hook"), **FAST)
        store, _ = make_store(tmp_path, settings)
        engine = AlertEngine(AlertSettings())
        commit(store, lifecycle(engine, device(1))[:1])
        async with delivering(tmp_path / "state.db", settings) as d:
            await wait_for(lambda: len(rx.ok("/hook")) == 1)
            commit(store, lifecycle(engine, device(2))[:1])
            if notify:
                d.notify()
            await wait_for(lambda: len(rx.ok("/hook")) == 2, timeout=within)
        store.close()


def test_rows_committed_without_notify_are_found_by_polling(tmp_path: Path) -> None:
    asyncio.run(deliver_second_row(tmp_path, notify=False, within=3.0))


def test_notify_wakes_delivery_before_the_next_poll(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhooks, "POLL_S", 30.0)
    asyncio.run(deliver_second_row(tmp_path, notify=True, within=3.0))


def test_an_unreachable_endpoint_is_paused_as_a_whole_not_retried_per_alert(tmp_path: Path) -> None:
    """Fifty alerts pending for a dead endpoint: one backoff for the lane, not fifty retry loops."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    settings = WebhookSettings(url=f"http://127.0.0.1:{closed_port}/hook", backoff_initial_s=0.05,
                               backoff_max_s=0.4, concurrency=4)
    store, _ = make_store(tmp_path, settings)
    engine = AlertEngine(AlertSettings())
    opened = [engine.apply(device(n), finding(), T0) for n in range(50)]
    commit(store, [t for t in opened if t is not None])
    store.close()

    async def go() -> int:
        async with delivering(tmp_path / "state.db", settings) as d:
            d.notify()
            # wait until the lane's backoff has reached its maximum (several rounds of failures)
            await wait_for(lambda: d.stats()["attempts"] >= 8)
            started = d.stats()["attempts"]
            await asyncio.sleep(2.0)  # a fixed observation window: we count attempts made in it
            return d.stats()["attempts"] - started

    attempts = asyncio.run(go())
    # per-alert retries would make ~50 alerts x 2 s / 0.4 s = 250 attempts; one paused lane makes
    # at most `concurrency` per pause
    assert attempts <= 4 * (2.0 / 0.4 + 2), attempts
