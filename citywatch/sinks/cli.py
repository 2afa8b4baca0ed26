"""`citywatch webhooks list/resend` and `citywatch influx replay-rejected`: people's tools for what a
sink could not deliver. Thin wrappers; the work is in webhooks.py and influxrejected.py."""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

import click

from citywatch import i18n
from citywatch.httpserve import printable
from citywatch.i18n import _, pgettext
from citywatch.labels import label


def _settings() -> Any:
    """The settings of the top-level `citywatch` group's context."""
    return click.get_current_context().find_root().obj.settings


def _when(ts: float | None) -> str:
    """Local time in the city's zone with the offset (the settings are loaded by then)."""
    return i18n.local_time(ts, seconds=True)


def _outbox(read_only: bool) -> sqlite3.Connection:
    from citywatch.sinks.store import store_path

    path = store_path(_settings().data_dir)
    if not path.exists():
        raise click.ClickException(_("no alert store at {path}: has `citywatch run` ever run with this data_dir?",
                                     path=path))
    if read_only:
        return sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    from citywatch.sinks.outbox import ensure_schema

    ensure_schema(conn)
    return conn


# -- webhooks -------------------------------------------------------------------------------------

@click.group()
def webhooks() -> None:
    """Webhooks not delivered: list them, send dead ones again."""


@webhooks.command("list")
@click.option("--dead", "dead_only", is_flag=True, help="Only dead ones (given up on), not those still retried.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def webhooks_list(dead_only: bool, limit: int, as_json: bool) -> None:
    """Webhooks not delivered yet (pending, retrying, dead), oldest first, with the last answer."""
    import msgspec

    from citywatch.sinks.webhooks import undelivered

    conn = _outbox(read_only=True)
    try:
        rows = undelivered(conn, dead_only, limit)
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        rows = []
    finally:
        conn.close()
    if as_json:
        click.echo(msgspec.json.encode([row._asdict() for row in rows]).decode())
        return
    t = i18n.current()
    click.echo("\t".join((pgettext("column", "webhook"), pgettext("column", "endpoint"), pgettext("column", "status"),
                          pgettext("column", "attempts"), pgettext("column", "last attempt"),
                          pgettext("column", "last error"))), err=True)  # stderr: stdout stays the rows
    for r in rows:
        error = printable((r.last_error or "").replace("\n", " "), 120)
        attempts = _("attempts {n}", n=r.attempts)
        last = _("last {time} HTTP {status}", time=_when(r.last_attempt_at), status=r.last_status or "-")
        status = label(t, "delivery status", r.status)
        click.echo(f"{r.webhook_id}\t{r.endpoint}\t{status}\t{attempts}\t{last}\t{error}")
    click.echo(_("{n} webhook(s) dead", n=len(rows)) if dead_only else _("{n} webhook(s) not delivered", n=len(rows)),
               err=True)


@webhooks.command("resend")
@click.option("--id", "webhook_ids", multiple=True, help="This webhook (its webhook-id); repeatable.")
@click.option("--alert", "alert_ids", multiple=True, help="Every dead webhook of this alert; repeatable.")
@click.option("--endpoint", "endpoint_names", multiple=True, help="Every dead webhook of this endpoint "
              "(route name, 'default' for webhooks.url); repeatable.")
@click.option("--dead", "all_dead", is_flag=True, help="Every dead webhook.")
def webhooks_resend(webhook_ids: tuple[str, ...], alert_ids: tuple[str, ...], endpoint_names: tuple[str, ...],
                    all_dead: bool) -> None:
    """Set dead webhooks back to pending (filters combine). They keep their webhook-id, so a receiver
    that got one already drops it; a running `citywatch run` sends them within a second, else the
    next one does. A resent transition may arrive after later ones of its alert: each carries `at`."""
    from citywatch.sinks.webhooks import resend

    if not (webhook_ids or alert_ids or endpoint_names or all_dead):
        raise click.UsageError(_("say which: --id, --alert, --endpoint, or --dead for every dead webhook"))
    conn = _outbox(read_only=False)
    try:
        n = resend(conn, webhook_ids, alert_ids, endpoint_names)
    finally:
        conn.close()
    if not n:
        click.echo(_("no dead webhook matches"), err=True)
        return
    click.echo(_("{n} webhook(s) set back to pending; a running `citywatch run` sends them within a second", n=n))


# -- influx ---------------------------------------------------------------------------------------

@click.group()
def influx() -> None:
    """InfluxDB: lines it refused, kept in <data_dir>/influx-rejected/."""


@influx.command("replay-rejected")
@click.option("--dry-run", is_flag=True, help="Only say what is there and why it was refused.")
def influx_replay_rejected(dry_run: bool) -> None:
    """Send influx-rejected/ again (after a fix or a schema change): files written in full are
    removed, lines still refused stay with the new reason. Exit status 1 while anything remains."""
    from citywatch.sinks.influxrejected import rejected_files, replay
    from citywatch.sinks.influxwrite import InfluxWriter

    settings = _settings()
    root = settings.data_dir / "influx-rejected"
    if dry_run:
        report = replay(root, None)
        click.echo(_("{files} file(s), {lines} line(s) in {dir}", files=report.files, lines=report.lines, dir=root))
        reasons: dict[str, int] = {}
        for path in rejected_files(root):
            err = path.with_suffix(".err")
            for line in err.read_text(errors="replace").splitlines() if err.exists() else []:
                why = line.split(": ", 1)[1] if line.startswith("line ") and ": " in line else line
                reasons[why] = reasons.get(why, 0) + 1
        for why, n in sorted(reasons.items(), key=lambda item: -item[1]):
            click.echo(f"  {n}\t{printable(why)}")
        return
    if not settings.influx.url:
        raise click.ClickException(_("influx.url is not set: nowhere to send the lines"))
    writer = InfluxWriter(settings.influx)
    try:
        report = replay(root, writer)
    finally:
        writer.close()
    click.echo(_("{files} file(s), {lines} line(s): written {written} line(s), {done} file(s) done",
                 files=report.files, lines=report.lines, written=report.written, done=report.files_done))
    if report.unreachable:
        click.echo(_("InfluxDB did not take the writes ({error}): stopped there; the rest is left as it was",
                     error=printable(report.unreachable)))
    if report.failing:
        click.echo(_("still refused: {n} line(s), kept in {dir}", n=report.failing, dir=root))
        for why, n in sorted(report.still_failing.items(), key=lambda item: -item[1]):
            click.echo(f"  {n}\t{printable(why)}")
    if report.unreachable or report.failing:
        sys.exit(1)
