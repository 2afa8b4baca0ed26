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
import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import threading
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import msgspec
from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined, Template

from citywatch.console import chart
from citywatch.console import map as city_map
from citywatch.console.readings import UNITS, RecentReadings, lock_event
from citywatch.console.sessions import COOKIE, SECURE_COOKIE, Session, SessionBook, csrf_ok
from citywatch.console.sse import HEARTBEAT_S, Hub, Stream, drain, event, final
from citywatch.console.views import (
    Filters,
    alert_actions,
    alert_row,
    choices,
    incident_deadline,
    incident_row,
    may_view_alert,
    may_view_device,
    may_view_incident,
    sort_rows,
)
from citywatch.detectors.lifecycle import AlertNotFound, IllegalTransition
from citywatch.errors import AlertError
from citywatch.i18n import LANGUAGES, Translator, translator
from citywatch.labels import label
from citywatch.loop import comments
from citywatch.loop.dispatch import Refused, parse_detail
from citywatch.loop.silences import SilenceRefused, SilenceRequest
from citywatch.model import TERMINAL_STATUSES, Alert, Incident, Transition
from citywatch.people import api as access
from citywatch.people import audit
from citywatch.people.audit import Entry
from citywatch.people.policy import alert_target, authorize, incident_target, silence_target
from citywatch.people.users import User
from citywatch.sinks.store import store_path

if TYPE_CHECKING:
    from citywatch.streams.embedded import EmbeddedRunner

log = logging.getLogger("citywatch.console")

PREFIX = "/console"
QUEUE_LIMIT = 300  # rows per table; the rest are counted ("narrow the filters")
STREAMS_PER_SESSION = 4
GONE_CHECK_S = 1.0  # how often a quiet event stream checks that its page is still connected
SIGNIN_COOKIE = "citywatch_signin"  # the sign-in form's own CSRF token (double submit: no session yet)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make browsers send `Origin: null` on our own forms
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
# The console's action URLs -> the policy's action codes (and the engine's dispatch actions).
URL_ACTIONS = {"ack": "ack", "assign": "assign", "on-site": "on_site", "rectify": "rectify", "reject": "reject",
               "resolve": "resolve", "close": "close"}
DISPATCHED = {"assign": "assigned", "on_site": "on_site", "rectify": "rectified", "reject": "rejected",
              "close": "closed"}
STATIC = {"console.js": "application/javascript", "console.css": "text/css", "favicon.svg": "image/svg+xml"}
_decode_transition = msgspec.json.Decoder(Transition).decode


class Reader:
    """Read-only lookups for pages (an alert's transitions, comments), off the event loop on their own
    connection (as citywatch/sinks/alertreader.py)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _rows(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._conn is None:
                self._conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5,
                                             check_same_thread=False)
            return self._conn.execute(sql, args).fetchall()

    def transitions(self, alert_id: str, limit: int = 500) -> list[Transition]:
        rows = self._rows("SELECT body FROM transitions WHERE alert_id = ? ORDER BY at DESC, id DESC LIMIT ?",
                          (alert_id, limit))
        return [_decode_transition(body) for (body,) in reversed(rows)]

    def comments(self, target_type: str, target_id: str) -> list[comments.Comment]:
        rows = self._rows("SELECT id, target_type, target_id, at, author, role, body FROM comments"
                          " WHERE target_type = ? AND target_id = ? ORDER BY at DESC, id DESC LIMIT 500",
                          (target_type, target_id))
        return [comments.Comment(*row) for row in reversed(rows)]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _static_bytes(name: str) -> bytes:
    return resources.files("citywatch.console").joinpath("static").joinpath(name).read_bytes()


class Console:
    """The console's state: templates, sessions, live updates, recent readings; renders rows for the hub."""

    def __init__(self, runner: EmbeddedRunner) -> None:
        self.runner = runner
        self.settings = runner.settings
        c = runner.settings.console
        self.timezone = runner.settings.timezone
        self.language = runner.settings.language
        self.public_url = runner.settings.webhooks.public_url
        self.secure = self.public_url.lower().startswith("https://")
        self.env = Environment(loader=PackageLoader("citywatch.console", "templates"), autoescape=True,
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.sessions = SessionBook(c.session_idle_min * 60, c.session_max_h * 3600, c.max_sessions)
        self.readings = RecentReadings(c.readings_per_device, c.readings_devices)
        for alert in runner.engine.by_id.values():  # devices with open alerts keep their readings
            self.readings.alert(alert.device_id, alert.id, False)
        self.hub = Hub(self, list(runner.engine.by_id.values()))
        self.reader = Reader(store_path(runner.settings.data_dir))
        self.max_streams = c.streams
        self.map_points = c.map_points
        self.static = {name: _static_bytes(name) for name in STATIC}
        self.static_version = hashlib.sha256(b"".join(self.static.values())).hexdigest()[:12]
        self._rows: dict[str, Any] = {}
        comments.ensure_schema(runner.store.conn)

    # -- rendering --------------------------------------------------------------------------------

    def t(self, language: str) -> Translator:
        return translator(language)

    def context(self, language: str) -> dict[str, Any]:
        t = self.t(language)
        return {"_": t.gettext, "gettext": t.gettext, "ngettext": t.ngettext, "pgettext": t.pgettext,
                "label": lambda context, code: label(t, context, code), "lang": language,
                "local_time": lambda ts: t.local_time(ts, self.timezone),
                "static": lambda name: f"{PREFIX}/static/{name}?v={self.static_version}", "prefix": PREFIX}

    def rows_module(self, language: str) -> Any:
        """The row macros (templates/_rows.html) bound to a language: the page and the hub use the same."""
        module = self._rows.get(language)
        if module is None:
            template: Template = self.env.get_template("_rows.html")
            module = self._rows[language] = template.make_module(self.context(language))
        return module

    def alert_row_html(self, alert: Alert, language: str) -> str:
        silenced = self._silenced([alert]).get(alert.id, False)
        row = alert_row(self.t(language), self.timezone, alert, silenced)
        return str(self.rows_module(language).alert_row(row))

    def incident_row_html(self, incident: Incident, language: str) -> str:
        row = incident_row(self.t(language), self.timezone, incident, self.incident_deadline(incident))
        return str(self.rows_module(language).incident_row(row))

    def incident_deadline(self, incident: Incident) -> float | None:
        return incident_deadline(incident, self.runner.engine.by_id)

    def incident_of(self, alert_id: str) -> Incident | None:
        found = self.runner.incidents.members.get(alert_id)
        return found[0] if found is not None else None

    def device_marker(self, device_id: str) -> dict[str, Any] | None:
        device = self.runner.devices.get(device_id)
        if device is None:
            return None
        where = " ".join(v for v in (device.district, device.grid, device.address) if v)
        return {"id": device.id, "lat": device.lat, "lon": device.lon, "title": f"{device.id} ({device.kind}) {where}"}

    def _silenced(self, alerts: list[Alert]) -> dict[str, bool]:
        from citywatch.loop.silences_api import mark  # noqa: PLC0415 (it imports the API's modules)

        runner = self.runner
        in_force = runner.silences.in_force()
        if not in_force:
            return {}
        return {body["id"]: bool(body["silenced"]) for body in mark(alerts, in_force, runner.clock(),
                                                                    runner.engine.safety)}

    def page(self, request: web.Request, session: Session | None, template: str, status: int = 200,
             **values: Any) -> web.Response:
        language = session.language if session is not None else self.language
        ctx = self.context(language)
        flashes = list(session.flash) if session is not None else []
        if session is not None:
            session.flash.clear()
        ctx.update(session=session, user=session.user if session is not None else None,
                   csrf=session.csrf if session is not None else "", flashes=flashes, languages=LANGUAGES,
                   now=self.runner.clock(), timezone=self.timezone, seq=self.hub.seq, events_url="", page="",
                   back_path=_safe_next(request.path_qs),
                   scope_text=_scope_text(session.user) if session is not None else "")
        ctx.update(values)
        html = self.env.get_template(template).render(ctx)
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    # -- sessions ---------------------------------------------------------------------------------

    def cookie_name(self, request: web.Request) -> str:
        return SECURE_COOKIE if self.is_secure(request) else COOKIE

    def is_secure(self, request: web.Request) -> bool:
        return self.secure or request.secure

    def session_of(self, request: web.Request) -> Session | None:
        """The request's live session, its account re-read: a disabled, removed or rotated account
        ends it (and its streams) at once; a changed role or scope applies at once."""
        session = self.sessions.get(request.cookies.get(self.cookie_name(request)))
        if session is None:
            return None
        users = request.config_dict[access.ACCESS_KEY].users
        current = users.get(session.user.name)
        if current is None or current.disabled or current.token_id != session.token_id:
            self.end(session, "account_changed")
            return None
        session.user = current
        request[access.USER_KEY] = current
        request.config_dict[access.ACCESS_KEY].activity.touch(current.name, self.runner.clock())
        return session

    def end(self, session: Session, why: str) -> None:
        self.sessions.end(session.id, why)
        self.hub.close_session(session)

    def same_origin(self, request: web.Request) -> bool:
        """The browser says this POST comes from our own pages (Fetch Metadata, then Origin). A client
        sending neither (not a browser) is judged by the CSRF token alone."""
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        public = urlsplit(self.public_url)
        allowed = {f"{request.scheme}://{request.host}", f"{public.scheme}://{public.netloc}"}
        return origin in allowed

    def audit_refusal(self, request: web.Request, user: User, action: str, target_type: str, target_id: str,
                      reason: str) -> None:
        try:
            audit.record(self.runner.store.conn, Entry(access.actor_of(request, user), action, target_type, target_id,
                                                       outcome="refused", reason=reason, at=self.runner.clock()))
        except sqlite3.Error as exc:
            log.error("audit: cannot record a refused %s by %s: %s", action, user.name, exc)

    def audit_error(self, entry: Entry, reason: str) -> None:
        try:
            audit.record(self.runner.store.conn, replace(entry, outcome="error", reason=reason))
        except sqlite3.Error as exc:
            log.error("audit: cannot record a failed %s by %s: %s", entry.action, entry.actor.user, exc)

    def close(self) -> None:
        self.reader.close()


CONSOLE_KEY = web.AppKey("console", Console)


def _scope_text(user: User) -> str:
    return " ".join(f"{k}={'|'.join(v)}" for k, v in user.scope.items())


def _console(request: web.Request) -> Console:
    return request.config_dict[CONSOLE_KEY]


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: a console page of ours, nothing else (no open redirect)."""
    if value and value.startswith(PREFIX) and not value.startswith("//") and "\\" not in value \
            and value.isprintable() and len(value) < 500:
        return value
    return PREFIX


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _signin_redirect(request: web.Request) -> web.Response:
    return _redirect(f"{PREFIX}/signin?{urlencode({'next': request.path_qs})}")


async def _signed_in(request: web.Request) -> tuple[Console, Session] | web.Response:
    console = _console(request)
    session = console.session_of(request)
    if session is None:
        return _signin_redirect(request)
    return console, session


async def _posted(request: web.Request, action: str, target_type: str = "", target_id: str = ""
                  ) -> tuple[Console, Session, Any] | web.Response:
    """A state-changing request: signed in, from our own origin, with this session's CSRF token."""
    console = _console(request)
    session = console.session_of(request)
    if session is None:
        return console.page(request, None, "error.html", 401, title="401", message_id="signed_out")
    form = await request.post()
    given = form.get("csrf") if form else None
    if not console.same_origin(request) or not csrf_ok(session, given if isinstance(given, str) else None):
        why = "request from another origin" if not console.same_origin(request) else "CSRF token missing or wrong"
        log.warning("console: refused a %s by %s from %s: %s", action, session.user.name, request.remote, why)
        console.audit_refusal(request, session.user, action, target_type, target_id, why)
        return console.page(request, session, "error.html", 403, title="403", message_id="csrf")
    return console, session, form


def _forbidden(request: web.Request, console: Console, session: Session, action: str, target_type: str,
               target_id: str, reason: str) -> web.Response:
    console.audit_refusal(request, session.user, action, target_type, target_id, reason)
    return console.page(request, session, "error.html", 403, title="403", message_id="forbidden")


# -- security headers ------------------------------------------------------------------------------


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every console response, pages and streams alike (on_response_prepare)."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if "/static/" not in request.path:
        response.headers["Cache-Control"] = "no-store"
    if CONSOLE_KEY in request.config_dict and _console(request).is_secure(request):
        response.headers["Strict-Transport-Security"] = "max-age=31536000"


# -- signing in and out ----------------------------------------------------------------------------


async def signin_form(request: web.Request) -> web.Response:
    console = _console(request)
    if console.session_of(request) is not None:
        return _redirect(_safe_next(request.query.get("next")))
    return _signin_page(request, console, 200)


def _signin_page(request: web.Request, console: Console, status: int, error: str = "",
                 retry_after: int | None = None) -> web.Response:
    token = secrets.token_urlsafe(24)
    response = console.page(request, None, "signin.html", status, signin_csrf=token, error=error,
                            retry_after=retry_after, next=_safe_next(request.query.get("next")))
    response.set_cookie(SIGNIN_COOKIE, token, httponly=True, samesite="Strict", secure=console.is_secure(request),
                        path=PREFIX, max_age=3600)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


async def signin(request: web.Request) -> web.Response:
    """Sign in with an account's token: a new session, its id in an HttpOnly, SameSite=Strict cookie."""
    console = _console(request)
    guard = request.config_dict[access.ACCESS_KEY]
    form = await request.post()
    given_csrf = str(form.get("signin_csrf", ""))
    cookie_csrf = request.cookies.get(SIGNIN_COOKIE, "")
    if not console.same_origin(request) or not cookie_csrf or not hmac.compare_digest(given_csrf.encode(),
                                                                                      cookie_csrf.encode()):
        return _signin_page(request, console, 403, "csrf")
    address = request.remote or "unknown"
    wait = guard.throttle.retry_after(address)
    if wait is not None:
        return _signin_page(request, console, 429, "throttled", retry_after=wait)
    token = str(form.get("token", "")).strip()
    if guard.bootstrap is not None and hmac.compare_digest(token.encode("utf-8", "replace"), guard.bootstrap):
        return _signin_page(request, console, 403, "bootstrap")
    result = guard.users.authenticate(token) if token else None
    user = result.user if result is not None else None
    if user is None:
        guard.throttle.failed(address)
        named = result.named if result is not None else None
        log.warning("console: refused a sign-in from %s: %s", address, result.reason if result else "no token")
        if named is not None:  # a known account's token (disabled, or a wrong secret): audited
            console.audit_refusal(request, named, "sign_in", "user", named.name, result.reason if result else "")
        return _signin_page(request, console, 401, "bad_token")
    session = console.sessions.create(user, console.language)
    try:
        audit.record(console.runner.store.conn, Entry(access.actor_of(request, user), "sign_in", "user", user.name,
                                                      at=console.runner.clock()))
    except sqlite3.Error as exc:
        log.error("audit: cannot record the sign-in of %s: %s", user.name, exc)
    response = _redirect(_safe_next(str(form.get("next", "")) or None))
    response.set_cookie(console.cookie_name(request), session.id, httponly=True, samesite="Strict",
                        secure=console.is_secure(request), path="/")
    response.del_cookie(SIGNIN_COOKIE, path=PREFIX)
    return response


async def signout(request: web.Request) -> web.Response:
    posted = await _posted(request, "sign_out", "user")
    if isinstance(posted, web.Response):
        return posted
    console, session, _ = posted
    console.end(session, "signed_out")
    try:
        audit.record(console.runner.store.conn, Entry(access.actor_of(request, session.user), "sign_out", "user",
                                                      session.user.name, at=console.runner.clock()))
    except sqlite3.Error as exc:
        log.error("audit: cannot record the sign-out of %s: %s", session.user.name, exc)
    response = _redirect(f"{PREFIX}/signin")
    response.del_cookie(console.cookie_name(request), path="/")
    return response


async def set_language(request: web.Request) -> web.Response:
    posted = await _posted(request, "set_language")
    if isinstance(posted, web.Response):
        return posted
    _, session, form = posted
    wanted = str(form.get("language", ""))
    if wanted in LANGUAGES:
        session.language = wanted
    return _redirect(_safe_next(str(form.get("back", "")) or None))


# -- pages -----------------------------------------------------------------------------------------


async def queue(request: web.Request) -> web.Response:
    """Open alerts and incidents the user may see, by deadline, with the filters."""
    signed = await _signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    console, session = signed
    user, runner, t = session.user, console.runner, console.t(session.language)
    filters = Filters.parse(request.query)
    seen = [a for a in runner.engine.by_id.values() if may_view_alert(user, a)]
    shown = [a for a in seen if filters.match_alert(a)]
    silenced = console._silenced(shown)
    alert_rows = sort_rows([alert_row(t, console.timezone, a, silenced.get(a.id, False)) for a in shown])
    incidents = [i for i in runner.incidents.by_id.values()
                 if i.status != "closed" and may_view_incident(user, i) and filters.match_incident(i)]
    incident_rows = sort_rows([incident_row(t, console.timezone, i, console.incident_deadline(i)) for i in incidents])
    menus = choices(seen)
    for name, value in filters.query().items():  # a chosen value stays in its menu
        if value not in menus[name]:
            menus[name] = [*menus[name], value]
    events = f"{PREFIX}/events?{urlencode({**filters.query(), 'page': 'queue', 'since': console.hub.seq})}"
    return console.page(request, session, "queue.html", page="queue", filters=filters, menus=menus,
                        alert_rows=alert_rows[:QUEUE_LIMIT], alert_more=max(0, len(alert_rows) - QUEUE_LIMIT),
                        incident_rows=incident_rows[:QUEUE_LIMIT],
                        incident_more=max(0, len(incident_rows) - QUEUE_LIMIT),
                        rows=console.rows_module(session.language), limit=QUEUE_LIMIT, events_url=events,
                        may_view_alerts=access.permitted(user, "view_alert"))


async def city_map_page(request: web.Request) -> web.Response:
    signed = await _signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    console, session = signed
    user, runner, t = session.user, console.runner, console.t(session.language)
    alerting: dict[str, list[str]] = {}
    for alert in runner.engine.by_id.values():
        if may_view_alert(user, alert):
            alerting.setdefault(alert.device_id, []).append(alert.severity)
    everything = runner.devices.snapshot()
    devices = await asyncio.to_thread(_visible_devices, user, everything, set(alerting))
    worst = {device_id: city_map.worst(sev) for device_id, sev in alerting.items()}
    svg = city_map.render(devices, worst, t.gettext("City map"), console.map_points,
                          t.gettext("No device you may see has coordinates."))
    events = f"{PREFIX}/events?{urlencode({'page': 'map', 'since': console.hub.seq})}"
    return console.page(request, session, "map.html", page="map", svg=svg, events_url=events, devices=len(devices),
                        alerting=sum(1 for d in devices if d.id in worst))


def _visible_devices(user: User, devices: list[Any], alerting: set[str]) -> list[Any]:
    """Devices the user may see (view_device), and those of alerts they see (off the loop: many)."""
    return [d for d in devices if d.id in alerting or may_view_device(user, d)]


async def _find_alert(console: Console, request: web.Request, alert_id: str) -> Alert | None:
    alert = console.runner.engine.by_id.get(alert_id)
    if alert is None:
        from citywatch.api import READER_KEY  # noqa: PLC0415 (citywatch.api registers this module)

        alert = await asyncio.to_thread(request.config_dict[READER_KEY].alert, alert_id)
    return alert


async def alert_page(request: web.Request) -> web.Response:
    signed = await _signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    console, session = signed
    alert_id = request.match_info["alert_id"]
    alert = await _find_alert(console, request, alert_id)
    if alert is None:
        return console.page(request, session, "error.html", 404, title="404", message_id="no_alert")
    user = session.user
    decision = authorize(user, "view_alert", alert_target(alert))
    if not decision:
        return _forbidden(request, console, session, "view_alert", "alert", alert_id, decision.reason)
    t = console.t(session.language)
    history = await asyncio.to_thread(console.reader.transitions, alert_id)
    notes = await asyncio.to_thread(console.reader.comments, "alert", alert_id)
    device = console.runner.devices.get(alert.device_id)
    points = console.readings.series(alert.device_id)
    numeric = [] if alert.kind == "lock" else points
    events_list = [(t.local_time(ts, console.timezone, seconds=True), lock_event(v))
                   for ts, v in points][-20:] if alert.kind == "lock" else []
    svg = None
    if numeric:
        svg = chart.render(numeric, console.timezone, t.gettext("Recent readings of {device}", device=alert.device_id),
                           UNITS.get(alert.kind, ""), alert.threshold, step=alert.kind == "parking")
    silenced = console._silenced([alert]).get(alert.id, False)
    incident = console.incident_of(alert_id)
    target = alert_target(alert)
    events = f"{PREFIX}/events?{urlencode({'page': f'alert:{alert_id}', 'since': console.hub.seq})}"
    return console.page(
        request, session, "alert.html", page="alert", alert=alert, row=alert_row(t, console.timezone, alert, silenced),
        history=history, comments=notes, device=device, chart=svg, lock_events=events_list,
        actions=alert_actions(user, alert), incident=incident,
        may_comment=bool(authorize(user, "comment", target)),
        may_silence=alert.status not in TERMINAL_STATUSES and _may_silence(console, user, alert),
        events_url=events, finished=alert.status in TERMINAL_STATUSES)


def _silence_matchers(alert: Alert, scope: str) -> dict[str, list[str]] | None:
    if scope == "device":
        return {"device": [alert.device_id]}
    place = alert.device or {}
    grid, district = str(place.get("grid") or ""), str(place.get("district") or "")
    if scope != "grid" or not grid:
        return None
    return {"grid": [grid], "district": [district]} if district else {"grid": [grid]}  # that grid of this district


def _may_silence(console: Console, user: User, alert: Alert) -> bool:
    matchers = _silence_matchers(alert, "device")
    assert matchers is not None
    return bool(authorize(user, "silence", silence_target(matchers, "", [console.runner.devices.get(alert.device_id)])))


async def incident_page(request: web.Request) -> web.Response:
    signed = await _signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    console, session = signed
    incident_id = request.match_info["incident_id"]
    incident = console.runner.incidents.get(incident_id)
    if incident is None:
        from citywatch.loop.incidents_api import READER_KEY  # noqa: PLC0415

        incident = await asyncio.to_thread(request.config_dict[READER_KEY].incident, incident_id)
    if incident is None:
        return console.page(request, session, "error.html", 404, title="404", message_id="no_incident")
    user = session.user
    decision = authorize(user, "view_incident", incident_target(incident))
    if not decision:
        return _forbidden(request, console, session, "view_incident", "incident", incident_id, decision.reason)
    t = console.t(session.language)
    members = []
    for m in incident.members:
        alert = console.runner.engine.by_id.get(m.alert_id)
        members.append({"id": m.alert_id, "device_id": m.device_id, "rule_label": label(t, "rule", m.rule),
                        "severity": m.severity, "severity_label": label(t, "severity", m.severity),
                        "status_label": label(t, "alert status", m.status),
                        "opened": t.local_time(m.joined_at, console.timezone),
                        "place": " ".join(str((m.device or {}).get(k) or "") for k in ("district", "grid", "address")),
                        "visible": alert is None or may_view_alert(user, alert)})
    notes = await asyncio.to_thread(console.reader.comments, "incident", incident_id)
    events = f"{PREFIX}/events?{urlencode({'page': f'incident:{incident_id}', 'since': console.hub.seq})}"
    return console.page(request, session, "incident.html", page="incident", incident=incident,
                        row=incident_row(t, console.timezone, incident, console.incident_deadline(incident)),
                        members=members, comments=notes, events_url=events,
                        may_comment=bool(authorize(user, "comment", incident_target(incident))))


# -- actions ---------------------------------------------------------------------------------------


def _after(out: Any) -> Any:
    """The alert's state after the action's transition (the audit's `after`, as the API records it)."""
    transitions = getattr(out, "transitions", None)
    if not transitions:
        return None
    last = transitions[-1]
    return {**access.alert_state(last.alert), "transition": last.transition, "transition_id": last.id}


async def act(request: web.Request) -> web.Response:
    """acknowledge, assign, on-site, rectify, reject, resolve, close: through the runner, audited."""
    alert_id = request.match_info["alert_id"]
    action = URL_ACTIONS[request.match_info["action"]]
    posted = await _posted(request, action, "alert", alert_id)
    if isinstance(posted, web.Response):
        return posted
    console, session, form = posted
    user, runner = session.user, console.runner
    back = f"{PREFIX}/alerts/{alert_id}"
    alert = await _find_alert(console, request, alert_id)
    if alert is None:
        return console.page(request, session, "error.html", 404, title="404", message_id="no_alert")
    decision = authorize(user, action, alert_target(alert))
    if not decision:
        return _forbidden(request, console, session, action, "alert", alert_id, decision.reason)
    t = console.t(session.language)
    entry = Entry(access.actor_of(request, user), action, "alert", alert_id, access.alert_state(alert),
                  at=runner.clock())
    hook = audit.hook(entry, _after)
    try:
        if action in DISPATCHED:
            body = json.dumps({"assignee": str(form.get("assignee", "")), "note": str(form.get("note", "")),
                               "reason": str(form.get("reason", "")),
                               "evidence": [line.strip() for line in str(form.get("evidence", "")).splitlines()
                                            if line.strip()]}).encode()
            detail = parse_detail(DISPATCHED[action], body)
            runner.dispatch(alert_id, DISPATCHED[action], user.name, assignee=detail.assignee, note=detail.note,
                            evidence=detail.evidence, reason=detail.reason, also=hook)
        elif action == "ack":
            runner.acknowledge(alert_id, user.name, also=hook)
        else:
            runner.resolve(alert_id, user.name, also=hook)
    except Refused as exc:
        console.audit_error(entry, f"{exc} (HTTP {exc.status})")
        session.flash.append(("error", t.gettext("Not done: {reason}", reason=str(exc))))
        return _redirect(back)
    except (AlertNotFound, IllegalTransition, AlertError) as exc:
        status = 503 if type(exc) is AlertError else 409
        console.audit_error(entry, f"{exc} (HTTP {status})")
        session.flash.append(("error", t.gettext("Not done: {reason}", reason=str(exc))))
        return _redirect(back)
    session.flash.append(("ok", t.gettext("Done: {action}", action=_action_label(t, action))))
    return _redirect(back)


def _action_label(t: Translator, action: str) -> str:
    return {"ack": t.gettext("Acknowledge"), "assign": t.gettext("Assign"), "on_site": t.gettext("On site"),
            "rectify": t.gettext("Rectified"), "reject": t.gettext("Reject"), "resolve": t.gettext("Resolve"),
            "close": t.gettext("Confirm and close")}[action]


async def comment(request: web.Request) -> web.Response:
    kind = "incident" if "incident_id" in request.match_info else "alert"
    target_id = request.match_info[f"{kind}_id"]
    posted = await _posted(request, "comment", kind, target_id)
    if isinstance(posted, web.Response):
        return posted
    console, session, form = posted
    back = f"{PREFIX}/{kind}s/{target_id}"
    if kind == "alert":
        alert = await _find_alert(console, request, target_id)
        target = alert_target(alert) if alert is not None else None
    else:
        incident = console.runner.incidents.get(target_id)
        if incident is None:
            from citywatch.loop.incidents_api import READER_KEY  # noqa: PLC0415

            incident = await asyncio.to_thread(request.config_dict[READER_KEY].incident, target_id)
        target = incident_target(incident) if incident is not None else None
    if target is None:
        return console.page(request, session, "error.html", 404, title="404", message_id=f"no_{kind}")
    decision = authorize(session.user, "comment", target)
    if not decision:
        return _forbidden(request, console, session, "comment", kind, target_id, decision.reason)
    t = console.t(session.language)
    entry = Entry(access.actor_of(request, session.user), "comment", kind, target_id)
    try:
        comments.add(console.runner.store.conn, kind, target_id, str(form.get("body", "")), entry,
                     console.runner.clock)
    except comments.CommentRefused as exc:
        session.flash.append(("error", t.gettext("Not done: {reason}", reason=str(exc))))
    except sqlite3.OperationalError as exc:
        session.flash.append(("error", t.gettext("Not done: {reason}", reason=str(exc))))
    else:
        session.flash.append(("ok", t.gettext("Comment added")))
    return _redirect(back)


async def silence(request: web.Request) -> web.Response:
    """Silence the alert's device or grid from now until `end` (local time), with a reason."""
    alert_id = request.match_info["alert_id"]
    posted = await _posted(request, "silence", "silence", "")
    if isinstance(posted, web.Response):
        return posted
    console, session, form = posted
    runner, user = console.runner, session.user
    back = f"{PREFIX}/alerts/{alert_id}"
    alert = await _find_alert(console, request, alert_id)
    if alert is None:
        return console.page(request, session, "error.html", 404, title="404", message_id="no_alert")
    t = console.t(session.language)
    matchers = _silence_matchers(alert, str(form.get("scope", "")))
    if matchers is None:
        why = t.gettext("choose the device or the grid")
        session.flash.append(("error", t.gettext("Not done: {reason}", reason=why)))
        return _redirect(back)
    target = silence_target(matchers, "", [runner.devices.get(d) for d in matchers.get("device", [])])
    decision = authorize(user, "silence", target)
    if not decision:
        return _forbidden(request, console, session, "silence", "silence", "", decision.reason)
    wanted = SilenceRequest(device=matchers.get("device"), grid=matchers.get("grid"),  # what was authorised
                            district=matchers.get("district"), end=str(form.get("end", "")).strip() or None,
                            reason=str(form.get("reason", "")), by=user.name)
    entry = Entry(access.actor_of(request, user), "silence", "silence", "", at=runner.clock())
    try:
        made = runner.silences.add(wanted, local=True, also=audit.hook(entry, access.silence_state, lambda s: s.id))
    except SilenceRefused as exc:
        console.audit_error(entry, f"{exc} (HTTP 422)")
        session.flash.append(("error", t.gettext("Not done: {reason}", reason=str(exc))))
        return _redirect(back)
    except sqlite3.OperationalError as exc:
        session.flash.append(("error", t.gettext("Not done: {reason}", reason=str(exc))))
        return _redirect(back)
    session.flash.append(("ok", t.gettext("Silenced until {end}", end=t.local_time(made.ends_at, console.timezone))))
    return _redirect(back)


# -- live updates ----------------------------------------------------------------------------------


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events for one page (sse.py). No session: one `signed-out` event, then the end."""
    console = _console(request)
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
                data = b": keep-alive\n\n" if console.sessions.alive(session) else event("signed-out", {})
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
    response = web.Response(body=_console(request).static[name], content_type=STATIC[name])
    response.headers["Cache-Control"] = "no-cache"
    return response


# -- wiring ----------------------------------------------------------------------------------------


def register(app: web.Application) -> None:
    """Mount the console at /console on the runner's API app (citywatch/api.py make_app), feed it from
    the runner's listeners, and run its live-update pump with the app."""
    from citywatch.api import RUNNER_KEY  # noqa: PLC0415 (citywatch.api calls this)

    runner: EmbeddedRunner = app[RUNNER_KEY]  # type: ignore[assignment]
    if not runner.settings.console.enabled:
        return
    console = Console(runner)
    sub = web.Application()
    app[CONSOLE_KEY] = console
    sub.on_response_prepare.append(_headers)
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

