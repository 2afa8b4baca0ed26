"""Notifications to people through Apprise (WeCom, DingTalk, Feishu, e-mail, SMS gateways, json://...).

A route with `apprise: [urls]` instead of `url` (config.WebhookRoute) sends the transitions it matches
to people. Each Apprise URL is its own endpoint of the webhook outbox, `<route>#<n>`, so the outbox's
machinery is theirs too: rows written in the batch's transaction (the rendered title and body,
notify_text.py), one lane per (endpoint, alert) in order, retries with backoff and jitter, silences
holding them, `citywatch webhooks list/resend`. One target per endpoint also means a failing mailbox
never makes a working DingTalk group get a message twice.

Apprise is synchronous: `Notifier.send` runs it in a worker thread (asyncio.to_thread), at most the
lane's `webhooks.concurrency` at once per endpoint, each on a fresh Apprise object (no state shared
between threads). Apprise's own network timeouts bound a send (HTTP services connect/read 4 s by
default, SMTP 15 s; the URL's `cto=`/`rto=` change them); no call deadline is set on top, because an
abandoned send could still go out and then be repeated.

An Apprise URL holds secrets (passwords, bot keys, tokens). It is never stored (the outbox row's url
column says `apprise:<scheme>`), never logged: `secret_values` takes from each URL what Apprise itself
marks private, the password, header values and long path or query parts, and a filter on Apprise's
(and urllib3's) logger masks them at the source, so they reach neither the log nor a row's
last_error; `citywatch.logs` masks them in every other log line too; `citywatch config` shows
`**********`.

There is no idempotency header in most of these services. A crash (kill -9, power) between Apprise
handing the message over and the row being marked delivered leaves the row pending, so the next start
sends it again: the person gets the same message twice, with the same title and body, including its
`Ref: <transition id>` line. Only the sends in flight at the crash repeat, each once (per endpoint at
most `webhooks.concurrency`); a stop (SIGTERM, Ctrl-C) waits for sends in flight and records them, so
it repeats nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from citywatch.config import WebhookRoute
from citywatch.sinks.apprise_urls import REDACT, scheme_of, secret_values

log = logging.getLogger(__name__)

ENDPOINT_MARK = "#"  # <route name>#<n>: the n-th Apprise URL of a route (from 1)
URL_PREFIX = "apprise:"  # the outbox row's url column: apprise:<scheme>, never the URL itself
ERROR_LIMIT = 2048
_HTTP_STATUS = re.compile(r"\berror=(\d{3})\b")  # Apprise's HTTP services: "... error=404."
_UNREACHABLE = re.compile(r"connection error|timed? ?out|unreachable|refused", re.IGNORECASE)


class Notification(msgspec.Struct, kw_only=True):
    """An outbox row's body for a person: rendered at enqueue (notify_text.py), sent as it is.
    `transition` lets a silence's release tell an opening from a later transition (loop/silences.py)."""

    id: str  # the transition id: stable, shown to the person as `Ref:`
    type: str  # alert.<transition> | incident.<transition>
    transition: str
    subject: str  # the alert or incident id (the ordering lane)
    language: str
    title: str
    body: str
    link: str  # the console page
    notify_type: str = "info"  # Apprise's: info | success | warning | failure


encode_notification = msgspec.json.Encoder().encode
decode_notification = msgspec.json.Decoder(Notification).decode


class Target(NamedTuple):
    """One Apprise URL of a route: the outbox endpoint it is."""

    endpoint: str
    route: str
    url: str  # secret: never logged, never stored
    scheme: str


class Attempt(NamedTuple):
    """What one send came to. `status`: an HTTP status the service answered, when Apprise said which."""

    ok: bool
    status: int | None = None
    error: str | None = None
    unreachable: bool = False  # nothing answered (connection refused, timeout): the endpoint is down
    unusable: bool = False  # the target cannot be sent to at all (no longer configured, not loadable)


def endpoint_name(route: str, n: int) -> str:
    return f"{route}{ENDPOINT_MARK}{n}"


def targets(route: WebhookRoute) -> list[Target]:
    """The endpoints of a route to people (apprise_file already read into `apprise` by load_settings)."""
    return [Target(endpoint_name(route.name, n), route.name, url.get_secret_value(), scheme_of(url.get_secret_value()))
            for n, url in enumerate(route.apprise, 1)]


def row_url(target: Target) -> str:
    """What the outbox row's url column holds for a notification: the kind of target, no secret."""
    return f"{URL_PREFIX}{target.scheme}"


def notify_type(severity: str, terminal: bool) -> str:
    """Apprise's notification type (colour, icon in many services) for a transition."""
    if terminal:
        return "success"
    return {"critical": "failure", "warning": "warning"}.get(severity, "info")


class Notifier:
    """Sends notification rows to the Apprise targets of the configured routes."""

    def __init__(self, routes: Sequence[WebhookRoute]) -> None:
        self.targets = {t.endpoint: t for route in routes if route.notifies for t in targets(route)}
        for target in self.targets.values():
            secret_values(target.url)  # masked in Apprise's and urllib3's log records from now on

    def has(self, endpoint: str) -> bool:
        return endpoint in self.targets

    async def send(self, endpoint: str, body: bytes) -> Attempt:
        """Send one row's notification (in a worker thread); what came of it."""
        target = self.targets.get(endpoint)
        if target is None:
            return Attempt(False, error=f"no Apprise target {endpoint!r} is configured any more (the route or its "
                                        "URL at that position was removed): configure it and resend", unusable=True)
        try:
            note = decode_notification(body)
        except msgspec.DecodeError as exc:
            return Attempt(False, error=f"not a notification row: {exc}", unusable=True)
        return await asyncio.to_thread(self._send_now, target, note)

    def _send_now(self, target: Target, note: Notification) -> Attempt:
        from apprise import Apprise, AppriseResultStatus, NotifyFormat

        apobj = Apprise()
        if not apobj.add(target.url):
            return Attempt(False, error="Apprise cannot load the URL", unusable=True)
        result = apobj.notify(body=note.body, title=note.title, notify_type=note.notify_type,
                              body_format=NotifyFormat.TEXT)
        if result.status == AppriseResultStatus.SUCCESS:
            return Attempt(True)
        lines = [f"{e.level}: {e.message}" for e in result.logs()]
        text = REDACT.mask(" | ".join(lines) or f"Apprise: {result.status.name}")[:ERROR_LIMIT]
        statuses = [int(s) for s in _HTTP_STATUS.findall(text)]
        status = statuses[-1] if statuses else None
        timeout = result.status == AppriseResultStatus.TIMEOUT
        return Attempt(False, status=status, error=text,
                       unreachable=status is None and (timeout or bool(_UNREACHABLE.search(text))))
