"""Dispatch both ways over HTTP: the dispatch system's signed messages, and people's dispatch actions.

* `POST /dispatch/events`: the dispatch system's messages (dispatch.py says what they look like and
  every answer). Authenticated by its Standard Webhooks signature, not by the API's bearer token (the
  dispatch system holds its own secret, not our token): the API's auth middleware skips exactly this
  path.
* `POST /alerts/{id}/assign|on-site|rectify|reject|close` (bearer token like ack/resolve): the same
  actions from a person or `citywatch alerts assign ...`; optional JSON body `{"by", "assignee",
  "note", "evidence": [...], "reason"}`. 404 unknown id, 409 not possible now, 400/422 bad body.

`register(app)` adds both to the API app built by citywatch.api.make_app.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from citywatch.detectors.lifecycle import AlertNotFound, IllegalTransition
from citywatch.errors import AlertError, CitywatchError
from citywatch.loop.dispatch import (
    REPEAT_HEADER,
    DispatchEvent,
    Receipts,
    Refused,
    accepted,
    digest,
    parse_detail,
    parse_event,
    verify_signature,
)
from citywatch.model import TERMINAL_STATUSES
from citywatch.people import api as access
from citywatch.ratelog import LogLimiter
from citywatch.service import READER_KEY, SERVICE_KEY
from citywatch.sinks.webhooks import signing_keys

if TYPE_CHECKING:
    from citywatch.service import AlertService

log = logging.getLogger("citywatch.dispatch")

DISPATCH_PATH = "/dispatch/events"  # citywatch.api's auth middleware lets this one path through
# The CLI's and people's names for the actions -> model.DISPATCH_ACTIONS
PERSON_ACTIONS = {"assign": "assigned", "on-site": "on_site", "on_site": "on_site", "rectify": "rectified",
                  "reject": "rejected", "close": "closed"}
INBOUND_KEY = web.AppKey("dispatch_inbound", object)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json",
                        headers=headers)


def _refusal(refused: Refused, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=refused.body(), status=refused.status, content_type="application/json",
                        headers=headers)


def _runner(request: web.Request) -> AlertService:
    return request.app[SERVICE_KEY]


async def _not_open(request: web.Request, alert_id: str, exc: AlertError) -> Refused:
    """Why an action on `alert_id` is refused: 404 if there is no such alert, 409 if it is not possible
    now (already resolved or closed, or the engine refused the transition)."""
    if isinstance(exc, IllegalTransition):
        return Refused(409, "illegal_transition", str(exc))
    stored = await asyncio.to_thread(request.app[READER_KEY].alert, alert_id)
    if stored is None:
        return Refused(404, "unknown_alert", f"no alert {alert_id}")
    if stored.status in TERMINAL_STATUSES:
        return Refused(409, "illegal_transition", f"alert {alert_id} is already {stored.status}")
    return Refused(409, "illegal_transition", str(exc))


class Inbound:
    """The dispatch system's endpoint: keys, clock, receipts, and a rate-limited log of refusals."""

    def __init__(self, runner: AlertService) -> None:
        self.runner = runner
        self.settings = runner.settings.dispatch
        self.keys = signing_keys(self.settings.secret)
        self.receipts = Receipts(runner.store.conn, self.settings)
        self.limiter = LogLimiter(60.0)

    def _log_refusal(self, refused: Refused, request: web.Request) -> None:
        ok, held = self.limiter.allow(refused.code)
        if ok:  # the code and the peer only: never the signature or the body
            log.warning("dispatch: refused a message from %s: %s %s%s", request.remote, refused.status, refused.code,
                        f" ({held} more since the last such line)" if held else "")

    async def handle(self, request: web.Request) -> web.Response:
        if not self.keys:
            return _refusal(Refused(503, "not_configured", "inbound dispatch is not configured: set dispatch.secret "
                                                           "(the dispatch system's own signing secret)"))
        body = await request.read()
        # From here to the commit nothing awaits: a repeat racing its original finds its receipt.
        try:
            return self._apply(request, body)
        except _NotOpen as not_open:
            refused = await _not_open(request, not_open.alert_id, not_open.exc)
        except Refused as exc:
            refused = exc
        access.inbound_refused(request, refused.status, f"{refused.code}: {refused}")  # authentic ones only
        self._log_refusal(refused, request)
        headers = {"Retry-After": "5"} if refused.status == 503 else None
        return _refusal(refused, headers)

    def _apply(self, request: web.Request, body: bytes) -> web.Response:
        runner = self.runner
        now = runner.clock()
        webhook_id = verify_signature(self.keys, request.headers, body, now, self.settings.tolerance_s)
        body_digest = digest(body)
        seen = self.receipts.find(webhook_id)
        if seen is not None:
            if seen.digest != body_digest:
                raise Refused(409, "webhook_id_reused", f"webhook-id {webhook_id} was already used for a different "
                                                        "message: each message needs its own id")
            return web.Response(body=seen.response, status=seen.status, content_type="application/json",
                                headers={REPEAT_HEADER: "true"})
        event = parse_event(body)
        writer = self.receipts.writer(webhook_id, body_digest, now,
                                      lambda out: accepted(webhook_id, event.type, out))
        audited = access.inbound_hook(request, event, writer)  # the receipt, then the audit record
        if event.scope == "incident":
            self._incident(event, audited)
        else:
            try:
                runner.dispatch(event.target, event.action, event.by, assignee=event.assignee, note=event.note,
                                evidence=event.evidence, reason=event.reason, also=audited)
            except (AlertNotFound, IllegalTransition) as exc:
                raise _NotOpen(event.target, exc) from None
            except AlertError as exc:  # the store could not take it: nothing committed, try again
                raise Refused(503, "storage_error", str(exc)) from None
        assert writer.response is not None
        log.info("dispatch: %s %s (webhook-id %s)", event.type, event.target, webhook_id)
        return web.Response(body=writer.response, status=200, content_type="application/json")

    def _incident(self, event: DispatchEvent, writer: Any) -> None:
        """An incident-level action: fanned out to the member alerts by the runner (incidents.py)."""
        dispatch_incident = getattr(self.runner, "dispatch_incident", None)
        if dispatch_incident is None:
            raise Refused(501, "not_implemented", "this runner does not dispatch incidents yet: act on the member "
                                                  "alerts (alert.<action> with alert_id)")
        try:
            dispatch_incident(event.target, event.action, event.by, assignee=event.assignee, note=event.note,
                              evidence=event.evidence, reason=event.reason, also=writer)
        except CitywatchError as exc:
            status = getattr(exc, "http_status", None)
            if status == 404:
                raise Refused(404, "unknown_incident", str(exc)) from None
            if status in (400, 422):
                raise Refused(422, "invalid_event", str(exc)) from None
            if status == 409:
                raise Refused(409, "illegal_transition", str(exc)) from None
            raise Refused(503, "storage_error", str(exc)) from None


class _NotOpen(Exception):
    """The engine does not hold the alert, or refused the transition: 404 or 409 (decided off the loop)."""

    def __init__(self, alert_id: str, exc: AlertError) -> None:
        self.alert_id = alert_id
        self.exc = exc


async def _person(request: web.Request) -> web.Response:
    """A person's dispatch action (bearer token): assign, on-site, rectify, reject, close."""
    runner = _runner(request)
    alert_id = request.match_info["alert_id"]
    action = PERSON_ACTIONS[request.match_info["action"]]
    try:
        detail = parse_detail(action, await request.read())
    except Refused as exc:
        return _refusal(exc)
    by = access.acting_name(request, detail.by)  # the account's name; a shared credential's person
    try:
        transition = runner.dispatch(alert_id, action, by, assignee=detail.assignee, note=detail.note,
                                     evidence=detail.evidence, reason=detail.reason, also=access.tx_hook(request))
    except (AlertNotFound, IllegalTransition) as exc:
        return _refusal(await _not_open(request, alert_id, exc))
    except AlertError as exc:
        return _refusal(Refused(503, "storage_error", str(exc)), {"Retry-After": "5"})
    return _json(transition)


def register(app: web.Application) -> None:
    """Add POST /dispatch/events and POST /alerts/{id}/<action> to the API app."""
    inbound = Inbound(app[SERVICE_KEY])
    app[INBOUND_KEY] = inbound
    app.router.add_post(DISPATCH_PATH, inbound.handle)
    actions = "|".join(PERSON_ACTIONS)
    app.router.add_post(f"/alerts/{{alert_id}}/{{action:({actions})}}", _person)

