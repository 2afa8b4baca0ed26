"""The operator console's routes: a sub-application mounted at /console on the runner's API.

Who: every page needs a session (sessions.py) made by signing in with an account's token; the API's
bearer-token middleware (citywatch/people/api.py) lets /console through to this app, which checks
the session cookie itself and then asks the same policy (`authorize`) for every view and action. The
bootstrap token is refused here: the console is for named people, each accountable for what they do.

How: pages are rendered on the server (Jinja2 templates, in the session's language: the city's by
default); one static script (static/console.js) runs the countdowns and applies live updates
(sse.py). Every state-changing request is a POST form carrying the session's CSRF token, and is
refused (403, audited) when the token is missing or wrong, or when the browser says it comes from
another origin (Origin, Sec-Fetch-Site). Every response carries the security headers (HEADERS: a
Content-Security-Policy allowing only this origin's script and style, no framing, no sniffing, no
referrer, no caching of pages).

What: actions go through the runner's own methods (acknowledge, resolve, dispatch, silences.add) with
the audit record written in the action's transaction, exactly like the API: stored transitions,
webhooks, audit. Refusals (policy, CSRF) are audited too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from citywatch.console.actions import act, comment, silence
from citywatch.console.core import (
    CONSOLE_KEY,
    GONE_CHECK_S,
    PREFIX,
    STATIC,
    STREAMS_PER_SESSION,
    URL_ACTIONS,
    Console,
    console_of,
    security_headers,
)
from citywatch.console.pages import alert_page, city_map_page, incident_page, queue
from citywatch.console.signin import set_language, signin, signin_form, signout
from citywatch.console.sse import HEARTBEAT_S, Stream, drain, event, final
from citywatch.console.views import (
    Filters,
)
from citywatch.service import SERVICE_KEY

if TYPE_CHECKING:
    from citywatch.service import AlertService

log = logging.getLogger("citywatch.console")


# -- live updates ----------------------------------------------------------------------------------


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events for one page (sse.py). No session: one `signed-out` event, then the end."""
    console = console_of(request)
    session = console.session_of(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "X-Accel-Buffering": "no"})
    if session is None:
        await response.prepare(request)
        await response.write(event("signed-out", {}))
        return response
    hub = console.hub
    if session.streams >= STREAMS_PER_SESSION or len(hub.streams) >= console.max_streams:
        return web.Response(status=429, text="too many live streams", headers={"Retry-After": "10"})
    page = request.query.get("page", "queue")
    if not (page in ("queue", "map") or page.startswith(("alert:", "incident:"))) or len(page) > 200:
        page = "queue"
    stream = Stream(session, page, Filters.parse(request.query))
    since_text = request.headers.get("Last-Event-ID") or request.query.get("since", "")
    try:
        since = int(since_text)
    except ValueError:
        since = hub.seq
    from citywatch.httpserve import TIMEOUT_KEY  # noqa: PLC0415

    timeout = request.get(TIMEOUT_KEY)
    if timeout is not None:
        timeout.reschedule(None)  # a stream lives as long as its session, not api.request_timeout_s
    session.streams += 1
    hub.attach(stream)
    try:
        await response.prepare(request)
        await response.write(b"retry: 1000\n\n")
        last = b""
        for last in hub.replay(stream, since):
            await response.write(last)
        quiet = 0.0
        while not final(last):
            data = await drain(stream, GONE_CHECK_S)
            if data is None:  # quiet: has the page gone (a write would tell only at the next heartbeat)?
                if request.transport is None or request.transport.is_closing():
                    break
                quiet += GONE_CHECK_S
                if quiet < HEARTBEAT_S and console.sessions.alive(session):
                    continue
                signed_in = console.stream_still_signed_in(request, session)  # and the account unchanged
                data = b": keep-alive\n\n" if signed_in else event("signed-out", {})
            quiet = 0.0
            await response.write(data)
            last = data
    except ConnectionResetError:  # the page went away
        pass
    finally:
        hub.detach(stream)
        session.streams -= 1
    return response


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    response = web.Response(body=console_of(request).static[name], content_type=STATIC[name])
    response.headers["Cache-Control"] = "no-cache"
    return response


# -- wiring ----------------------------------------------------------------------------------------


def register(app: web.Application) -> None:
    """Mount the console at /console on the runner's API app (citywatch/api.py make_app), feed it from
    the runner's listeners, and run its live-update pump with the app."""

    runner: AlertService = app[SERVICE_KEY]
    if not runner.settings.console.enabled:
        return
    console = Console(runner)
    sub = web.Application()
    app[CONSOLE_KEY] = console
    sub.on_response_prepare.append(security_headers)
    r = sub.router
    r.add_get("", queue)
    r.add_get("/", queue)
    r.add_get("/signin", signin_form)
    r.add_post("/signin", signin)
    r.add_post("/signout", signout)
    r.add_post("/language", set_language)
    r.add_get("/events", events)
    r.add_get("/map", city_map_page)
    r.add_get("/alerts/{alert_id}", alert_page)
    r.add_post("/alerts/{alert_id}/comments", comment)
    r.add_post("/alerts/{alert_id}/silence", silence)
    r.add_post(f"/alerts/{{alert_id}}/{{action:({'|'.join(URL_ACTIONS)})}}", act)
    r.add_get("/incidents/{incident_id}", incident_page)
    r.add_post("/incidents/{incident_id}/comments", comment)
    r.add_get("/static/{name}", static)
    app.add_subapp(PREFIX, sub)
    tasks: list[asyncio.Task[None]] = []

    async def start(app: web.Application) -> None:  # fed from the runner's listeners while the API serves
        runner.listeners.extend((console.readings.add_output, console.hub.listener))
        tasks.append(asyncio.create_task(console.hub.run(), name="console-live-updates"))

    async def stop(app: web.Application) -> None:  # open streams end, so the server can shut down
        for session in {s.session.id: s.session for s in console.hub.streams}.values():
            console.hub.close_session(session)
        for task in tasks:
            task.cancel()

    async def cleanup(app: web.Application) -> None:
        for listener in (console.readings.add_output, console.hub.listener):
            if listener in runner.listeners:
                runner.listeners.remove(listener)
        console.close()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    app.on_cleanup.append(cleanup)

