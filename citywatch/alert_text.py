"""Alert messages in the reader's language, rendered at presentation time from the stored alert.

Rules build their English message on the per-reading hot path (`Finding.message`) and it is stored
as is; nothing there is translated. Each message has the shape of one template below (an English
message id with named fields): `message_key` recognises the template and takes the fields back out
of the stored text, and `localize` renders the same template's translation with those fields. So the
key and fields come from data every alert already carries (rule and message, in the store, the
archive, webhooks and the Kafka changelog), and old alerts render too.

tests/test_alert_text.py reads every message the code can build (each `Finding(...)` message and the
messages handed to lock alarms and offline findings, from the source) and checks that each has its
template here, so a rule's new or changed wording fails a test until it is added. A message that
matches no template is shown in English, as stored: never lost, never an error.

Field values that are words (the noise period, a water level, a sensor field) are translated too;
numbers keep the digits the rule wrote.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from citywatch.i18n import N_, Translator
from citywatch.kinds import specs
from citywatch.labels import NP_

# key -> English template, for the rules every kind has; each kind adds its own (KindSpec.messages).
# The key is the rule, or rule.variant where a rule says different things.
TEMPLATES: dict[str, str] = {
    "generic_anomaly": N_("unusual {field} for this device: {value} (anomaly score {score}, alerting at 0.50)"),
    "battery_low": N_("battery at {value}%"),
    "battery_low.lock": N_("{kind} reports low battery"),
    "battery_drain": N_("battery draining {drain}%/day, usually {usual}%/day"),
    "reporting_interval": N_("reporting about every {every} s, usually every {usual} s"),
    "device_offline": N_("no data for {silent} s (expected every {interval} s)"),
    "device_offline.last_will": N_("device announced offline (last will)"),
    "device_offline.online": N_("device announced online"),
    "device_offline.reporting": N_("reporting again"),
    "device_flooding": N_("more than {limit} unusable messages within {window} s (see citywatch deadletters)"),
    "sensor_jump": N_("sensor fault suspected: {field} jumped from {last} to {value}, more than the {allowed} "
                      "physically plausible"),
    "sensor_stuck": N_("sensor fault suspected: {field} stuck at {value} for {readings} readings ({minutes} min)"),
    **{key: template for kind in specs().values() for key, template in kind.messages.items()},
}

# Fields whose values are words: (pgettext context, the words).
_WORDS: dict[str, tuple[str, frozenset[str]]] = {
    # the fields a sensor-fault message names: every kind's numeric payload fields, and battery
    "field": ("reading field", frozenset({NP_("reading field", "battery")} | {
        f.name for kind in specs().values() for f in kind.payload if f.type is float})),
    "kind": ("kind", frozenset(kind.label for kind in specs().values())),
    **{name: words for kind in specs().values() for name, words in kind.words.items()},
}
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@functools.cache
def _pattern(template: str) -> re.Pattern[str]:
    """The template as an anchored regex: each field a lazy group, a repeated field a back-reference."""
    out, seen, pos = [], set(), 0
    for m in _PLACEHOLDER.finditer(template):
        out.append(re.escape(template[pos:m.start()]))
        name = m.group(1)
        out.append(f"(?P={name})" if name in seen else f"(?P<{name}>.+?)")
        seen.add(name)
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out), re.DOTALL)


def _candidates(rule: str | None) -> list[str]:
    """The templates to try, most specific (most literal text) first."""
    keys = list(TEMPLATES)
    if rule:
        keys = [k for k in TEMPLATES if k == rule or k.startswith(rule + ".")] or keys
    return sorted(keys, key=lambda k: -len(_PLACEHOLDER.sub("", TEMPLATES[k])))


def message_key(message: str, rule: str | None = None) -> tuple[str, dict[str, str]] | None:
    """(template key, fields) of a stored English message, or None when no template has its shape.
    `rule` narrows the search to that rule's templates (and settles which one when shapes overlap)."""
    for key in _candidates(rule):
        m = _pattern(TEMPLATES[key]).fullmatch(message)
        if m:
            return key, m.groupdict()
    return None


def render(t: Translator, key: str, fields: Mapping[str, Any]) -> str:
    """The template `key` in `t`'s language with `fields` (word values translated)."""
    words = {name: t.pgettext(_WORDS[name][0], str(value))
             if name in _WORDS and str(value) in _WORDS[name][1] else value for name, value in fields.items()}
    return t.gettext(TEMPLATES[key], **words)


def localize(t: Translator, message: str, rule: str | None = None) -> str:
    """A rule's stored English message in `t`'s language; as stored when no template fits."""
    if not message:
        return message
    found = message_key(message, rule)
    return render(t, *found) if found else message


def alert_message(t: Translator, alert: Any) -> str:
    """An alert's message (a model.Alert or its JSON dict) in `t`'s language."""
    if isinstance(alert, Mapping):
        return localize(t, str(alert.get("message") or ""), alert.get("rule"))
    return localize(t, alert.message, alert.rule)


def suspect_reason(t: Translator, reason: str) -> str:
    """An alarm's suspicion (the fault rule's message) in `t`'s language."""
    return localize(t, reason)


# -- transition reasons -----------------------------------------------------------------------------
# Why an alert or incident changed (Transition.reason, IncidentTransition.reason), as the alert engine
# (detectors/lifecycle.py) and the incident book (loop/incidents.py) write them. Fields named
# `message` hold a rule's message, `reason` a nested reason, `rule`/`severity`/`status`/`level` codes;
# `by`, `assignee` and `why` are people's words, shown as given.
REASONS: dict[str, str] = {
    "cleared": N_("condition cleared"),
    "confirmed": N_("confirmed by a plausible reading"),
    "raised": N_("severity raised"),
    "raised_suspect": N_("severity raised; sensor fault suspected"),
    "flapping": N_("opened and resolved {count} times within {minutes} min"),
    "acknowledged": N_("acknowledged by {by}"),
    "resolved": N_("resolved by {by}"),
    "assigned": N_("assigned to {assignee} by {by}"),
    "on_site": N_("{assignee} on site"),
    "rectified_confirm": N_("rectified; awaiting confirmation"),
    "rectified_verify": N_("rectified; verifying against the device's readings for {minutes} min"),
    "rejected": N_("rejected by {by}: {why}"),
    "closed_confirmed": N_("closed: confirmed by {by}"),
    "verifying_again": N_("readings resumed; verifying again"),
    "reopened": N_("condition returned during verification: {message}"),
    "quiet": N_("quiet after flapping"),
    "escalated": N_("{reason}; escalated to the {level} level"),
    "review_missed": N_("not acknowledged or assigned within the review deadline"),
    "response_missed": N_("not closed within the response deadline"),
    "response_repeat": N_("still not closed {hours} h after the response deadline"),
    "verified": N_("verified: the device's readings stayed clear for {minutes} min ({count} readings)"),
    "overdue": N_("no reading from the device during the {minutes} min follow-up window"),
    "incident_opened": N_("{rule} on {device}: first alert of this incident"),
    "incident_joined": N_("{rule} on {device} joined the incident while it was {status}"),
    "incident_raised": N_("severity raised to {severity} by {rule} on {device}"),
    "incident_closed": N_("all {count} member alerts resolved or closed"),
    "incident_dispatch": N_("{reason} by {by} ({count} of {total} member alerts)"),
    "incident_assigned": N_("assigned to {assignee}"),
    "incident_on_site": N_("on site"),
    "incident_rectified": N_("rectified"),
    "incident_rejected": N_("rejected: {why}"),
}
_CODE_FIELDS = {"rule": "rule", "severity": "severity", "status": "alert status", "level": "escalation level"}


def _literal_length(template: str) -> int:
    return len(_PLACEHOLDER.sub("", template))


# Most specific first: "assigned to X by Y (2 of 3 member alerts)" is the incident's wording, not
# "assigned to X by Y" with a long Y.
_REASON_ORDER = sorted(REASONS, key=lambda k: -_literal_length(REASONS[k]))


def reason_key(reason: str) -> tuple[str, dict[str, str]] | None:
    """(REASONS key, fields) of a stored transition reason, or None when none has its shape."""
    for key in _REASON_ORDER:
        m = _pattern(REASONS[key]).fullmatch(reason)
        if m:
            return key, m.groupdict()
    return None


def transition_reason(t: Translator, reason: str) -> str:
    """A transition's reason in `t`'s language: the engine's and the incident book's own wording,
    the rule messages inside them, and a suspicion (a fault rule's message); else as stored."""
    if not reason:
        return reason
    found = reason_key(reason)
    if found is None:
        return localize(t, reason)  # an `opened` transition's reason is the fault message, if any
    key, fields = found
    out: dict[str, str] = {}
    for name, value in fields.items():
        if name == "message":
            out[name] = localize(t, value)
        elif name == "reason":
            out[name] = transition_reason(t, value)
        elif name in _CODE_FIELDS:
            from citywatch.labels import label

            out[name] = label(t, _CODE_FIELDS[name], value)
        else:
            out[name] = value
    return t.gettext(REASONS[key], **out)
