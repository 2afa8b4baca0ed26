"""The console's pages: the queue, the city map, an alert, an incident (and the static files).

Every page asks the policy for what it shows: the queue and the map hold only what the user may see
(`view_alert`, `view_incident`, `view_device`), an alert or incident outside it is a 403 (audited),
and an alert page offers only the actions the role may take in the alert's status.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from citywatch.console import chart
from citywatch.console import map as city_map
from citywatch.console.core import (
    PREFIX,
    QUEUE_LIMIT,
    find_alert,
    forbidden,
    may_silence,
    signed_in,
)
from citywatch.console.readings import UNITS, code_of
from citywatch.console.views import (
    Filters,
    alert_actions,
    alert_row,
    choices,
    incident_row,
    may_view_alert,
    may_view_device,
    may_view_incident,
    sort_rows,
)
from citywatch.kinds import KINDS, spec
from citywatch.labels import label
from citywatch.model import TERMINAL_STATUSES
from citywatch.people.policy import alert_target, authorize, incident_target, permitted
from citywatch.people.users import User

log = logging.getLogger("citywatch.console")


# -- pages -----------------------------------------------------------------------------------------


async def queue(request: web.Request) -> web.Response:
    """Open alerts and incidents the user may see, by deadline, with the filters."""
    signed = await signed_in(request)
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
                        may_view_alerts=permitted(user, "view_alert"))


async def city_map_page(request: web.Request) -> web.Response:
    signed = await signed_in(request)
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


async def alert_page(request: web.Request) -> web.Response:
    signed = await signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    console, session = signed
    alert_id = request.match_info["alert_id"]
    alert = await find_alert(console, request, alert_id)
    if alert is None:
        return console.page(request, session, "error.html", 404, title="404", message_id="no_alert")
    user = session.user
    decision = authorize(user, "view_alert", alert_target(alert))
    if not decision:
        return forbidden(request, console, session, "view_alert", "alert", alert_id, decision.reason)
    t = console.t(session.language)
    history = await asyncio.to_thread(console.reader.transitions, alert_id)
    notes = await asyncio.to_thread(console.reader.comments, "alert", alert_id)
    device = console.runner.devices.get(alert.device_id)
    points = console.readings.series(alert.device_id)
    drawn = spec(alert.kind).chart_type if alert.kind in KINDS else float
    coded = drawn not in (float, bool)  # a code (a lock's event): listed, not drawn
    numeric = [] if coded else points
    events_list = [(t.local_time(ts, console.timezone, seconds=True), code_of(alert.kind, v))
                   for ts, v in points][-20:] if coded else []
    svg = None
    if numeric:
        svg = chart.render(numeric, console.timezone, t.gettext("Recent readings of {device}", device=alert.device_id),
                           UNITS.get(alert.kind, ""), alert.threshold, step=drawn is bool)
    silenced = console._silenced([alert]).get(alert.id, False)
    incident = console.incident_of(alert_id)
    target = alert_target(alert)
    events = f"{PREFIX}/events?{urlencode({'page': f'alert:{alert_id}', 'since': console.hub.seq})}"
    return console.page(
        request, session, "alert.html", page="alert", alert=alert, row=alert_row(t, console.timezone, alert, silenced),
        history=history, comments=notes, device=device, chart=svg, lock_events=events_list,
        actions=alert_actions(user, alert), incident=incident,
        may_comment=bool(authorize(user, "comment", target)),
        may_silence=alert.status not in TERMINAL_STATUSES and may_silence(console, user, alert),
        events_url=events, finished=alert.status in TERMINAL_STATUSES)


async def incident_page(request: web.Request) -> web.Response:
    signed = await signed_in(request)
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
        return forbidden(request, console, session, "view_incident", "incident", incident_id, decision.reason)
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


