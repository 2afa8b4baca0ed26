"""`citywatch users ...` (accounts) and `citywatch audit ...` (the trail and its check).

Like `citywatch devices`, these work on the data dir's files directly, also while `citywatch run`
runs (it reads accounts live): whoever can write those files is the local admin, and every change
is audited as `local-admin` on behalf of the OS user. Tokens are printed once, alone on stdout
(`TOKEN=$(citywatch users add ...)`), never stored or logged.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from citywatch.errors import CitywatchError
from citywatch.people.users import ROLES, User, parse_scope, scope_text
from citywatch.terminal import for_terminal


def _settings() -> Any:
    return click.get_current_context().find_root().obj.settings


def _friendly(fn: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except CitywatchError as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


def _used(found: list[User]) -> list[User]:
    """The accounts with their last use (kept by the runner in state.db)."""
    import msgspec

    from citywatch.people.users import last_used
    from citywatch.sinks.store import store_path

    used = last_used(store_path(_settings().data_dir))
    return [msgspec.structs.replace(u, last_used_at=used.get(u.name)) for u in found]


@contextmanager
def _book() -> Iterator[Any]:
    from citywatch.people.users import UserBook, registry_db

    book = UserBook(registry_db(_settings().data_dir))
    try:
        yield book
    finally:
        book.close()


def _actor() -> Any:
    from citywatch.people.audit import Actor

    return Actor.cli()


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _line(user: User) -> str:
    fields = (user.name, user.role, scope_text(user.scope), ",".join(user.teams) or "-",
              "disabled" if user.disabled else "enabled", f"last used {_when(user.last_used_at)}")
    return "\t".join(for_terminal(f) for f in fields)


def _issued(user: User, token: str, what: str) -> None:
    click.echo(f"{what} {user.name} ({user.role}, {scope_text(user.scope)}); its token, shown only now:", err=True)
    click.echo(token)


# -- users ------------------------------------------------------------------------------------------


@click.group()
def users() -> None:
    """Accounts of people and systems: a role, a scope, a token (the API and console check both)."""


_role = click.option("--role", type=click.Choice(ROLES), help="admin: everything; operator: alerts, incidents and "
                     "silences in scope; field: what is assigned to them (and views in scope); installer: devices; "
                     "dispatch: the dispatch system's account.")
_scope = click.option("--scope", "scopes", multiple=True, metavar="KEY=VALUE[,KEY=VALUE]",
                      help="Where the account acts, e.g. district=Nanhu,grid=G0012 (keys city, district, community, "
                           "grid; repeatable; a key given twice allows either value). None: the whole city.")
_team = click.option("--team", "teams", multiple=True, help="A team the field user belongs to (repeatable).")


@users.command("add")
@click.argument("name")
@_role
@_scope
@_team
@_friendly
def users_add(name: str, role: str | None, scopes: tuple[str, ...], teams: tuple[str, ...]) -> None:
    """Create an account; print its token once."""
    if role is None:
        raise click.UsageError("give --role")
    with _book() as book:
        user, token = book.add(name, role, _actor(), parse_scope(scopes), teams)
    _issued(user, token, "added")


@users.command("list")
@click.option("--json", "as_json", is_flag=True)
@_friendly
def users_list(as_json: bool) -> None:
    """Every account: name, role, scope, teams, status, last use."""
    with _book() as book:
        found = _used(book.all())
    if as_json:
        click.echo(json.dumps([u.public() for u in found]))
        return
    for user in found:
        click.echo(_line(user))
    click.echo(f"{len(found)} users (and the bootstrap admin: api.token / <data_dir>/api-token)", err=True)


@users.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@_friendly
def users_show(name: str, as_json: bool) -> None:
    """One account (never its token)."""
    with _book() as book:
        (user,) = _used([book.require(name)])
    if as_json:
        click.echo(json.dumps(user.public()))
        return
    info = {**user.public(), "scope": scope_text(user.scope), "teams": ", ".join(user.teams) or "-",
            "created_at": _when(user.created_at), "last_used_at": _when(user.last_used_at),
            "token": f"cwt.{user.token_id}.…"}
    for key, value in info.items():
        click.echo(f"{key}: {for_terminal(str(value))}")


@users.command("update")
@click.argument("name")
@_role
@_scope
@click.option("--whole-city", is_flag=True, help="Remove the scope.")
@_team
@click.option("--no-teams", is_flag=True, help="Remove every team.")
@_friendly
def users_update(name: str, role: str | None, scopes: tuple[str, ...], whole_city: bool, teams: tuple[str, ...],
                 no_teams: bool) -> None:
    """Change an account's role, scope (replaced as a whole) or teams; its token stays."""
    scope = {} if whole_city else parse_scope(scopes) if scopes else None
    new_teams = [] if no_teams else list(teams) if teams else None
    if role is None and scope is None and new_teams is None:
        raise click.UsageError("nothing to change")
    with _book() as book:
        user = book.update(name, _actor(), role=role, scope=scope, teams=new_teams)
    click.echo(f"updated {_line(user)}")


@users.command("disable")
@click.argument("name")
@_friendly
def users_disable(name: str) -> None:
    """Refuse the account's token (401) from its next request; kept for the record."""
    with _book() as book:
        book.set_disabled(name, True, _actor())
    click.echo(f"disabled {name}")


@users.command("enable")
@click.argument("name")
@_friendly
def users_enable(name: str) -> None:
    with _book() as book:
        book.set_disabled(name, False, _actor())
    click.echo(f"enabled {name}")


@users.command("rotate")
@click.argument("name")
@_friendly
def users_rotate(name: str) -> None:
    """A new token (printed once); the old one is refused from now on."""
    with _book() as book:
        user, token = book.rotate(name, _actor())
    _issued(user, token, "new token for")


@users.command("remove")
@click.argument("name")
@click.confirmation_option(prompt="Remove the account? (its actions stay in the audit trail)")
@_friendly
def users_remove(name: str) -> None:
    with _book() as book:
        book.remove(name, _actor())
    click.echo(f"removed {name}")


# -- audit ------------------------------------------------------------------------------------------


def _readonly(path: Path) -> sqlite3.Connection | None:
    """A read-only connection (safe beside a running runner), or None if the file or the audit
    table does not exist yet."""
    if not path.exists():
        return None
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'").fetchone() is None:
        conn.close()
        return None
    return conn


def _chains() -> list[tuple[str, Path, list[Path]]]:
    """(name, database, archive files) of each audit chain."""
    from citywatch.people.archive import archive_files
    from citywatch.people.users import registry_db
    from citywatch.sinks.store import store_path

    data_dir = _settings().data_dir
    return [("state", store_path(data_dir), archive_files(data_dir)), ("registry", registry_db(data_dir), [])]


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    from citywatch.report import parse_duration

    try:
        return time.time() - parse_duration(text)
    except CitywatchError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r}: a duration (90m, 24h, 7d) or a time (2026-11-27T08:00:00Z)",
                                 param_hint="--since") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _show(chain: str, r: Any) -> str:
    who = f"{r.username} ({r.role})" + (f" for {r.on_behalf_of}" if r.on_behalf_of else "")
    target = f"{r.target_type} {r.target_id}".strip() or "-"
    fields = (_when(r.at), f"{chain}#{r.seq}", who, r.action, target, r.outcome, f"from {r.source}", r.reason)
    return "\t".join(for_terminal(str(f)) for f in fields).rstrip("\t")


@click.group(invoke_without_command=True)
@click.option("--since", help="Only records since then: 24h, 7d, or a time (UTC unless it has an offset).")
@click.option("--user", help="Only this account's records.")
@click.option("--target", help="Only about this: TYPE:ID (alert:al_12, device:gas-1, user:li) or an id.")
@click.option("--action", help="Only this action (ack, resolve, silence, device.update, user.add, ...).")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(min=1), help="The newest this many.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def audit(ctx: click.Context, since: str | None, user: str | None, target: str | None, action: str | None,
          limit: int, as_json: bool) -> None:
    """Who did what, when, from where, and how it ended (oldest first). `audit verify` checks the chain."""
    if ctx.invoked_subcommand is not None:
        return
    from citywatch.people.audit import query

    found: list[tuple[str, Any]] = []
    for name, path, _ in _chains():
        conn = _readonly(path)
        if conn is None:
            continue
        try:
            found += [(name, r) for r in query(conn, _since(since), user, target, action, limit)]
        finally:
            conn.close()
    found = sorted(found, key=lambda f: (f[1].at, f[0], f[1].seq))[-limit:]
    if as_json:
        click.echo(json.dumps([{"chain": name, **r.to_json()} for name, r in found], ensure_ascii=False))
        return
    for name, r in found:
        click.echo(_show(name, r))
    click.echo(f"{len(found)} records", err=True)


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True)
def audit_verify(as_json: bool) -> None:
    """Walk each chain (state.db with its archive files, registry.db) and report the first broken
    link. Exit code 1 when one is broken. Note the heads printed: deleting the newest records is
    only visible against a head kept elsewhere."""
    from citywatch.people.audit import Verdict, verify

    verdicts = []
    for name, path, archives in _chains():
        conn = _readonly(path)
        if conn is None:
            verdicts.append(Verdict(name))
            continue
        try:
            verdicts.append(verify(conn, name, archives))
        finally:
            conn.close()
    if as_json:
        click.echo(json.dumps([v.to_json() for v in verdicts]))
    else:
        for v in verdicts:
            if v.ok:
                click.echo(f"{v.name}: ok, {v.checked} records ({v.archived} in the archive); head #{v.head_seq} "
                           f"{v.head_hash}" + (f"; note: {v.note}" if v.note else ""))
            else:
                click.echo(f"{v.name}: BROKEN at record #{v.broken_seq}: {v.problem} ({v.checked} records before it "
                           "are intact)")
    if not all(v.ok for v in verdicts):
        sys.exit(1)
