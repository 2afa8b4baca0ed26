"""Signing in and out of the console, and the language of a session.

Sign-in takes an account's token (citywatch/people/users.py) from a POST form protected by its own
double-submit CSRF token (there is no session yet): a cookie set with the form and a hidden field that
must match, plus the origin checks. Failed tokens count against the client address in the API's own
throttle (429 with Retry-After when blocked); a known account's failed or disabled token is audited.
The bootstrap token is refused: the console is for named people. A new session id is made at every
sign-in (no fixation) and sent in an HttpOnly, SameSite=Strict cookie (Secure, with the __Host- prefix,
over https). Sign-in and sign-out are audited.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import sqlite3

from aiohttp import web

from citywatch.console.core import (
    PREFIX,
    SIGNIN_COOKIE,
    Console,
    console_of,
    posted,
    redirect,
    safe_next,
)
from citywatch.i18n import LANGUAGES
from citywatch.people import api as access
from citywatch.people import audit
from citywatch.people.audit import Entry

log = logging.getLogger("citywatch.console")


# -- signing in and out ----------------------------------------------------------------------------


async def signin_form(request: web.Request) -> web.Response:
    console = console_of(request)
    if console.session_of(request) is not None:
        return redirect(safe_next(request.query.get("next")))
    return _signin_page(request, console, 200)


def _signin_page(request: web.Request, console: Console, status: int, error: str = "",
                 retry_after: int | None = None) -> web.Response:
    token = secrets.token_urlsafe(24)
    response = console.page(request, None, "signin.html", status, signin_csrf=token, error=error,
                            retry_after=retry_after, next=safe_next(request.query.get("next")))
    response.set_cookie(SIGNIN_COOKIE, token, httponly=True, samesite="Strict", secure=console.is_secure(request),
                        path=PREFIX, max_age=3600)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


async def signin(request: web.Request) -> web.Response:
    """Sign in with an account's token: a new session, its id in an HttpOnly, SameSite=Strict cookie."""
    console = console_of(request)
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
    response = redirect(safe_next(str(form.get("next", "")) or None))
    response.set_cookie(console.cookie_name(request), session.id, httponly=True, samesite="Strict",
                        secure=console.is_secure(request), path="/")
    response.del_cookie(SIGNIN_COOKIE, path=PREFIX)
    return response


async def signout(request: web.Request) -> web.Response:
    got = await posted(request, "sign_out", "user")
    if isinstance(got, web.Response):
        return got
    console, session, _ = got
    console.end(session, "signed_out")
    try:
        audit.record(console.runner.store.conn, Entry(access.actor_of(request, session.user), "sign_out", "user",
                                                      session.user.name, at=console.runner.clock()))
    except sqlite3.Error as exc:
        log.error("audit: cannot record the sign-out of %s: %s", session.user.name, exc)
    response = redirect(f"{PREFIX}/signin")
    response.del_cookie(console.cookie_name(request), path="/")
    return response


async def set_language(request: web.Request) -> web.Response:
    got = await posted(request, "set_language")
    if isinstance(got, web.Response):
        return got
    _, session, form = got
    wanted = str(form.get("language", ""))
    if wanted in LANGUAGES:
        session.language = wanted
    return redirect(safe_next(str(form.get("back", "")) or None))


