"""The console's state and the helpers every route uses: who is signed in (the session, its account
re-read at each request), may this POST be trusted (CSRF token, origin), how pages are rendered
(Jinja2 in the session's language), and the security headers every response carries.

Security headers (HEADERS, on every console response: pages, streams, files): a Content-Security-Policy
allowing only this origin's script, style and connections (no inline script or style, no framing,
forms only to us), X-Frame-Options DENY, nosniff, Referrer-Policy same-origin, Cache-Control no-store
for everything but the static files, and HSTS when served over https.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
from dataclasses import replace
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import msgspec
from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined, Template

from citywatch.console.readings import RecentReadings
from citywatch.console.sessions import COOKIE, SECURE_COOKIE, Session, SessionBook, csrf_ok
from citywatch.console.sse import Hub
from citywatch.console.views import (
    alert_row,
    incident_deadline,
    incident_row,
)
from citywatch.i18n import LANGUAGES, Translator, translator
from citywatch.labels import label
from citywatch.loop import comments
from citywatch.model import Alert, Incident, Transition
from citywatch.people import api as access
from citywatch.people import audit
from citywatch.people.audit import Entry
from citywatch.people.policy import authorize, silence_target
from citywatch.people.users import User
from citywatch.service import READER_KEY
from citywatch.sinks.alertreader import ReadOnlyStore
from citywatch.sinks.store import store_path

if TYPE_CHECKING:
    from citywatch.service import AlertService

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


class Reader(ReadOnlyStore):
    """Read-only lookups for pages (an alert's transitions, comments), off the event loop on their own
    connection (as citywatch/sinks/alertreader.py)."""

    def transitions(self, alert_id: str, limit: int = 500) -> list[Transition]:
        rows = self._rows("SELECT body FROM transitions WHERE alert_id = ? ORDER BY at DESC, id DESC LIMIT ?",
                          (alert_id, limit))
        return [_decode_transition(body) for (body,) in reversed(rows)]

    def comments(self, target_type: str, target_id: str) -> list[comments.Comment]:
        rows = self._rows("SELECT id, target_type, target_id, at, author, role, body FROM comments"
                          " WHERE target_type = ? AND target_id = ? ORDER BY at DESC, id DESC LIMIT 500",
                          (target_type, target_id))
        return [comments.Comment(*row) for row in reversed(rows)]


def _static_bytes(name: str) -> bytes:
    return resources.files("citywatch.console").joinpath("static").joinpath(name).read_bytes()


class Console:
    """The console's state: templates, sessions, live updates, recent readings; renders rows for the hub."""

    def __init__(self, runner: AlertService) -> None:
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
                   back_path=safe_next(request.path_qs),
                   scope_text=scope_text(session.user) if session is not None else "")
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
        if session is None or not self.account_current(request, session):
            return None
        request[access.USER_KEY] = session.user
        return session

    def account_current(self, request: web.Request, session: Session) -> bool:
        """Re-read the session's account: False (and the session ended) when it was disabled, removed
        or its token rotated; else its current role and scope apply from now."""
        guard = request.config_dict[access.ACCESS_KEY]
        current = guard.users.get(session.user.name)
        if current is None or current.disabled or current.token_id != session.token_id:
            self.end(session, "account_changed")
            return False
        session.user = current
        guard.activity.touch(current.name, self.runner.clock())
        return True

    def stream_still_signed_in(self, request: web.Request, session: Session) -> bool:
        """A live page's periodic check: its session still there and its account unchanged. An open page
        counts as use (its idle time starts over); session_max_h still ends it."""
        return self.sessions.get(session.id) is session and self.account_current(request, session)

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


def scope_text(user: User) -> str:
    return " ".join(f"{k}={'|'.join(v)}" for k, v in user.scope.items())


def console_of(request: web.Request) -> Console:
    return request.config_dict[CONSOLE_KEY]


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console page of ours, nothing else (no open redirect)."""
    if value and value.startswith(PREFIX) and not value.startswith("//") and "\\" not in value \
            and value.isprintable() and len(value) < 500:
        return value
    return PREFIX


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def signin_redirect(request: web.Request) -> web.Response:
    return redirect(f"{PREFIX}/signin?{urlencode({'next': request.path_qs})}")


async def signed_in(request: web.Request) -> tuple[Console, Session] | web.Response:
    console = console_of(request)
    session = console.session_of(request)
    if session is None:
        return signin_redirect(request)
    return console, session


async def posted(request: web.Request, action: str, target_type: str = "", target_id: str = ""
                  ) -> tuple[Console, Session, Any] | web.Response:
    """A state-changing request: signed in, from our own origin, with this session's CSRF token."""
    console = console_of(request)
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


def forbidden(request: web.Request, console: Console, session: Session, action: str, target_type: str,
               target_id: str, reason: str) -> web.Response:
    console.audit_refusal(request, session.user, action, target_type, target_id, reason)
    return console.page(request, session, "error.html", 403, title="403", message_id="forbidden")


# -- security headers ------------------------------------------------------------------------------


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every console response, pages and streams alike (on_response_prepare)."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if "/static/" not in request.path:
        response.headers["Cache-Control"] = "no-store"
    if CONSOLE_KEY in request.config_dict and console_of(request).is_secure(request):
        response.headers["Strict-Transport-Security"] = "max-age=31536000"


async def find_alert(console: Console, request: web.Request, alert_id: str) -> Alert | None:
    alert = console.runner.engine.by_id.get(alert_id)
    if alert is None:

        alert = await asyncio.to_thread(request.config_dict[READER_KEY].alert, alert_id)
    return alert


def silence_matchers(alert: Alert, scope: str) -> dict[str, list[str]] | None:
    if scope == "device":
        return {"device": [alert.device_id]}
    place = alert.device or {}
    grid, district = str(place.get("grid") or ""), str(place.get("district") or "")
    if scope != "grid" or not grid:
        return None
    return {"grid": [grid], "district": [district]} if district else {"grid": [grid]}  # that grid of this district


def may_silence(console: Console, user: User, alert: Alert) -> bool:
    matchers = silence_matchers(alert, "device")
    assert matchers is not None
    return bool(authorize(user, "silence", silence_target(matchers, "", [console.runner.devices.get(alert.device_id)])))
