"""What a person reads: the title and body of a notification, in their language and their city's time.

Rendered when the transition is written to the outbox (in the batch's transaction), so the message
says what the alert was at that moment, however late it is sent. The texts are gettext messages
(citywatch/locale, zh-CN and en, through citywatch.i18n); codes become labels (citywatch.labels), the
rule's message is the reader's language (citywatch.alert_text), times are local with their UTC offset
(i18n.local_time). Every message carries the link to its page in the operator console
(`<public_url>/console/alerts/<id>`, `/console/incidents/<id>`) and its transition id (`Ref:`), which
is also how a person tells a repeat after a crash (notify.py) from a new message.

Data is not translated: device ids, district and grid names, addresses, people's names.
"""

from __future__ import annotations

from collections.abc import Iterable

from citywatch.alert_text import alert_message, suspect_reason
from citywatch.i18n import Translator, translator
from citywatch.labels import NP_, label
from citywatch.model import TERMINAL_STATUSES, Alert, Incident, IncidentTransition, Transition
from citywatch.sinks.notify import Notification, notify_type

MEMBERS_SHOWN = 10  # an incident's body lists this many member alerts, then "... and N more"

# Incident hazard groups (config incidents.groups): the built-in ones have names; others show as they are.
_GROUPS = frozenset({NP_("hazard group", "gas"), NP_("hazard group", "water"), NP_("hazard group", "noise"),
                     NP_("hazard group", "parking"), NP_("hazard group", "security"), NP_("hazard group", "fire"),
                     NP_("hazard group", "device_health")})
# An incident's own transitions read differently from an alert's ("incident opened", not "alert raised");
# the dispatch ones (assigned, on_site, ...) are the alert's words.
_INCIDENT_TRANSITIONS = frozenset({NP_("incident transition", "opened"), NP_("incident transition", "updated"),
                                   NP_("incident transition", "closed")})


def console_link(public_url: str, what: str, subject_id: str) -> str:
    """The console page of an alert (`what` = alerts) or incident (`incidents`)."""
    return f"{public_url.rstrip('/')}/console/{what}/{subject_id}"


def place(device: dict[str, object]) -> str:
    """Where, widest first: city / district / community / grid (those the device has)."""
    parts = [str(device.get(key) or "").strip() for key in ("city", "district", "community", "grid")]
    return " / ".join(p for p in parts if p) or "-"


def _group(t: Translator, group: str) -> str:
    return t.pgettext("hazard group", group) if group in _GROUPS else group


def _lines(*lines: str | None) -> str:
    return "\n".join(line for line in lines if line)


def alert_notification(transition: Transition, language: str, timezone: str, public_url: str) -> Notification:
    """An alert transition as a person reads it."""
    t = translator(language)
    a: Alert = transition.alert
    severity = label(t, "severity", a.severity)
    rule = label(t, "rule", a.rule)
    what = label(t, "transition", transition.transition)
    device = str(a.device.get("id") or a.device_id)
    where = place(a.device)
    link = console_link(public_url, "alerts", a.id)
    title = t.gettext("[{severity}] {rule} {transition}: {device}, {place}", severity=severity, rule=rule,
                      transition=what, device=device, place=where)
    status = label(t, "alert status", a.status)
    address = str(a.device.get("address") or "").strip()
    body = _lines(
        alert_message(t, a),
        t.gettext("Suspected sensor fault: {reason}", reason=suspect_reason(t, a.suspect_reason))
        if a.suspect else None,
        t.gettext("Note: {reason}", reason=transition.reason) if transition.reason else None,
        t.gettext("Status: {status}, assigned to {assignee}", status=status, assignee=a.assignee)
        if a.assignee else t.gettext("Status: {status}", status=status),
        t.gettext("Rule: {rule} · Severity: {severity}", rule=rule, severity=severity),
        t.gettext("Device: {device} ({kind})", device=device, kind=label(t, "kind", a.kind)),
        t.gettext("Place: {place}", place=where),
        t.gettext("Address: {address}", address=address) if address else None,
        t.gettext("Opened: {opened} · This change: {at}", opened=t.local_time(a.opened_at, timezone),
                  at=t.local_time(transition.at, timezone)),
        t.gettext("Review by: {review} · Respond by: {response}",
                  review=t.local_time(a.review_deadline, timezone),
                  response=t.local_time(a.response_deadline, timezone))
        if a.status not in TERMINAL_STATUSES and a.review_deadline else None,
        t.gettext("Open in the console: {link}", link=link),
        t.gettext("Ref: {id}", id=transition.id),
    )
    return Notification(id=transition.id, type=f"alert.{transition.transition}", transition=transition.transition,
                        subject=a.id, language=t.language, title=title, body=body, link=link,
                        notify_type=notify_type(a.severity, a.status in TERMINAL_STATUSES))


def _joined(values: Iterable[str]) -> str:
    return ", ".join(values) or "-"


def incident_notification(transition: IncidentTransition, language: str, timezone: str,
                          public_url: str) -> Notification:
    """An incident transition as a person reads it: how many alerts, where, the first members."""
    t = translator(language)
    i: Incident = transition.incident
    members = i.members
    severity = label(t, "severity", i.severity)
    group = _group(t, i.group)
    what = (t.pgettext("incident transition", transition.transition)
            if transition.transition in _INCIDENT_TRANSITIONS else label(t, "transition", transition.transition))
    places = sorted({place(m.device) for m in members})
    where = places[0] if len(places) == 1 else _joined(places)
    open_count = sum(1 for m in members if m.status not in TERMINAL_STATUSES)
    link = console_link(public_url, "incidents", i.id)
    title = t.ngettext("[{severity}] {group} incident {transition}: {count} alert, {place}",
                       "[{severity}] {group} incident {transition}: {count} alerts, {place}", len(members),
                       severity=severity, group=group, transition=what, count=len(members), place=where)
    shown = [f"- {m.device.get('id') or m.device_id}: {label(t, 'rule', m.rule)}, {label(t, 'severity', m.severity)}, "
             f"{label(t, 'alert status', m.status)}" for m in members[:MEMBERS_SHOWN]]
    more = len(members) - len(shown)
    body = _lines(
        t.ngettext("{count} alert, {open} still open", "{count} alerts, {open} still open", len(members),
                   count=len(members), open=open_count),
        t.gettext("Note: {reason}", reason=transition.reason) if transition.reason else None,
        t.gettext("Assigned to {assignee}", assignee=i.assignee) if i.assignee else None,
        t.gettext("Kinds: {kinds}", kinds=_joined(label(t, "kind", k) for k in sorted({m.kind for m in members}))),
        t.gettext("Place: {place}", place=where),
        t.gettext("Opened: {opened} · This change: {at}", opened=t.local_time(i.opened_at, timezone),
                  at=t.local_time(transition.at, timezone)),
        "\n".join(shown),
        t.gettext("... and {count} more", count=more) if more > 0 else None,
        t.gettext("Open in the console: {link}", link=link),
        t.gettext("Ref: {id}", id=transition.id),
    )
    return Notification(id=transition.id, type=f"incident.{transition.transition}", transition=transition.transition,
                        subject=i.id, language=t.language, title=title, body=body, link=link,
                        notify_type=notify_type(i.severity, i.status == "closed"))
