"""`citywatch alerts assign|on-site|rectify|reject|close`: the dispatch actions from the command line.

Thin wrappers over citywatch.actions.act: through the running owner's API (bearer token) when a
`citywatch run` holds the data dir, else applied to the store directly under the data dir's lock.
"""

from __future__ import annotations

import os
from typing import Any

import click

from citywatch.errors import CitywatchError


def _who() -> str:
    return os.environ.get("USER", "cli")


def _act(alert_id: str, action: str, by: str, **detail: Any) -> None:
    from citywatch.actions import act

    settings = click.get_current_context().find_root().obj.settings
    try:
        result = act(settings, alert_id, action, by, **detail)
    except CitywatchError as exc:
        raise click.ClickException(str(exc)) from None
    from citywatch import i18n
    from citywatch.i18n import _
    from citywatch.labels import label

    t = i18n.current()
    alert = result.get("alert")
    status = alert.get("status") if isinstance(alert, dict) else result.get("status")
    transition = label(t, "transition", result.get("transition", action))
    done = _("{transition}: {alert}", transition=transition, alert=alert_id)
    click.echo(done + (_(" (now {status})", status=label(t, "alert status", status)) if status else ""))


_by = click.option("--by", default=_who, help="Who reports it (default: $USER).")


@click.command("assign")
@click.argument("alert_id")
@click.option("--to", "assignee", required=True, help="The team or person the alert is assigned to.")
@_by
def assign(alert_id: str, assignee: str, by: str) -> None:
    """Assign an alert to a team or person (meets the review deadline)."""
    _act(alert_id, "assign", by, assignee=assignee)


@click.command("on-site")
@click.argument("alert_id")
@_by
def on_site(alert_id: str, by: str) -> None:
    """The assigned team is on site."""
    _act(alert_id, "on-site", by)


@click.command("rectify")
@click.argument("alert_id")
@click.option("--note", required=True, help="What was done.")
@click.option("--evidence", multiple=True, metavar="URL", help="A link to a photo or report (repeatable).")
@_by
def rectify(alert_id: str, note: str, evidence: tuple[str, ...], by: str) -> None:
    """The team has rectified the problem: a measurable alert is then verified against its device's
    own readings (closed when they stay clear for the rule's follow-up window, reopened if not)."""
    _act(alert_id, "rectify", by, note=note, evidence=list(evidence))


@click.command("reject")
@click.argument("alert_id")
@click.option("--reason", required=True, help="Why the team rejects it (e.g. not our district).")
@_by
def reject(alert_id: str, reason: str, by: str) -> None:
    """The assigned team rejects the alert: back to open for re-dispatch."""
    _act(alert_id, "reject", by, reason=reason)


@click.command("close")
@click.argument("alert_id")
@_by
def close(alert_id: str, by: str) -> None:
    """Confirm a rectification no sensor can verify (a forced door), or one whose device stayed silent."""
    _act(alert_id, "close", by)


def add_commands(group: click.Group) -> None:
    """Add the dispatch actions to the `citywatch alerts` group."""
    for command in (assign, on_site, rectify, reject, close):
        group.add_command(command)
