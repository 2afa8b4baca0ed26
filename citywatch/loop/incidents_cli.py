"""`citywatch incidents list|show`: incidents as committed in state.db (read only, safe while
`citywatch run` runs). Human output escapes device text for the terminal; --json is exact."""

from __future__ import annotations

from typing import Any

import click
import msgspec

from citywatch import i18n
from citywatch.i18n import _, ngettext, pgettext
from citywatch.labels import label
from citywatch.model import TERMINAL_STATUSES, Incident
from citywatch.terminal import for_terminal


def _when(ts: float | None) -> str:
    """Local time in the city's zone with the offset (the settings are loaded by then)."""
    return i18n.local_time(ts, seconds=True)


def _store() -> Any:
    from citywatch.sinks.store import AlertStore, store_path

    settings = click.get_current_context().find_root().obj.settings
    path = store_path(settings.data_dir)
    if not path.exists():
        raise click.ClickException(_("no alert store at {path}: has `citywatch run` ever run with this data_dir?",
                                     path=path))
    return AlertStore(path, check=("incidents", "incident_members", "incident_transitions"))


def _key(incident: Incident) -> str:
    return " ".join(f"{field}={value}" for field, value in incident.key.items())


def _open_members(incident: Incident) -> int:
    return sum(1 for m in incident.members if m.status not in TERMINAL_STATUSES)


@click.group()
def incidents() -> None:
    """Incidents: related alerts grouped into one case (incidents: in config.yaml)."""


@incidents.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include closed incidents.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
def incidents_list(show_all: bool, limit: int, as_json: bool) -> None:
    """Open incidents (newest first), with their members counted (open / all)."""
    store = _store()
    try:
        found = store.incidents(open_only=not show_all, limit=limit)
    finally:
        store.close()
    if as_json:
        click.echo(msgspec.json.encode(found).decode())
        return
    t = i18n.current()
    click.echo("\t".join((pgettext("column", "id"), pgettext("column", "status"), pgettext("column", "severity"),
                          pgettext("column", "key"), pgettext("column", "members"), pgettext("column", "opened"),
                          pgettext("column", "assignee"))), err=True)  # stderr: stdout stays the rows
    for i in found:
        fields = (i.id, label(t, "incident status", i.status), label(t, "severity", i.severity), _key(i),
                  _("members {open}/{all} open", open=_open_members(i), all=len(i.members)),
                  _("opened {time}", time=_when(i.opened_at)),
                  _("assignee {assignee}", assignee=i.assignee) if i.assignee else "")
        click.echo("\t".join(for_terminal(f) for f in fields).rstrip("\t"))
    click.echo(ngettext("{n} incident", "{n} incidents", len(found), n=len(found)), err=True)


@incidents.command("show")
@click.argument("incident_id")
@click.option("--json", "as_json", is_flag=True)
def incidents_show(incident_id: str, as_json: bool) -> None:
    """One incident: its state, every member alert, and its transitions."""
    store = _store()
    try:
        incident = store.incident(incident_id)
        history = store.incident_transitions(incident_id) if incident is not None else []
    finally:
        store.close()
    if incident is None:
        raise click.ClickException(_("no incident {incident}", incident=incident_id))
    if as_json:
        body = msgspec.to_builtins(incident)
        body["history"] = msgspec.to_builtins(
            [{"id": t.id, "transition": t.transition, "at": t.at, "reason": t.reason} for t in history])
        click.echo(msgspec.json.encode(body).decode())
        return
    from citywatch.alert_text import transition_reason

    t = for_terminal
    lang = i18n.current()
    click.echo(_("incident {incident}: {status}, {severity}, {group}", incident=t(incident.id),
                 status=label(lang, "incident status", incident.status),
                 severity=label(lang, "severity", incident.severity),
                 group=label(lang, "hazard group", t(incident.group))))
    click.echo(_("key: {key}", key=t(_key(incident))))
    click.echo(_("opened {opened}, last grew {grew}, closed {closed}", opened=_when(incident.opened_at),
                 grew=_when(incident.last_joined_at), closed=_when(incident.closed_at)))
    click.echo(_("assignee: {assignee}", assignee=t(incident.assignee or "-")))
    click.echo(_("members ({open} of {all} open):", open=_open_members(incident), all=len(incident.members)))
    for m in incident.members:
        place = str(m.device.get("address") or m.device.get("grid") or "")
        fields = (m.alert_id, label(lang, "alert status", m.status), label(lang, "severity", m.severity),
                  label(lang, "rule", m.rule), m.device_id, _("opened {time}", time=_when(m.joined_at)), place)
        click.echo("  " + "\t".join(t(f) for f in fields))
    click.echo(_("transitions:"))
    for h in history:
        click.echo("  " + "\t".join((_when(h.at), label(lang, "transition", t(h.transition)),
                                      t(transition_reason(lang, h.reason)))))
