"""Who is calling the HTTP API, may they, and the audit of what they did: one middleware and one
route table.

Every request but /health, /ready (open) and /dispatch/events (signed by the dispatch system:
citywatch/loop/dispatch_api.py, audited there through `inbound_hook`) must carry
`Authorization: Bearer <token>`: the bootstrap token (admin, whole city) or an account's token
(users.py). No or a bad token: 401; a known account lacking the right: 403, and the refusal is
audited; too many failed tokens from one address: 429 (throttle.py).

ROUTES maps each route (method, path as registered) to the action it is (policy.py) and how to
find its target before the handler runs; list routes name how to see each item of their JSON
answer, and the items the user may not see are left out (GET /alerts for a Nanhu operator has no
Xiuzhou alert). A route added without an entry is admin-only (logged once), so nothing is open by
accident: add a line to ROUTES, or call `declare(app, method, path, Rule(...))` in the module's
`register(app)`.

Changes (`Rule.change`) are audited: handlers that commit to the store pass `tx_hook(request)` as
the commit's `also`, so the record is written in the action's own transaction; otherwise (and for
every failure) the middleware writes it after the handler, with the answer's status and error.
`acting_name(request, by)` is the `by` an action records: a personal account's own name; a shared
credential (bootstrap token, dispatch system account) may name the person it acts for.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from citywatch.people import audit
from citywatch.people.audit import Actor, Entry
from citywatch.people.policy import (
    GRANTS,
    Decision,
    Reach,
    Target,
    alert_target,
    authorize,
    incident_target,
    permitted,
    silence_target,
)
from citywatch.people.throttle import Throttle
from citywatch.people.users import BOOTSTRAP, DISPATCH_SYSTEM, Activity, User, UserBook
from citywatch.ratelog import LogLimiter
from citywatch.service import DESK_KEY, READER_KEY, SERVICE_KEY

log = logging.getLogger("citywatch.api.auth")

OPEN_PATHS = frozenset({"/health", "/ready", "/openapi.json"})  # the API's description names no secret
SIGNED_PATHS = frozenset({"/dispatch/events"})  # the dispatch system signs each message instead
# The operator console (citywatch/console/app.py) authenticates by its session cookie instead of a bearer
# token and asks the same policy itself (its own CSRF checks and audit of refusals).
SESSION_PREFIX = "/console"

Resolved = tuple[Target, Any]  # the target, and its state before the action (for the audit)
Resolver = Callable[[web.Request], Awaitable[Resolved | None]]


@dataclass(frozen=True)
class Rule:
    """What a route is: its `action` (or a function of the request giving it), how to find its
    `target` before the handler (None: not found, the handler answers 404), `each` to see each
    item of a JSON list answer, and whether it is a `change` (audited)."""

    action: str | Callable[[web.Request], str]
    target: Resolver | None = None
    each: Callable[[Any], Target] | None = None
    change: bool = False

    def action_for(self, request: web.Request) -> str:
        return self.action if isinstance(self.action, str) else self.action(request)


# -- targets of the routes -------------------------------------------------------------------------


def _runner(request: web.Request) -> Any:

    return request.app[SERVICE_KEY]


def alert_state(alert: Any) -> dict[str, Any]:
    """The few fields of an alert an action changes (the audit's before/after)."""
    return {"status": alert.status, "severity": alert.severity, "assignee": alert.assignee,
            "escalation_level": alert.escalation_level}


async def _alert(request: web.Request) -> Resolved | None:

    alert_id = request.match_info["alert_id"]
    alert = request.app[DESK_KEY].held(alert_id)  # the runner's desk (citywatch/alertapi.py): both runners
    if alert is None:  # resolved or closed ones are only in the store: one read, off the loop
        alert = await asyncio.to_thread(request.app[READER_KEY].alert, alert_id)
    return None if alert is None else (alert_target(alert), alert_state(alert))


async def _incident(request: web.Request) -> Resolved | None:
    from citywatch.loop.incidents_api import READER_KEY  # noqa: PLC0415

    incident_id = request.match_info["incident_id"]
    incident = _runner(request).incidents.get(incident_id)
    if incident is None:
        incident = await asyncio.to_thread(request.app[READER_KEY].incident, incident_id)
    return None if incident is None else (incident_target(incident), None)


def _matchers(data: Any) -> dict[str, list[str]]:
    from citywatch.loop.silences import MATCHER_KEYS  # noqa: PLC0415

    if not isinstance(data, dict):
        return {}
    out = {}
    for key in MATCHER_KEYS:
        value = data.get(key)
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        if values:
            out[key] = [str(v) for v in values]
    return out


def _silence_of(request: web.Request, matchers: dict[str, list[str]], silence_id: str = "") -> Target:
    devices = _runner(request).devices
    return silence_target(matchers, silence_id, [devices.get(d) for d in matchers.get("device", [])])


async def _new_silence(request: web.Request) -> Resolved | None:
    """The silence asked for: where its matchers (and its devices) bound it. A body that is not a
    silence bounds nothing: only the whole city's users pass, and the handler answers 400."""
    try:
        data = json.loads(await request.read())
    except ValueError:
        data = None
    return _silence_of(request, _matchers(data)), None


def silence_state(silence: Any) -> dict[str, Any]:
    return {"id": silence.id, "matchers": silence.matchers, "starts_at": silence.starts_at,
            "ends_at": silence.ends_at, "ended_at": silence.ended_at, "reason": silence.reason,
            "author": silence.author, "ended_by": silence.ended_by}


async def _silence(request: web.Request) -> Resolved | None:
    silence = _runner(request).silences.get(request.match_info["silence_id"])
    if silence is None:
        return None
    return _silence_of(request, silence.matchers, silence.id), silence_state(silence)


async def _city(request: web.Request) -> Resolved | None:
    return Target("city"), None


def _dispatch_action(request: web.Request) -> str:
    return request.match_info["action"].replace("-", "_")  # assign, on_site, rectify, reject, close


ROUTES: dict[tuple[str, str], Rule] = {
    ("GET", "/stats"): Rule("view_stats"),
    ("GET", "/metrics"): Rule("view_stats"),  # when api.metrics_auth; else answered before auth (metrics.py)
    ("GET", "/alerts"): Rule("view_alert", each=alert_target),
    ("GET", "/alerts/{alert_id}"): Rule("view_alert", _alert),
    ("POST", "/alerts/{alert_id}/ack"): Rule("ack", _alert, change=True),
    ("POST", "/alerts/{alert_id}/resolve"): Rule("resolve", _alert, change=True),
    ("POST", "/alerts/{alert_id}/{action}"): Rule(_dispatch_action, _alert, change=True),
    ("GET", "/incidents"): Rule("view_incident", each=incident_target),
    ("GET", "/incidents/{incident_id}"): Rule("view_incident", _incident),
    ("GET", "/kpis"): Rule("view_kpis", _city),
    ("POST", "/silences"): Rule("silence", _new_silence, change=True),
    ("GET", "/silences"): Rule("view_silence"),
    ("GET", "/silences/{silence_id}"): Rule("view_silence"),
    ("POST", "/silences/{silence_id}/end"): Rule("silence", _silence, change=True),
}
ADMIN_ONLY = Rule("manage_users")


# -- per request -----------------------------------------------------------------------------------


@dataclass
class Pending:
    """The audit record of this request's action, completed by the handler or the middleware."""

    entry: Entry
    in_tx: bool = False  # written by a store transaction's hook (kept only if that commit succeeded)
    extra: dict[str, Any] = field(default_factory=dict)


USER_KEY = web.RequestKey("user", User)
PENDING_KEY = web.RequestKey("audit", Pending)
INBOUND_KEY = web.RequestKey("inbound", Entry)


def actor_of(request: web.Request, user: User, on_behalf_of: str = "") -> Actor:
    return Actor(user.name, user.role, request.remote or "unknown",
                 request.headers.get("User-Agent", "")[:200], on_behalf_of)


def current_user(request: web.Request) -> User | None:
    user: User | None = request.get(USER_KEY)
    return user


def acting_name(request: web.Request, given: str | None) -> str:
    """Who an action is recorded as `by`: a personal account's own name, whatever the body says
    (a different `by` is kept in the audit as on_behalf_of); a shared credential (the bootstrap
    token, a dispatch account) names the person it acts for, else its own name."""
    given = (given or "").strip()
    user = current_user(request)
    if user is None:  # not behind the middleware (a unit test calling the handler)
        return given or "api"
    pending: Pending | None = request.get(PENDING_KEY)
    if given and given not in (user.name, "api") and pending is not None:
        pending.entry = replace(pending.entry, actor=replace(pending.entry.actor, on_behalf_of=given))
    return given if user.shared and given and given != "api" else user.name


def tx_hook(request: web.Request, after: Callable[[Any], Any] | None = None,
            target_id: Callable[[Any], str] | None = None) -> audit.TxHook | None:
    """A hook writing this request's audit record inside the store transaction of its action
    (runner.acknowledge/resolve/dispatch `also`, SilenceBook.add/end `also`). `after(subject)` is
    the value after (default: the alert's state after the action's transition)."""
    pending: Pending | None = request.get(PENDING_KEY)
    if pending is None:
        return None

    def write(conn: sqlite3.Connection, subject: Any) -> None:
        audit.hook(pending.entry, after or _alert_after, target_id)(conn, subject)
        pending.in_tx = True

    return write


def _alert_after(out: Any) -> Any:
    transitions = getattr(out, "transitions", None)
    if not transitions:
        return None
    last = transitions[-1]
    return {**alert_state(last.alert), "transition": last.transition, "transition_id": last.id}


# -- the dispatch system's signed messages ---------------------------------------------------------

_MODEL_TO_ACTION = {"assigned": "assign", "on_site": "on_site", "rectified": "rectify", "rejected": "reject",
                    "closed": "close"}


def inbound_hook(request: web.Request, event: Any, also: audit.TxHook) -> audit.TxHook:
    """`also` (the receipt writer) followed by the audit record of a dispatch-system message, in the
    action's transaction. The request remembers the event, so a refusal is audited too."""
    entry = Entry(actor_of(request, DISPATCH_SYSTEM, event.by), _MODEL_TO_ACTION.get(event.action, event.action),
                  event.scope, event.target)
    request[INBOUND_KEY] = entry

    def write(conn: sqlite3.Connection, out: Any) -> None:
        also(conn, out)
        after = _alert_after(out) if event.scope == "alert" else {"alert_transitions": len(out.transitions)}
        audit.append(conn, replace(entry, after=after))

    return write


def inbound_refused(request: web.Request, status: int, reason: str) -> None:
    """An authentic message the runner could not apply (404, 409, 422, 503): audited as an error.
    Unauthenticated ones (bad signature) are not: nobody accountable sent them."""
    entry: Entry | None = request.get(INBOUND_KEY)
    if entry is not None:
        _write(request.app, replace(entry, outcome="error", reason=f"{reason} (HTTP {status})"))


# -- the middleware ---------------------------------------------------------------------------------


class Access:
    """The API's authentication, authorisation and audit state (one per app)."""

    def __init__(self, bootstrap_token: str | None, users: UserBook, audit_conn: sqlite3.Connection,
                 throttle: Throttle) -> None:
        self.bootstrap = bootstrap_token.encode() if bootstrap_token else None
        self.users = users
        self.audit_conn = audit_conn
        self.activity = Activity(audit_conn)  # last use per account, in state.db
        self.throttle = throttle
        self.routes: dict[tuple[str, str], Rule] = dict(ROUTES)
        self.limiter = LogLimiter(60.0)
        self.unlisted: set[tuple[str, str]] = set()

    # -- who ------------------------------------------------------------------------------------

    def identify(self, request: web.Request) -> User | web.Response:
        """The caller: a user a middleware in front of this one already set (request[USER_KEY], e.g.
        the console's session cookie), else the bearer token's (`check_token`)."""
        preset = request.get(USER_KEY)
        if preset is not None:
            assert isinstance(preset, User)
            return preset
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            return _json({"error": "missing or invalid bearer token"}, 401)
        return self.check_token(request, given)

    def check_token(self, request: web.Request, given: str) -> User | web.Response:
        """The account a presented token belongs to, or the answer refusing it (401, or 429 while the
        caller's address is blocked). Failures count toward the block; a known account's refusal is
        audited. For a sign-in form too (the console exchanging a token for a session)."""
        address = request.remote or "unknown"
        wait = self.throttle.retry_after(address)
        if wait is not None:
            return _json({"error": f"too many failed authentications from {address}: retry after {wait} s"}, 429,
                         {"Retry-After": str(wait)})
        if self.bootstrap is not None and hmac.compare_digest(given.encode("utf-8", "replace"), self.bootstrap):
            return BOOTSTRAP
        result = self.users.authenticate(given)
        if result.user is not None:
            self.activity.touch(result.user.name, _now(request))
            return result.user
        self.throttle.failed(address)
        self._warn("refused", "api: refused a bearer token from %s: %s", address, result.reason)
        if result.named is not None:  # a known account's token (disabled, or a wrong secret): audited
            _write(request.app, Entry(actor_of(request, result.named), "authenticate", "user", result.named.name,
                                      outcome="refused", reason=result.reason, at=_now(request)))
        return _json({"error": "missing or invalid bearer token"}, 401)

    def _warn(self, key: str, msg: str, *args: Any) -> None:
        ok, held = self.limiter.allow(key)
        if ok:
            log.warning(msg + (f" ({held} similar since)" if held else ""), *args)

    # -- may they -------------------------------------------------------------------------------

    def rule_for(self, request: web.Request) -> Rule | None:
        route = request.match_info.route
        method = "GET" if request.method == "HEAD" else request.method
        resource = route.resource
        if resource is None:  # no route matched: the handler answers 404 or 405
            return None
        key = (method, resource.canonical)
        rule = self.routes.get(key)
        if rule is None:
            if key not in self.unlisted:
                self.unlisted.add(key)
                log.warning("api: route %s %s has no access rule (citywatch/people/api.py ROUTES): admins only",
                            *key)
            return ADMIN_ONLY
        return rule

    def refuse(self, request: web.Request, user: User, action: str, target: Target | None,
               decision: Decision) -> web.Response:
        what = f"{target.type} {target.id}".strip() if target is not None else ""
        _write(request.app, Entry(actor_of(request, user), action, target.type if target else "",
                                  target.id if target else "", outcome="refused", reason=decision.reason,
                                  at=_now(request)))
        why = {"role": f"role {user.role} may not {action}", "scope": f"{what} is outside your scope",
               "assignment": f"{what} is not assigned to you or your teams"}.get(decision.code, decision.reason)
        return _json({"error": f"forbidden: {why}", "code": "forbidden"}, 403)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in OPEN_PATHS or request.path in SIGNED_PATHS or _session_path(request.path):
            return await handler(request)  # type: ignore[no-any-return]
        who = self.identify(request)
        if isinstance(who, web.Response):
            return who
        user = who
        request[USER_KEY] = user
        rule = self.rule_for(request)
        if rule is None:
            return await handler(request)  # type: ignore[no-any-return]
        action = rule.action_for(request)
        if not permitted(user, action):
            return self.refuse(request, user, action, None, authorize(user, action))
        resolved = await rule.target(request) if rule.target is not None else None
        target, before = resolved if resolved is not None else (None, None)
        if target is not None:  # not found: the handler answers 404; lists: filtered below
            decision = authorize(user, action, target)
            if not decision:
                return self.refuse(request, user, action, target, decision)
        kind, ident = (target.type, target.id) if target is not None else _named(request)
        pending = Pending(Entry(actor_of(request, user), action, kind, ident, before, at=_now(request)))
        request[PENDING_KEY] = pending
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            if rule.change:
                self._after(request, pending, exc.status, exc.text or exc.reason)
            raise
        except Exception:
            if rule.change:
                self._after(request, pending, 500, "internal error")
            raise
        if rule.change:
            self._after(request, pending, response.status, _error_of(response))
        if rule.each is not None:
            return self._filtered(response, user, action, rule.each)
        return response

    def _after(self, request: web.Request, pending: Pending, status: int, error: str) -> None:
        """The change's record when its transaction did not write it: applied without a store
        commit, or failed (the error and status as answered)."""
        if pending.in_tx and status < 400:
            return
        entry = pending.entry
        if status >= 400:
            entry = replace(entry, outcome="error", reason=f"{error} (HTTP {status})".strip())
        _write(request.app, entry)

    def _filtered(self, response: web.StreamResponse, user: User, action: str,
                  each: Callable[[Any], Target]) -> web.StreamResponse:
        """A list answer without the items the user may not see."""
        reach = GRANTS.get(user.role, {}).get(action)
        if reach is Reach.ANY or (reach in (Reach.SCOPE, Reach.SCOPE_OR_ASSIGNED) and not user.scope) \
                or response.status != 200:
            return response
        body = response.body if isinstance(response, web.Response) else None
        try:
            items = json.loads(body) if isinstance(body, bytes) else None
        except ValueError:
            items = None
        if not isinstance(items, list):  # fail closed: nothing we cannot check goes out
            log.error("api: cannot filter the answer of %s for %s; refused", action, user.name)
            return _json({"error": "forbidden: this answer cannot be filtered to your scope"}, 403)
        kept = [item for item in items if isinstance(item, dict) and authorize(user, action, each(item))]
        return web.Response(body=json.dumps(kept).encode(), status=200, content_type="application/json")

    def stats(self) -> dict[str, Any]:
        return self.throttle.stats()


ACCESS_KEY = web.AppKey("access", Access)


def _session_path(path: str) -> bool:
    """Served by the console's sub-app (routing follows the literal path: /console/../alerts is not /alerts)."""
    return path == SESSION_PREFIX or path.startswith(SESSION_PREFIX + "/")


def _named(request: web.Request) -> tuple[str, str]:
    """The target's type and id as the path names them (when it was not found)."""
    for kind in ("alert", "incident", "silence"):
        if f"{kind}_id" in request.match_info:
            return kind, request.match_info[f"{kind}_id"]
    return "", ""


def _now(request: web.Request) -> float:
    try:
        clock = request.app[DESK_KEY].clock
    except (KeyError, AttributeError):
        import time  # noqa: PLC0415

        return time.time()
    return float(clock())


def _write(app: web.Application, entry: Entry) -> None:
    """An audit record in a transaction of its own on the runner's state.db connection. A full or
    broken disk is logged (the answer stands: refusing a refusal helps nobody)."""
    access = app[ACCESS_KEY]
    try:
        audit.record(access.audit_conn, entry)
    except sqlite3.Error as exc:
        log.error("audit: cannot record %s by %s (%s): %s", entry.action, entry.actor.user, entry.outcome, exc)


def _error_of(response: Any) -> str:
    if response.status < 400 or not isinstance(getattr(response, "body", None), bytes):
        return ""
    try:
        body = json.loads(response.body)
    except ValueError:
        return str(response.body[:200].decode("utf-8", "replace"))
    return str(body.get("error", ""))[:300] if isinstance(body, dict) else ""


def _json(data: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json",
                        headers=headers)


def setup(app: web.Application, bootstrap_token: str | None, users: UserBook, audit_conn: sqlite3.Connection,
          throttle: Throttle) -> Access:
    """Put the access middleware in front of `app`'s handlers (after httpserve's guard)."""
    audit.ensure_schema(audit_conn)
    access = app[ACCESS_KEY] = Access(bootstrap_token, users, audit_conn, throttle)
    app.middlewares.append(access.middleware)
    return access


def declare(app: web.Application, method: str, path: str, rule: Rule) -> None:
    """Give a route its access rule (for modules adding routes in their `register(app)`)."""
    app[ACCESS_KEY].routes[(method.upper(), path)] = rule
