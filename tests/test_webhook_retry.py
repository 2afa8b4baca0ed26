"""Webhook retries on any non-2xx but explicit refusals, dead rows resent by hand, URLs checked at
start (issue 17), against real HTTP receivers. Before: any 3xx or 4xx was dead after one attempt,
with no way to send it again, and `webhooks.url: ftp://...` was accepted at start."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner

from citywatch.cli import main
from citywatch.config import AlertSettings, WebhookRoute, WebhookSettings, load_settings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.errors import ConfigError
from tests.test_webhooks import (
    FAST,
    Receiver,
    Request,
    commit,
    delivering,
    device,
    lifecycle,
    make_store,
    rows,
    wait_for,
)

STATUSES = [302, 404, 500, 200]  # what the receiver answers each webhook, attempt after attempt


def test_302_then_404_then_500_then_200_is_delivered_once_with_the_same_id(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    tries: Counter[str] = Counter()

    def behave(req: Request) -> web.Response:
        if req.path != "/hook":
            return web.Response(status=200)  # a followed redirect would land here
        status = STATUSES[min(tries[req.id], len(STATUSES) - 1)]
        tries[req.id] += 1
        headers = {"Location": f"http://127.0.0.1:{rx.port}/elsewhere"} if status == 302 else {}
        return web.Response(status=status, headers=headers, text=f"answer {status}")

    rx = Receiver(behave)

    async def go() -> None:
        async with rx:
            settings = WebhookSettings(url=rx.url("hook"), **FAST)
            store, _ = make_store(tmp_path, settings)
            commit(store, lifecycle(AlertEngine(AlertSettings()), device(1))[:2])
            async with delivering(tmp_path / "state.db", settings) as d:
                d.notify()
                await wait_for(lambda: d.stats()["delivered"] == 2)
                assert d.stats()["dead"] == 0
            store.close()

    asyncio.run(go())
    assert [r.path for r in rx.requests].count("/elsewhere") == 0  # the redirect was not followed
    by_id: dict[str, list[int | None]] = {}
    for r in rx.requests:
        by_id.setdefault(r.id, []).append(r.status)
    assert list(by_id.values()) == [STATUSES, STATUSES]  # each retried through 302, 404, 500 to 200, in order
    assert all(r["status"] == "delivered" and r["attempts"] == 4 for r in rows(tmp_path / "state.db"))
    assert f"http://127.0.0.1:{rx.port}/elsewhere" in caplog.text  # the Location, for a person to fix the url


def test_410_is_dead_at_once_other_4xx_after_client_error_attempts_and_429_409_never(tmp_path: Path) -> None:
    later = [429, 409, 425, 408, 503, 429, 409]  # more attempts than client_error_attempts: still retried
    seen: Counter[str] = Counter()

    def behave(req: Request) -> web.Response:
        if req.path == "/gone":
            return web.Response(status=410, text="endpoint retired")
        if req.path == "/missing":
            return web.Response(status=404, text="no such hook")
        n = seen[req.id]
        seen[req.id] += 1
        return web.Response(status=later[n] if n < len(later) else 204)

    async def go() -> None:
        async with Receiver(behave) as rx:
            routes = [WebhookRoute(name=n, url=rx.url(n)) for n in ("gone", "missing", "busy")]
            settings = WebhookSettings(routes=routes, client_error_attempts=3, **FAST)
            store, _ = make_store(tmp_path, settings)
            commit(store, lifecycle(AlertEngine(AlertSettings()), device(1))[:1])
            async with delivering(tmp_path / "state.db", settings) as d:
                d.notify()
                await wait_for(lambda: d.stats()["dead"] == 2 and d.stats()["delivered"] == 1, timeout=20)
            store.close()

    asyncio.run(go())
    final = {r["endpoint"]: r for r in rows(tmp_path / "state.db")}
    assert (final["gone"]["status"], final["gone"]["attempts"], final["gone"]["last_status"]) == ("dead", 1, 410)
    assert final["gone"]["last_error"] == "endpoint retired"
    assert (final["missing"]["status"], final["missing"]["attempts"], final["missing"]["last_status"]) == \
        ("dead", 3, 404)
    assert final["missing"]["last_error"] == "no such hook"
    assert (final["busy"]["status"], final["busy"]["attempts"]) == ("delivered", len(later) + 1)


def test_dead_webhooks_are_listed_and_resent_with_the_same_id_to_a_running_delivery(tmp_path: Path) -> None:
    data = tmp_path / "data"
    refusing = {"/missing": True, "/gone": True}

    def behave(req: Request) -> web.Response:
        if refusing.get(req.path):
            return web.Response(status=410 if req.path == "/gone" else 404, text="not here \x1b[31mred")
        return web.Response(status=200)

    cli = CliRunner()

    def run_cli(*args: str) -> tuple[int, str]:
        result = cli.invoke(main, ["--data-dir", str(data), "webhooks", *args])
        return result.exit_code, result.output

    async def go() -> None:
        async with Receiver(behave) as rx:
            settings = WebhookSettings(routes=[WebhookRoute(name="missing", url=rx.url("missing")),
                                               WebhookRoute(name="gone", url=rx.url("gone"))],
                                       client_error_attempts=2, **FAST)
            store, _ = make_store(data, settings)
            engine = AlertEngine(AlertSettings())
            first, second = lifecycle(engine, device(1))[:1], lifecycle(engine, device(2))[:1]
            commit(store, first + second)
            async with delivering(data / "state.db", settings) as d:
                d.notify()
                await wait_for(lambda: d.stats()["dead"] == 4)
                code, listing = await asyncio.to_thread(run_cli, "list", "--dead")
                assert code == 0 and listing.count("\tdead\t") == 4 and "HTTP 404" in listing
                assert "\x1b" not in listing and "\\x1b[31mred" in listing  # a receiver's escapes, shown inert
                assert (await asyncio.to_thread(run_cli, "resend"))[0] == 2  # which ones? it must be said

                refusing["/missing"] = False  # the receiver is fixed ...
                code, out = await asyncio.to_thread(run_cli, "resend", "--endpoint", "missing")
                assert code == 0 and out.startswith("2 webhook(s) set back to pending")
                await wait_for(lambda: len(rx.ok("/missing")) == 2, timeout=5)  # ... and polling finds them

                refusing["/gone"] = False
                code, out = await asyncio.to_thread(run_cli, "resend", "--id", first[0].id, "--endpoint", "gone")
                assert code == 0 and out.startswith("1 webhook(s)")
                await wait_for(lambda: rx.ok("/gone") == [first[0].id], timeout=5)
                code, out = await asyncio.to_thread(run_cli, "resend", "--dead")
                assert code == 0 and out.startswith("1 webhook(s)")
                await wait_for(lambda: d.stats()["delivered"] == 4, timeout=5)
                assert (await asyncio.to_thread(run_cli, "resend", "--dead"))[1].strip() == "no dead webhook matches"
            store.close()
            sent = [r.id for r in rx.requests if r.status == 200]
            assert sorted(sent) == sorted(t.id for t in first + second for _ in range(2))  # same ids as before

    asyncio.run(go())
    assert {r["status"] for r in rows(data / "state.db")} == {"delivered"}


def test_a_redirecting_endpoint_keeps_its_webhooks_until_its_url_is_fixed(tmp_path: Path) -> None:
    def behave(req: Request) -> web.Response:
        if req.path == "/old":
            return web.Response(status=301, headers={"Location": "https://moved.example/hook"})
        return web.Response(status=204)

    async def go() -> Receiver:
        async with Receiver(behave) as rx:
            old = WebhookSettings(url=rx.url("old"), **FAST)
            store, _ = make_store(tmp_path, old)
            t = lifecycle(AlertEngine(AlertSettings()), device(1))[0]
            commit(store, [t])
            async with delivering(tmp_path / "state.db", old) as d:
                d.notify()
                await wait_for(lambda: len(rx.requests) >= 6)  # more than client_error_attempts: still pending
                assert d.stats()["pending"] == 1 and d.stats()["dead"] == 0
            (row,) = rows(tmp_path / "state.db")
            assert row["last_status"] == 301 and "https://moved.example/hook" in row["last_error"]
            fixed = WebhookSettings(url=rx.url("new"), **FAST)  # the operator fixes webhooks.url, restarts
            async with delivering(tmp_path / "state.db", fixed) as d:
                d.notify()
                await wait_for(lambda: rx.ok("/new") == [t.id])
            store.close()
            return rx

    asyncio.run(go())


@pytest.mark.parametrize(("overrides", "key"), [
    ({"webhooks": {"url": "ftp://dispatch.example/hook"}}, "webhooks.url"),
    ({"webhooks": {"url": "dispatch.example/hook"}}, "webhooks.url"),
    ({"webhooks": {"url": "http:///hook"}}, "webhooks.url"),
    ({"webhooks": {"url": "https://dispatch example/hook"}}, "webhooks.url"),
    ({"webhooks": {"url": "https://dispatch.example:99999/hook"}}, "webhooks.url"),
    ({"webhooks": {"routes": [{"name": "gas", "url": "https://ok.example/h"},
                              {"name": "water", "url": "water-team"}]}}, "webhooks.routes.1.url"),
])
def test_an_invalid_webhook_url_is_refused_at_start_naming_the_key(overrides: dict[str, object], key: str,
                                                                  tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(None, {"data_dir": tmp_path, **overrides})


def test_citywatch_run_refuses_an_invalid_webhook_url_before_starting(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "run"],
                                env={"CITYWATCH_WEBHOOKS__URL": "htp://dispatch.example/hook"})
    assert result.exit_code != 0 and "webhooks.url" in result.output and "http://" in result.output
    assert not (tmp_path / "state.db").exists()

