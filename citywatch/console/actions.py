"""What people do in the console: the alert actions, comments and silences, each through the runner's
own methods (acknowledge, resolve, dispatch, silences.add) or the comments table, with the audit
record written in the same transaction, exactly as the API does: a stored transition, its webhooks,
its record. Refusals (the policy) and failures (the engine refusing a transition, a bad form) are
audited too, and the person sees why on the page they come back to (post/redirect/get).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from typing import Any

from aiohttp import web

from citywatch.console.core import (
    DISPATCHED,
    PREFIX,
    URL_ACTIONS,
    find_alert,
    forbidden,
    posted,
    redirect,
    silence_matchers,
)
from citywatch.detectors.lifecycle import AlertNotFound, IllegalTransition
from citywatch.errors import AlertError
from citywatch.i18n import Translator
from citywatch.loop import comments
from citywatch.loop.dispatch import Refused, parse_detail
from citywatch.loop.silences import SilenceRefused, SilenceRequest
from citywatch.people import api as access
from citywatch.people import audit
from citywatch.people.audit import Entry
from citywatch.people.policy import alert_target, authorize, incident_target, silence_target

log = logging.getLogger("citywatch.console")


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
    got = await posted(request, action, "alert", alert_id)
    if isinstance(got, web.Response):
        return got
    console, session, form = got
    user, runner = session.user, console.runner
    back = f"{PREFIX}/alerts/{alert_id}"
    alert = await find_alert(console, request, alert_id)
    if alert is None:
        return console.page(request, session, "error.html", 404, title="404", message_id="no_alert")
    decision = authorize(user, action, alert_target(alert))
    if not decision:
        return forbidden(request, console, session, action, "alert", alert_id, decision.reason)
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
        return redirect(back)
    except (AlertNotFound, IllegalTransition, AlertError) as exc:
        status = 503 if type(exc) is AlertError else 409
        console.audit_error(entry, f"{exc} (HTTP {status})")
        session.flash.append(("error", t.gettext("Not done: {reason}", reason=str(exc))))
        return redirect(back)
    session.flash.append(("ok", t.gettext("Done: {action}", action=_action_label(t, action))))
    return redirect(back)


def _action_label(t: Translator, action: str) -> str:
    return {"ack": t.gettext("Acknowledge"), "assign": t.gettext("Assign"), "on_site": t.gettext("On site"),
            "rectify": t.gettext("Rectified"), "reject": t.gettext("Reject"), "resolve": t.gettext("Resolve"),
            "close": t.gettext("Confirm and close")}[action]


async def comment(request: web.Request) -> web.Response:
    kind = "incident" if "incident_id" in request.match_info else "alert"
    target_id = request.match_info[f"{kind}_id"]
    got = await posted(request, "comment", kind, target_id)
    if isinstance(got, web.Response):
        return got
    console, session, form = got
    back = f"{PREFIX}/{kind}s/{target_id}"
    if kind == "alert":
        alert = await find_alert(console, request, target_id)
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
        return forbidden(request, console, session, "comment", kind, target_id, decision.reason)
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
    return redirect(back)


async def silence(request: web.Request) -> web.Response:
    """Silence the alert's device or grid from now until `end` (local time), with a reason."""
    alert_id = request.match_info["alert_id"]
    got = await posted(request, "silence", "silence", "")
    if isinstance(got, web.Response):
        return got
    console, session, form = got
    runner, user = console.runner, session.user
    back = f"{PREFIX}/alerts/{alert_id}"
    alert = await find_alert(console, request, alert_id)
    if alert is None:
        return console.page(request, session, "error.html", 404, title="404", message_id="no_alert")
    t = console.t(session.language)
    matchers = silence_matchers(alert, str(form.get("scope", "")))
    if matchers is None:
        why = t.gettext("choose the device or the grid")
        session.flash.append(("error", t.gettext("Not done: {reason}", reason=why)))
        return redirect(back)
    target = silence_target(matchers, "", [runner.devices.get(d) for d in matchers.get("device", [])])
    decision = authorize(user, "silence", target)
    if not decision:
        return forbidden(request, console, session, "silence", "silence", "", decision.reason)
    wanted = SilenceRequest(device=matchers.get("device"), grid=matchers.get("grid"),  # what was authorised
                            district=matchers.get("district"), end=str(form.get("end", "")).strip() or None,
                            reason=str(form.get("reason", "")), by=user.name)
    entry = Entry(access.actor_of(request, user), "silence", "silence", "", at=runner.clock())
    try:
        made = runner.silences.add(wanted, local=True, also=audit.hook(entry, access.silence_state, lambda s: s.id))
    except SilenceRefused as exc:
        console.audit_error(entry, f"{exc} (HTTP 422)")
        session.flash.append(("error", t.gettext("Not done: {reason}", reason=str(exc))))
        return redirect(back)
    except sqlite3.OperationalError as exc:
        session.flash.append(("error", t.gettext("Not done: {reason}", reason=str(exc))))
        return redirect(back)
    session.flash.append(("ok", t.gettext("Silenced until {end}", end=t.local_time(made.ends_at, console.timezone))))
    return redirect(back)


