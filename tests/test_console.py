"""The operator console over real HTTP (issue 15, item 3): sessions, CSRF and Origin, security headers,
scope in the queue, the map and the live stream, actions through the runner (stored, webhooks, audit),
comments, silences, language; and the console's small parts (sessions, readings buffer, map, filters).

One runner per module (tests/console_city.py: real Mosquitto, real webhook receiver); the browser itself
is tests/test_console_browser.py."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests

from citywatch.console import map as city_map
from citywatch.console.readings import RecentReadings, code_of, main_value
from citywatch.console.sessions import SessionBook, csrf_ok
from citywatch.console.views import Filters
from citywatch.model import Device
from citywatch.people.users import User
from tests.conftest import wait_until
from tests.console_city import City, Client, EventReader, cli, console_of, running_city, signed_in


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[City]:
    with running_city(tmp_path_factory.mktemp("console")) as c:
        c.alarm("gas-n1", "gas-n2", "gas-n3", "gas-x1")
        for device in ("gas-n1", "gas-n2", "gas-n3", "gas-x1"):
            c.alert_of(device)
        yield c


def session_cookie(response: requests.Response) -> str:
    headers = response.raw.headers.getlist("Set-Cookie")
    found = [h for h in headers if h.startswith("citywatch_session=")]
    assert found, headers
    return str(found[0])


# -- signing in --------------------------------------------------------------------------------------


def test_sign_in_with_a_token_makes_a_session_and_a_bad_token_is_refused(city: City) -> None:
    anonymous = Client(city.base)
    first = anonymous.get("/console/alerts/whatever?x=1")
    assert first.status_code == 303 and first.headers["Location"].startswith("/console/signin?next=")

    refused = anonymous.sign_in("cwt.0123456789abcdef.not-the-secret")
    assert refused.status_code == 401 and "citywatch_session" not in refused.headers.get("Set-Cookie", "")
    assert "That token is not valid" in refused.text and anonymous.get("/console").status_code == 303
    garbage = anonymous.sign_in("not a token at all")
    assert garbage.status_code == 401
    token_file = city.settings.data_dir / "api-token"
    boot = anonymous.sign_in(token_file.read_text().strip())
    assert boot.status_code == 403 and "bootstrap token" in boot.text

    no_form_token = anonymous.http.post(city.base + "/console/signin", data={"token": city.tokens["op-city"]},
                                        headers={"Origin": city.base}, allow_redirects=False)
    assert no_form_token.status_code == 403  # the sign-in form's own CSRF token is missing

    client = Client(city.base)
    ok = client.sign_in(city.tokens["op-city"])
    assert ok.status_code == 303 and ok.headers["Location"] == "/console"
    cookie = session_cookie(ok)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http on loopback; see the https test below
    value = cookie.split(";")[0].split("=", 1)[1]
    assert len(value) >= 40 and city.tokens["op-city"].split(".")[2] not in cookie
    page = client.get("/console")
    assert page.status_code == 200 and "op-city" in page.text

    stream = EventReader(client, "/console/events?page=queue")
    out = client.post("/console/signout")
    assert out.status_code == 303 and out.headers["Location"] == "/console/signin"
    stream.until(lambda name, _: name == "signed-out", timeout=3)  # its open pages are told at once
    stream.close()
    assert client.get("/console").status_code == 303
    replay = Client(city.base)
    replay.http.cookies.set("citywatch_session", value)
    assert replay.get("/console").status_code == 303  # the old session id is gone for good
    actions = [(r["action"], r["outcome"]) for r in city.audit("--user", "op-city") if r["action"].startswith("sign")]
    assert ("sign_in", "ok") in actions and ("sign_out", "ok") in actions


def test_an_account_disabled_or_rotated_ends_its_sessions(city: City) -> None:
    for name, change in (("temp-rotated", ["rotate"]), ("temp-disabled", ["disable"])):
        added = cli(city.settings, "users", "add", name, "--role", "operator")
        assert added.exit_code == 0, added.output
        token = added.stdout.strip().splitlines()[-1].strip()
        client = Client(city.base)
        assert client.sign_in(token).status_code == 303 and client.get("/console").status_code == 200
        assert cli(city.settings, "users", *change, name).exit_code == 0
        assert client.get("/console").status_code == 303, name  # ended at its next request
        assert Client(city.base).sign_in(token).status_code == 401
        assert cli(city.settings, "users", "remove", name, "--yes").exit_code == 0


# -- headers, CSRF, origin -----------------------------------------------------------------------------


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)
INLINE_STYLE = re.compile(r"<[^>]+\sstyle\s*=", re.I)


def test_every_page_carries_the_security_headers_and_no_inline_script(city: City) -> None:
    client = signed_in(city, "op-city")
    alert_id = city.alert_of("gas-n1")
    pages = ["/console", "/console/map", f"/console/alerts/{alert_id}", "/console/signin?next=/console"]
    for path in pages:
        page = client.get(path)
        assert page.status_code in (200, 303), path
        h = page.headers
        csp = h["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "form-action 'self'" in csp
        assert h["X-Frame-Options"] == "DENY" and h["X-Content-Type-Options"] == "nosniff"
        assert h["Referrer-Policy"] == "same-origin" and h["Cache-Control"] == "no-store"
        if page.status_code == 200:
            assert not INLINE_SCRIPT.search(page.text), path
            assert not INLINE_HANDLER.search(page.text), path
            assert not INLINE_STYLE.search(page.text), path
            assert "http://" not in page.text.replace(city.base, "").replace("http://www.w3.org", ""), path
    js = client.get("/console/static/console.js")
    assert js.status_code == 200 and js.headers["Content-Type"].startswith("application/javascript")
    assert js.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/console/static/../app.py").status_code == 404
    stream = EventReader(client, "/console/events?page=queue")
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["cache-control"] == "no-store" and "content-security-policy" in stream.headers
    stream.close()


def test_a_post_without_the_csrf_token_or_from_another_origin_is_refused_and_audited(city: City) -> None:
    client = signed_in(city, "op-city")
    alert_id = city.alert_of("gas-n2")
    assert client.post(f"/console/alerts/{alert_id}/ack", csrf=None).status_code == 403
    assert client.post(f"/console/alerts/{alert_id}/ack", csrf="forged-token").status_code == 403
    good = client.csrf()
    evil = client.post(f"/console/alerts/{alert_id}/ack", csrf=good, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403
    cross = client.post(f"/console/alerts/{alert_id}/ack", csrf=good, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    assert city.status(alert_id) == "open"  # none of them did anything
    refused = [r for r in city.audit("--user", "op-city", "--target", f"alert:{alert_id}") if r["outcome"] == "refused"]
    assert len(refused) == 4 and {r["action"] for r in refused} == {"ack"}
    assert sum("CSRF" in r["reason"] for r in refused) == 2 and sum("origin" in r["reason"] for r in refused) == 2

    done = client.post(f"/console/alerts/{alert_id}/ack", csrf=good)
    assert done.status_code == 303 and city.status(alert_id) == "acknowledged"


def test_the_session_cookie_is_secure_behind_an_https_public_url(tmp_path: Path) -> None:
    with running_city(tmp_path, webhooks={"public_url": "https://city.example"}) as c:
        client = Client(c.base)
        form = client.get("/console/signin")
        assert "Secure" in form.headers["Set-Cookie"] and form.headers["Strict-Transport-Security"]
        signin_csrf = form.cookies["citywatch_signin"]  # a Secure cookie: a browser would send it over https only
        ok = client.http.post(c.base + "/console/signin", data={"token": c.tokens["op-city"],
                                                                 "signin_csrf": signin_csrf},
                              headers={"Origin": "https://city.example", "Cookie": f"citywatch_signin={signin_csrf}"},
                              allow_redirects=False)
        assert ok.status_code == 303, ok.text[:300]
        (cookie,) = [h for h in ok.raw.headers.getlist("Set-Cookie") if h.startswith("__Host-citywatch_session=")]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        from_public = client.http.post(c.base + "/console/signin", data={"token": "x"},
                                       headers={"Origin": "https://city.example"}, allow_redirects=False)
        assert from_public.status_code == 403  # its origin is ours, but the form's own token is missing


# -- scope ---------------------------------------------------------------------------------------------


def test_a_district_operator_sees_only_their_district_in_queue_map_pages_and_stream(city: City) -> None:
    nanhu, everyone = signed_in(city, "op-nanhu"), signed_in(city, "op-city")
    x1, n1 = city.alert_of("gas-x1"), city.alert_of("gas-n1")
    queue = nanhu.get("/console").text
    assert f"alert-{n1}" in queue and f"alert-{x1}" not in queue and "gas-x1" not in queue and "Xiuzhou" not in queue
    assert f"alert-{x1}" in everyone.get("/console").text
    city_map = nanhu.get("/console/map").text
    assert 'id="dev-gas-n1"' in city_map and "gas-x" not in city_map and "Xiuzhou" not in city_map
    assert 'id="dev-gas-x1"' in everyone.get("/console/map").text
    refused = nanhu.get(f"/console/alerts/{x1}")
    assert refused.status_code == 403 and "gas-x1" not in refused.text
    (record,) = [r for r in city.audit("--user", "op-nanhu", "--target", f"alert:{x1}") if r["outcome"] == "refused"]
    assert record["action"] == "view_alert" and "district=Xiuzhou" in record["reason"]

    since = re.search(r"since=(\d+)", nanhu.get("/console").text)
    assert since
    mine = EventReader(nanhu, f"/console/events?page=queue&since={since.group(1)}")
    theirs = EventReader(everyone, f"/console/events?page=queue&since={since.group(1)}")
    map_stream = EventReader(nanhu, f"/console/events?page=map&since={since.group(1)}")
    try:
        city.alarm("gas-x2")  # first the other district's alarm, then ours: the stream is in order
        x2 = city.alert_of("gas-x2")
        city.alarm("gas-n4")
        n4 = city.alert_of("gas-n4")
        got = mine.until(lambda name, data: name == "alert" and data["id"] == n4)
        theirs.until(lambda name, data: name == "alert" and data["id"] == x2)
        map_stream.until(lambda name, data: name == "device" and data["id"] == "gas-n4" and data["severity"])
        raw = b"\n".join(mine.raw + map_stream.raw)
        assert x2.encode() not in raw and b"gas-x2" not in raw and b"Xiuzhou" not in raw
        assert all(data.get("id") != x2 for _, data in got)
    finally:
        mine.close()
        theirs.close()
        map_stream.close()


def test_buttons_follow_the_role_and_a_forced_post_is_refused(city: City) -> None:
    field = signed_in(city, "field-li")
    n3 = city.alert_of("gas-n3")
    page = field.get(f"/console/alerts/{n3}")
    assert page.status_code == 200  # within their scope: they may look
    for button in ("act-ack", "act-resolve", "act-assign", "act-silence", "add-comment"):
        assert f'id="{button}"' not in page.text, button
    forced = field.post(f"/console/alerts/{n3}/ack")
    assert forced.status_code == 403 and city.status(n3) == "open"
    assert field.post(f"/console/alerts/{n3}/resolve").status_code == 403
    assert field.post(f"/console/alerts/{n3}/comments", {"body": "let me in"}).status_code == 403
    trail = [(r["action"], r["outcome"]) for r in city.audit("--user", "field-li", "--target", f"alert:{n3}")]
    assert trail == [("ack", "refused"), ("resolve", "refused"), ("comment", "refused")]

    operator = signed_in(city, "op-nanhu")
    own = operator.get(f"/console/alerts/{n3}").text
    for button in ("act-ack", "act-resolve", "act-assign", "act-reject", "act-silence", "add-comment"):
        assert f'id="{button}"' in own, button
    assert 'id="act-close"' not in own and 'id="act-on-site"' not in own  # not in its status

    installer = signed_in(city, "inst-wang")
    assert "Your role does not see alerts" in installer.get("/console").text
    assert installer.get(f"/console/alerts/{n3}").status_code == 403


# -- actions through the runner ---------------------------------------------------------------------


def test_assign_through_the_console_is_stored_sent_and_audited_and_the_field_team_acts(city: City) -> None:
    operator, field = signed_in(city, "op-nanhu"), signed_in(city, "field-li")
    n3 = city.alert_of("gas-n3")
    missing = operator.post(f"/console/alerts/{n3}/assign", {"assignee": "  "})
    assert missing.status_code == 303 and city.status(n3) == "open"
    assert "Not done" in operator.get(f"/console/alerts/{n3}").text  # the refusal is shown once
    done = operator.post(f"/console/alerts/{n3}/assign", {"assignee": "grid team 1"})
    assert done.status_code == 303 and city.status(n3) == "assigned"
    stored = city.db("SELECT id FROM transitions WHERE alert_id = ? AND transition = 'assigned'", n3)
    assert len(stored) == 1
    wait_until(lambda: any(w["transition"] == "assigned" for w in city.webhooks_of(n3)))
    (record,) = [r for r in city.audit("--user", "op-nanhu", "--target", f"alert:{n3}")
                 if r["action"] == "assign" and r["outcome"] == "ok"]
    assert record["after"]["transition_id"] == stored[0][0] and record["after"]["assignee"] == "grid team 1"
    assert record["source"] == "127.0.0.1" and record["user_agent"] == "console-test/1"
    failed = [r for r in city.audit("--user", "op-nanhu", "--target", f"alert:{n3}") if r["outcome"] == "error"]
    assert failed and "assignee" in failed[0]["reason"]

    page = field.get(f"/console/alerts/{n3}").text  # assigned to their team now: on site is theirs
    assert 'id="act-on-site"' in page and 'id="act-rectify"' in page and 'id="act-resolve"' not in page
    assert field.post(f"/console/alerts/{n3}/on-site").status_code == 303 and city.status(n3) == "on_site"
    history = field.get(f"/console/alerts/{n3}").text
    assert "assigned" in history and "on_site" in history and "(UTC+08:00)" in history


def test_comments_are_stored_escaped_and_audited(city: City) -> None:
    operator = signed_in(city, "op-nanhu")
    n1 = city.alert_of("gas-n1")
    text = "valve <b>closed</b> & area cleared\nsecond line"
    assert operator.post(f"/console/alerts/{n1}/comments", {"body": text}).status_code == 303
    page = operator.get(f"/console/alerts/{n1}").text
    assert "valve &lt;b&gt;closed&lt;/b&gt; &amp; area cleared\nsecond line" in page and "<b>closed</b>" not in page
    rows = city.db("SELECT author, role, body FROM comments WHERE target_type = 'alert' AND target_id = ?", n1)
    assert rows == [("op-nanhu", "operator", text)]
    (record,) = [r for r in city.audit("--user", "op-nanhu", "--target", f"alert:{n1}") if r["action"] == "comment"]
    assert record["outcome"] == "ok" and record["after"]["body"] == text
    assert operator.post(f"/console/alerts/{n1}/comments", {"body": "   "}).status_code == 303
    assert len(city.db("SELECT id FROM comments WHERE target_id = ?", n1)) == 1  # an empty one is refused
    incident = city.runner.incidents.members[n1][0].id
    assert operator.post(f"/console/incidents/{incident}/comments", {"body": "one work order"}).status_code == 303
    assert "one work order" in operator.get(f"/console/incidents/{incident}").text


def city_time(ahead_s: float) -> str:
    return (datetime.now(ZoneInfo("Asia/Shanghai")) + timedelta(seconds=ahead_s)).strftime("%Y-%m-%dT%H:%M")


def test_silence_a_device_from_the_alert_page(city: City) -> None:
    operator = signed_in(city, "op-nanhu")
    n2 = city.alert_of("gas-n2")
    refused = operator.post(f"/console/alerts/{n2}/silence", {"scope": "device", "end": city_time(3600),
                                                               "reason": "  "})
    assert refused.status_code == 303 and "Not done" in operator.get(f"/console/alerts/{n2}").text  # no reason
    field = signed_in(city, "field-li")
    assert field.post(f"/console/alerts/{n2}/silence", {"scope": "grid", "end": "2099-01-01T08:00",
                                                         "reason": "x"}).status_code == 403
    later = city_time(3 * 86400)
    grid = operator.post(f"/console/alerts/{n2}/silence", {"scope": "grid", "end": later,
                                                           "reason": "road works, permit 118"})
    assert grid.status_code == 303  # within the operator's district: that grid of Nanhu (no gas alarm held)
    assert any(s.matchers == {"grid": ["G1"], "district": ["Nanhu"]} for s in city.runner.silences.listed())
    end = city_time(7200)  # what a datetime-local field sends: the city's time, no offset
    done = operator.post(f"/console/alerts/{n2}/silence", {"scope": "device", "end": end,
                                                            "reason": "sensor calibration"})
    assert done.status_code == 303
    (silence,) = [s for s in city.runner.silences.listed() if s.matchers.get("device") == ["gas-n2"]]
    assert silence.author == "op-nanhu" and silence.reason == "sensor calibration"
    records = [r for r in city.audit("--user", "op-nanhu") if r["action"] == "silence"]
    assert [r["outcome"] for r in records] == ["error", "ok", "ok"]  # no reason; grid; device
    assert "reason" in records[0]["reason"] and records[2]["target_id"] == silence.id
    assert records[2]["after"]["matchers"] == {"device": ["gas-n2"]}
    assert "silenced" in operator.get(f"/console/alerts/{n2}").text


def test_pages_in_chinese_with_local_times(city: City) -> None:
    operator = signed_in(city, "op-nanhu")
    assert operator.post("/console/language", {"language": "zh-CN", "back": "/console"}).status_code == 303
    queue = operator.get("/console").text
    assert '<html lang="zh-CN">' in queue and "告警" in queue and "(UTC+08:00)" in queue
    n1 = city.alert_of("gas-n1")
    page = operator.get(f"/console/alerts/{n1}").text
    assert "可燃气体" in page  # the alert's message in Chinese (citywatch/alert_text.py)
    assert operator.post("/console/language", {"language": "xx"}).status_code == 303
    assert '<html lang="zh-CN">' in operator.get("/console").text  # an unknown language changes nothing


def test_the_console_path_does_not_open_the_api(city: City) -> None:
    """The API's bearer check is skipped for /console paths only; a path that merely starts with /console
    and climbs out of it is routed into the console (404), never to the API unauthenticated."""
    host, port = city.base.removeprefix("http://").split(":")
    for path in ("/console/../alerts", "/console/%2e%2e/alerts", "/console/../stats", "/consolex/../alerts"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status = int(answer.split(b" ", 2)[1])
        assert status in (401, 404) and b"gas-" not in answer, (path, answer[:200])
    assert Client(city.base).get("/alerts").status_code == 401


def test_the_alert_page_charts_recent_readings(city: City) -> None:
    operator = signed_in(city, "op-nanhu")
    for lel in (40.0, 45.0, 55.0):
        city.alarm("gas-n5", lel=lel)
    n5 = city.alert_of("gas-n5")
    wait_until(lambda: len(console_of(city).readings.series("gas-n5")) >= 3)
    page = operator.get(f"/console/alerts/{n5}").text
    assert '<svg class="chart"' in page and "<polyline" in page and 'class="threshold"' in page
    city.lock("lock-n1", "unlock_ok")
    city.lock("lock-n1", "forced_open")
    door = operator.get(f"/console/alerts/{city.alert_of('lock-n1')}").text
    assert re.search(r'id="lock-events".*unlock_ok.*forced_open', door, re.S) and '<svg class="chart"' not in door


# -- the small parts -----------------------------------------------------------------------------------


def test_sessions_expire_when_idle_and_at_their_maximum_age_and_are_bounded() -> None:
    now = [1000.0]
    book = SessionBook(idle_s=60, max_age_s=300, max_sessions=3, clock=lambda: now[0])
    user = User(name="a", role="operator")
    s = book.create(user, "en")
    assert book.get(s.id) is s and csrf_ok(s, s.csrf) and not csrf_ok(s, "") and not csrf_ok(s, s.csrf + "x")
    now[0] += 59
    assert book.get(s.id) is s  # used: idle time starts over
    now[0] += 61
    assert book.get(s.id) is None and book.ended["expired"] == 1
    s = book.create(user, "en")
    for _ in range(6):
        now[0] += 50
        assert book.get(s.id) is s
    now[0] += 50
    assert book.get(s.id) is None  # 350 s after sign-in, used all along: the maximum age ends it
    ids = [book.create(user, "en").id for _ in range(4)]
    assert book.get(ids[0]) is None and all(book.get(i) for i in ids[1:]) and book.ended["evicted"] == 1
    assert len({book.create(user, "en").csrf for _ in range(3)}) == 3


def test_readings_buffer_is_bounded_keeps_alerting_devices_and_is_cheap() -> None:
    buffer = RecentReadings(per_device=5, devices=3)
    for i in range(10):
        buffer.add("a", float(i), float(i))
    assert [v for _, v in buffer.series("a")] == [5.0, 6.0, 7.0, 8.0, 9.0]
    buffer.add("b", 0.0, 1.0)
    buffer.add("c", 0.0, 1.0)
    buffer.add("a", 10.0, 10.0)  # a reported last: b is now the least recent
    buffer.add("d", 0.0, 1.0)
    assert len(buffer) == 3 and buffer.series("b") == [] and buffer.series("a") and buffer.series("d")
    buffer.alert("c", "al_1", finished=False)  # c has an open alert: other devices' traffic never pushes it out
    for i in range(50):
        buffer.add(f"other-{i}", 0.0, 1.0)
    buffer.add("c", 1.0, 2.0)
    assert buffer.series("c") == [(0.0, 1.0), (1.0, 2.0)] and buffer.series("a") == []
    buffer.alert("c", "al_1", finished=True)  # finished: c is an ordinary device again (the most recent)
    assert buffer.series("c") and len(buffer) == 3
    buffer.add("e", 0.0, 1.0)
    buffer.add("f", 0.0, 1.0)
    buffer.add("g", 0.0, 1.0)
    assert buffer.series("c") == []
    assert main_value("parking", {"occupied": True}) == 1.0 and main_value("gas", {"co_ppm": 3}) is None
    assert code_of("lock", main_value("lock", {"event": "tamper"}) or -1) == "tamper"

    big = RecentReadings(200, 5000)  # a city of 20,000 devices: every reading is a device the LRU forgot
    readings = [(f"dev-{i % 20000}", "gas", float(i), {"lel_pct": 1.0}) for i in range(200_000)]
    start = time.perf_counter()
    big.add_all(readings)
    per_reading_us = (time.perf_counter() - start) / len(readings) * 1e6
    assert len(big) == 5000 and per_reading_us < 15.0, per_reading_us  # ~2 us here: not O(devices)
    print(f"readings buffer: {per_reading_us:.2f} us per reading (LRU churning)")


def test_map_projects_devices_outlines_districts_and_samples_quiet_ones() -> None:
    devices = [Device(id=f"d{i}", kind="gas", district="A" if i < 50 else "B", lat=30 + (i % 10) * 0.01,
                      lon=120 + (i // 10) * 0.01) for i in range(100)]
    svg = str(city_map.render(devices, {"d7": "critical"}, "map", max_points=20))
    assert svg.count('class="district"') == 2 and svg.count("<circle") == 21
    assert 'id="dev-d7" class="dev sev-critical"' in svg and 'data-kx="' in svg
    assert "no coords" in str(city_map.render([Device(id="x", kind="gas")], {}, "map", empty_text="no coords"))
    assert city_map.hull([(0, 0), (1, 0), (1, 1), (0, 1), (0.5, 0.5)]) == [(0, 0), (1, 0), (1, 1), (0, 1)]


def test_filters_accept_known_codes_only() -> None:
    f = Filters.parse({"kind": "gas", "severity": "nope", "status": "closed", "district": "Nanhu\x1b", "grid": "G1"})
    assert f == Filters(kind="gas", grid="G1") and f.query() == {"kind": "gas", "grid": "G1"}
