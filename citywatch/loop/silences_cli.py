"""`citywatch silences add|list|end`: silences and maintenance windows from the command line.

One owner per data dir (as for `citywatch alerts ack`, citywatch/actions.py): while `citywatch run`
holds the data dir, the command goes through its API, so the runner's tick releases what a silence
held; otherwise it writes state.db directly, holding the data dir's lock meanwhile (a silence ended
that way releases its held webhooks at once; they go out with the next run).
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import click

from citywatch import i18n
from citywatch.config import Settings
from citywatch.datalock import DataDirBusy, DataDirLock
from citywatch.errors import CitywatchError
from citywatch.i18n import _, ngettext
from citywatch.labels import label
from citywatch.loop.silences import MATCHER_KEYS, SilenceRequest, parse_time, rfc3339

API_TIMEOUT_S = 10.0


def _owner(settings: Settings, holder: dict[str, Any], method: str, path: str, body: dict[str, Any] | None) -> Any:
    """Ask the running owner's API; CitywatchError with its answer when it refuses."""
    from citywatch.actions import RUNNER, _api_url, _http_error
    from citywatch.people.client import cli_token

    data_dir, pid = settings.data_dir, holder.get("pid", "?")
    command = holder.get("command") or "another citywatch process"
    if command != RUNNER:
        raise CitywatchError(f"{data_dir} is busy ({command}, pid {pid}); try again in a moment")
    if not holder.get("api"):
        raise CitywatchError(f"{RUNNER} (pid {pid}) owns {data_dir} but serves no API (api.enabled: false, or still "
                             "starting): enable its API or stop it, then try again")
    base = _api_url(str(holder["api"]))
    token = cli_token(settings)  # --token, $CITYWATCH_TOKEN, else the bootstrap admin's
    if token is None:
        raise CitywatchError(f"no API token to reach {RUNNER} (pid {pid}) at {base}: set api.token or "
                             "api.token_file as the runner has it")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise CitywatchError(_http_error(exc)) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CitywatchError(f"{RUNNER} (pid {pid}) owns {data_dir} but its API at {base} does not answer "
                             f"({reason}); try again, or stop the runner first") from None


def _call(settings: Settings, what: str, method: str, path: str, body: dict[str, Any] | None,
          direct: Any) -> Any:
    """Through the owner's API if a runner holds the data dir, else `direct(book)` under its lock."""
    lock = DataDirLock(settings.data_dir, f"citywatch silences {what}")
    try:
        lock.acquire()
    except DataDirBusy as busy:
        return _owner(settings, busy.holder, method, path, body)
    try:
        from citywatch.loop.silence_book import SilenceBook
        from citywatch.people.audit import ensure_schema
        from citywatch.sinks.store import AlertStore, store_path

        store = AlertStore(store_path(settings.data_dir), check=("silences", "webhook_outbox"))
        try:
            ensure_schema(store.conn)  # the local admin's changes are audited (direct(book) passes the hook)
            return direct(SilenceBook(store.conn, settings))
        except sqlite3.Error as exc:
            raise CitywatchError(f"cannot {what} the silence: {store.path}: {exc}") from None
        finally:
            store.close()
    finally:
        lock.release()


def _audited(action: str, by: str) -> Any:
    """The audit hook of the local admin's silence change, acting for `by` (direct mode only)."""
    from citywatch.people.api import silence_state
    from citywatch.people.audit import Actor, Entry, hook

    return hook(Entry(Actor.cli(by), action, "silence"), silence_state, lambda s: str(s.id))


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.find_root().obj.settings
    return settings


def _fail(exc: CitywatchError) -> click.ClickException:
    return click.ClickException(str(exc))


def _when(value: str | None) -> str:
    """An RFC 3339 time of the API as a local time with its offset (the city's zone)."""
    return i18n.local_time(datetime.fromisoformat(value).timestamp() if value else None)


def _show(s: dict[str, Any]) -> str:
    from citywatch.terminal import for_terminal

    return "\t".join(for_terminal(str(f)) for f in (
        s["id"], label(i18n.current(), "silence state", s["state"]), s["scope"],
        f"{_when(s['starts_at'])} .. {_when(s['ended_at'] or s['ends_at'])}", _("by {author}", author=s["author"]),
        s["reason"]))


@click.group()
def silences() -> None:
    """Silences and maintenance windows: alerts in scope are kept and shown, their webhooks held."""


@silences.command("add")
@click.option("--device", multiple=True, help="Device id (repeat for several).")
@click.option("--grid", multiple=True)
@click.option("--community", multiple=True, help="Community or street (the level above the grid).")
@click.option("--district", multiple=True)
@click.option("--city", multiple=True)
@click.option("--kind", multiple=True, help="gas, noise, water, parking or lock.")
@click.option("--rule", multiple=True, help="Rule name, e.g. noise_limit.")
@click.option("--start", default=None, help="When it starts (default now): ISO 8601, local time unless it has an "
              "offset, e.g. '2026-11-27 08:00' or 2026-11-27T00:00:00Z.")
@click.option("--end", default=None, help="When it ends (same format).")
@click.option("--for", "duration", default=None, help="How long instead of --end, e.g. 3h, 90m, 2d.")
@click.option("--reason", required=True, help="Why (kept and shown with it).")
@click.option("--by", default=lambda: os.environ.get("USER", "cli"), help="Who sets it.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def silences_add(ctx: click.Context, /, start: str | None, end: str | None, duration: str | None, reason: str,
                 by: str, as_json: bool, **matchers: tuple[str, ...]) -> None:
    """Silence alerts in a scope (every option given must match) from --start to --end (or --for)."""
    settings = _settings(ctx)
    given = {key: list(values) for key, values in matchers.items() if key in MATCHER_KEYS and values}
    body: dict[str, Any] = {**given, "reason": reason, "by": by}
    if start is not None:
        body["start"] = start
    if end is not None:
        body["end"] = end
    if duration is not None:
        body["duration"] = duration
    request = SilenceRequest(**body)
    if body.get("start") or body.get("end"):  # the API takes only times with an offset: give it ours
        local = ZoneInfo(settings.timezone)
        try:
            for key in ("start", "end"):
                if body.get(key) and body[key] != "now":
                    body[key] = rfc3339(parse_time(body[key], key, local))
        except CitywatchError as exc:
            raise _fail(exc) from None
    try:
        result = _call(settings, "add", "POST", "/silences", body,
                       lambda book: book.add(request, local=True, also=_audited("silence", by)).to_json(
                           book.clock()))
    except CitywatchError as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(_("silenced: {silence}", silence=_show(result)))
    if not result.get("covers_safety_rules"):
        click.echo(_("note: life-safety alarms in this scope (gas_level, water_depth, lock_forced_open, lock_tamper, "
                     "lock_brute_force) are still sent: only a silence of one device, at most silences.max_safety_h "
                     "long, holds them"), err=True)


@silences.command("list")
@click.option("--all", "everything", is_flag=True, help="Include silences that are over.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def silences_list(ctx: click.Context, everything: bool, as_json: bool) -> None:
    """Silences in force and scheduled (with --all: every one, newest first)."""
    settings = _settings(ctx)
    try:
        found = _call(settings, "list", "GET", "/silences" + ("?all=1" if everything else ""), None,
                      lambda book: [s.to_json(book.clock()) for s in book.listed(everything)])
    except CitywatchError as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps(found))
        return
    for s in found:
        click.echo(_show(s))
    click.echo(ngettext("{n} silence", "{n} silences", len(found), n=len(found)), err=True)


@silences.command("end")
@click.argument("silence_id")
@click.option("--by", default=lambda: os.environ.get("USER", "cli"), help="Who ends it.")
@click.pass_context
def silences_end(ctx: click.Context, silence_id: str, by: str) -> None:
    """End a silence now: what it held is sent (or dropped if the alert ended unseen)."""
    settings = _settings(ctx)

    def direct(book: Any) -> dict[str, Any]:
        silence, released = book.end(silence_id, by, also=_audited("silence", by))
        return {**silence.to_json(book.clock()), "released": released._asdict()}

    try:
        result = _call(settings, "end", "POST", f"/silences/{urllib.parse.quote(silence_id, safe='')}/end",
                       {"by": by}, direct)
    except CitywatchError as exc:
        raise _fail(exc) from None
    released = result.get("released", {})
    click.echo(_("ended: {silence}: {released} held webhooks released, {suppressed} suppressed (alert ended "
                 "unseen), {reheld} still held by another silence", silence=silence_id,
                 released=released.get("pending", 0), suppressed=released.get("suppressed", 0),
                 reheld=released.get("reheld", 0)))
