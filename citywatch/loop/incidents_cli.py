"""`citywatch incidents list|show`: incidents as committed in state.db (read only, safe while
`citywatch run` runs). Human output escapes device text for the terminal; --json is exact."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
import msgspec

from citywatch.model import TERMINAL_STATUSES, Incident
from citywatch.terminal import for_terminal


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _store() -> Any:
    from citywatch.sinks.store import AlertStore, store_path

    settings = click.get_current_context().find_root().obj.settings
    path = store_path(settings.data_dir)
    if not path.exists():
        raise click.ClickException(f"no alert store at {path}: has `citywatch run` ever run with this data_dir?")
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
    for i in found:
        fields = (i.id, i.status, i.severity, _key(i), f"members {_open_members(i)}/{len(i.members)} open",
                  f"opened {_when(i.opened_at)}", f"assignee {i.assignee}" if i.assignee else "")
        click.echo("\t".join(for_terminal(f) for f in fields).rstrip("\t"))
    click.echo(f"{len(found)} incidents", err=True)


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
        raise click.ClickException(f"no incident {incident_id}")
    if as_json:
        body = msgspec.to_builtins(incident)
        body["history"] = msgspec.to_builtins(
            [{"id": t.id, "transition": t.transition, "at": t.at, "reason": t.reason} for t in history])
        click.echo(msgspec.json.encode(body).decode())
        return
    t = for_terminal
    click.echo(f"incident {t(incident.id)}: {t(incident.status)}, {t(incident.severity)}, {t(incident.group)}")
    click.echo(f"key: {t(_key(incident))}")
    click.echo(f"opened {_when(incident.opened_at)}, last grew {_when(incident.last_joined_at)}, "
               f"closed {_when(incident.closed_at)}")
    click.echo(f"assignee: {t(incident.assignee or '-')}")
    click.echo(f"members ({_open_members(incident)} of {len(incident.members)} open):")
    for m in incident.members:
        place = str(m.device.get("address") or m.device.get("grid") or "")
        fields = (m.alert_id, m.status, m.severity, m.rule, m.device_id, f"opened {_when(m.joined_at)}", place)
        click.echo("  " + "\t".join(t(f) for f in fields))
    click.echo("transitions:")
    for h in history:
        click.echo("  " + "\t".join((_when(h.at), t(h.transition), t(h.reason))))
