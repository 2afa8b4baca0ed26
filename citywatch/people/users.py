"""Accounts: named people and systems with a role, a scope and a bearer token.

Stored in registry.db (table `users`) beside the devices: both are "who may connect", the CLI
writes the file and the runner reads it live (an account added, disabled or rotated applies to the
next request), and backups already carry it. Every change is audited in the same transaction
(audit.py, registry.db's chain).

Tokens: `cwt.<public id>.<secret>`, printed once. The public id (16 hex digits) finds the account;
the secret (secrets.token_urlsafe(32): 256 random bits) is checked against a salted HMAC-SHA256
(`hmac-sha256$<salt>$<digest>`, a random 16-byte salt per token) with hmac.compare_digest. A fast
hash is right here: a 256-bit random secret cannot be guessed or brute-forced offline, so a slow
KDF (scrypt, ~50 ms a request on the event loop) would buy nothing; a server-side pepper would be
one more file to back up whose loss locks everyone out. Nothing reversible is stored.

Built-in principals (not rows, names reserved): BOOTSTRAP, the old single API token (`api.token`,
`api.token_file` or `<data_dir>/api-token`): admin with the whole city, for setting up accounts and
for scripts; LOCAL, the CLI acting on the data dir's files directly (who can read those is an admin
already); DISPATCH_SYSTEM, the dispatch system's signed messages (POST /dispatch/events).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from citywatch.errors import CitywatchError
from citywatch.people import audit
from citywatch.people.audit import LOCAL_ADMIN, Actor, Entry
from citywatch.sinks.database import open_database

ROLES = ("admin", "operator", "field", "installer", "dispatch")
SCOPE_KEYS = ("city", "district", "community", "grid")  # the grid hierarchy, widest first
TOKEN_PREFIX = "cwt"
TOUCH_EVERY_S = 60.0  # user_activity is written at most this often per account
NAME_RE = re.compile(r"[\w.@-]{1,64}")  # letters (any script), digits, _ . @ -

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    scope TEXT NOT NULL,
    teams TEXT NOT NULL,
    token_id TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""
# When each account was last used: in state.db, which the runner writes anyway. Writing it into
# registry.db would make every runner's registry cache reload all devices (data_version changes).
ACTIVITY_SCHEMA = """
CREATE TABLE IF NOT EXISTS user_activity (
    name TEXT PRIMARY KEY,
    last_used_at REAL NOT NULL
);
"""


class UserError(CitywatchError):
    """An account operation failed (unknown name, duplicate, bad role or scope)."""


class User(msgspec.Struct, frozen=True, kw_only=True):
    """An account as the policy and the audit see it (never its token or hash).

    `scope`: key (city, district, community, grid) -> allowed values; every key given must match
    (values within a key are alternatives); empty = the whole city. `teams`: the teams a field user
    belongs to (an alert assigned to one of them is theirs). `kind`: account (a row), or one of the
    built-in principals (bootstrap, local, system)."""

    name: str
    role: str
    scope: dict[str, list[str]] = {}
    teams: list[str] = []
    disabled: bool = False
    created_at: float = 0.0
    created_by: str = ""
    last_used_at: float | None = None
    token_id: str = ""
    kind: str = "account"

    @property
    def shared(self) -> bool:
        """A credential used by several people (the bootstrap token, a dispatch system account): the
        `by` of its requests names the person it acts for; a personal account's name is the actor."""
        return self.kind != "account" or self.role == "dispatch"

    def public(self) -> dict[str, Any]:
        """For listings and the audit: everything but the token's public id."""
        body: dict[str, Any] = msgspec.to_builtins(self)
        body.pop("token_id", None)
        return body


BOOTSTRAP = User(name="bootstrap-admin", role="admin", kind="bootstrap")
LOCAL = User(name=LOCAL_ADMIN, role="admin", kind="local")
DISPATCH_SYSTEM = User(name="dispatch-system", role="dispatch", kind="system")
RESERVED = frozenset(u.name for u in (BOOTSTRAP, LOCAL, DISPATCH_SYSTEM))


# -- validation ----------------------------------------------------------------------------------


def check_name(name: str, what: str = "name") -> str:
    if not NAME_RE.fullmatch(name):
        raise UserError(f"{what} {name!r}: 1-64 letters, digits, _ . @ or - (no spaces)")
    return name


def _value(key: str, value: str) -> str:
    value = value.strip()
    if not value or not value.isprintable() or len(value) > 200:
        raise UserError(f"scope {key}={value!r}: a value is 1-200 printable characters")
    return value


def parse_scope(specs: Sequence[str]) -> dict[str, list[str]]:
    """`--scope district=Nanhu,grid=G0012` (repeatable, merged): key -> sorted values."""
    scope: dict[str, set[str]] = {}
    for spec in specs:
        for part in spec.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in SCOPE_KEYS:
                raise UserError(f"scope {part.strip()!r}: use KEY=VALUE with KEY one of {', '.join(SCOPE_KEYS)}")
            scope.setdefault(key, set()).add(_value(key, value))
    return {key: sorted(scope[key]) for key in SCOPE_KEYS if key in scope}


def scope_text(scope: Mapping[str, Sequence[str]]) -> str:
    """`district=Nanhu grid=G1|G2`, or `whole city`."""
    return " ".join(f"{k}={'|'.join(v)}" for k, v in scope.items()) or "whole city"


def check_account(name: str, role: str, scope: Mapping[str, Sequence[str]], teams: Sequence[str]) -> None:
    check_name(name)
    if name in RESERVED:
        raise UserError(f"name {name!r} is reserved for a built-in principal")
    if role not in ROLES:
        raise UserError(f"role {role!r}: one of {', '.join(ROLES)}")
    if role == "admin" and scope:
        raise UserError("an admin has the whole city: no --scope")
    if teams and role != "field":
        raise UserError("--team is for field users (their assigned alerts)")
    for team in teams:
        _value("team", team)


# -- tokens --------------------------------------------------------------------------------------


def new_token() -> tuple[str, str, str]:
    """(token to hand out, its public id, the hash to store)."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return f"{TOKEN_PREFIX}.{token_id}.{secret}", token_id, hash_secret(secret)


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest()
    return f"hmac-sha256${salt.hex()}${digest}"


def secret_matches(secret: str, stored: str) -> bool:
    """Constant time in the secret (hmac.compare_digest over equal-length digests)."""
    try:
        scheme, salt_hex, digest = stored.split("$")
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    if scheme != "hmac-sha256":
        return False
    given = hmac.new(salt, secret.encode("utf-8", "replace"), hashlib.sha256).hexdigest()
    return hmac.compare_digest(given, digest)


def split_token(token: str) -> tuple[str, str] | None:
    """(public id, secret) of a well-formed account token, else None."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not re.fullmatch(r"[0-9a-f]{16}", parts[1]) or not parts[2]:
        return None
    return parts[1], parts[2]


_DUMMY_HASH = hash_secret("not a real secret")


# -- the book ------------------------------------------------------------------------------------


_COLUMNS = "name, role, scope, teams, disabled, created_at, created_by, token_id"


def _row(row: tuple[Any, ...]) -> User:
    name, role, scope, teams, disabled, created_at, created_by, token_id = row
    return User(name=name, role=role, scope=json.loads(scope), teams=json.loads(teams), disabled=bool(disabled),
                created_at=created_at, created_by=created_by, token_id=token_id)


class AuthResult(msgspec.Struct, frozen=True):
    """What a presented token is: `user` when it authenticates; else why not (`reason`), and the
    account it names when known (a disabled account's token: the refusal is audited for it)."""

    user: User | None
    reason: str = ""
    named: User | None = None


def registry_db(data_dir: Path) -> Path:
    from citywatch.devices.registry import registry_path

    return registry_path(data_dir)


class UserBook:
    """Accounts on one connection to registry.db. Every change is one transaction with its audit
    record. `check`: integrity-check the file at open (CLI: the users table; the API once)."""

    def __init__(self, path: Path, check: bool | Sequence[str] = ("users",)) -> None:
        self.path = path
        self.conn = open_database(path, SCHEMA, check=check)
        audit.ensure_schema(self.conn)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    # -- reading -------------------------------------------------------------------------------

    def get(self, name: str) -> User | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM users WHERE name = ?", (name,)).fetchone()
        return _row(row) if row else None

    def require(self, name: str) -> User:
        user = self.get(name)
        if user is None:
            raise UserError(f"no user {name}")
        return user

    def all(self) -> list[User]:
        return [_row(r) for r in self.conn.execute(f"SELECT {_COLUMNS} FROM users ORDER BY name")]

    # -- changes (each audited) -----------------------------------------------------------------

    def add(self, name: str, role: str, actor: Actor, scope: Mapping[str, Sequence[str]] | None = None,
            teams: Sequence[str] = ()) -> tuple[User, str]:
        """Create an account; returns it and its token (shown once, never stored)."""
        scope = {k: list(v) for k, v in (scope or {}).items()}
        check_account(name, role, scope, teams)
        token, token_id, token_hash = new_token()
        now = time.time()
        with self._transaction() as conn:
            try:
                conn.execute("INSERT INTO users (name, role, scope, teams, token_id, token_hash, disabled, created_at,"
                             " created_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                             (name, role, json.dumps(scope), json.dumps(list(teams)), token_id, token_hash, now,
                              actor.user if not actor.on_behalf_of else f"{actor.user} ({actor.on_behalf_of})", now))
            except sqlite3.IntegrityError:
                raise UserError(f"user {name} already exists") from None
            user = self._require_in(conn, name)
            audit.append(conn, Entry(actor, "user.add", "user", name, None, user.public(), at=now))
        return user, token

    def _require_in(self, conn: sqlite3.Connection, name: str) -> User:
        row = conn.execute(f"SELECT {_COLUMNS} FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UserError(f"no user {name}")
        return _row(row)

    def _change(self, name: str, actor: Actor, action: str, sql: str, args: tuple[Any, ...]) -> User:
        now = time.time()
        with self._transaction() as conn:
            before = self._require_in(conn, name)
            conn.execute(f"UPDATE users SET {sql}, updated_at = ? WHERE name = ?", (*args, now, name))
            after = self._require_in(conn, name)
            audit.append(conn, Entry(actor, action, "user", name, before.public(), after.public(), at=now))
        return after

    def set_disabled(self, name: str, disabled: bool, actor: Actor) -> User:
        """A disabled account's token is refused (401) from its next request."""
        return self._change(name, actor, "user.disable" if disabled else "user.enable", "disabled = ?",
                            (int(disabled),))

    def update(self, name: str, actor: Actor, role: str | None = None,
               scope: Mapping[str, Sequence[str]] | None = None, teams: Sequence[str] | None = None) -> User:
        current = self.require(name)
        new_role = current.role if role is None else role
        new_scope = current.scope if scope is None else {k: list(v) for k, v in scope.items()}
        new_teams = current.teams if teams is None else list(teams)
        check_account(name, new_role, new_scope, new_teams)
        return self._change(name, actor, "user.update", "role = ?, scope = ?, teams = ?",
                            (new_role, json.dumps(new_scope), json.dumps(new_teams)))

    def rotate(self, name: str, actor: Actor) -> tuple[User, str]:
        """A new token; the old one is refused from now on."""
        token, token_id, token_hash = new_token()
        user = self._change(name, actor, "user.rotate", "token_id = ?, token_hash = ?", (token_id, token_hash))
        return user, token

    def remove(self, name: str, actor: Actor) -> User:
        now = time.time()
        with self._transaction() as conn:
            before = self._require_in(conn, name)
            conn.execute("DELETE FROM users WHERE name = ?", (name,))
            audit.append(conn, Entry(actor, "user.remove", "user", name, before.public(), None, at=now))
        return before

    # -- authentication -------------------------------------------------------------------------

    def authenticate(self, token: str) -> AuthResult:
        """The account a presented token belongs to. The secret is compared in constant time; an
        unknown id costs the same hash, so timing says nothing about which ids exist."""
        parts = split_token(token)
        if parts is None:
            return AuthResult(None, "not a citywatch token")
        token_id, secret = parts
        row = self.conn.execute(f"SELECT {_COLUMNS}, token_hash FROM users WHERE token_id = ?",
                                (token_id,)).fetchone()
        if row is None:
            secret_matches(secret, _DUMMY_HASH)
            return AuthResult(None, "unknown token")
        user = _row(row[:-1])
        if not secret_matches(secret, row[-1]):
            return AuthResult(None, "wrong token secret", user)
        if user.disabled:
            return AuthResult(None, f"user {user.name} is disabled", user)
        return AuthResult(user)


class Activity:
    """When accounts were last used (`user_activity` in state.db, on the runner's connection)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        conn.executescript(ACTIVITY_SCHEMA)
        self.conn = conn
        self._touched: dict[str, float] = {}

    def touch(self, name: str, now: float) -> None:
        """At most once a TOUCH_EVERY_S per account; best effort: a busy database is skipped, never
        waited for on the event loop."""
        if now - self._touched.get(name, 0.0) < TOUCH_EVERY_S or self.conn.in_transaction:
            return
        self._touched[name] = now
        busy = self.conn.execute("PRAGMA busy_timeout").fetchone()[0]
        try:
            self.conn.execute("PRAGMA busy_timeout=50")
            self.conn.execute("INSERT INTO user_activity VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET"
                              " last_used_at = MAX(last_used_at, excluded.last_used_at)", (name, now))
        except sqlite3.OperationalError:
            pass
        finally:
            self.conn.execute(f"PRAGMA busy_timeout={int(busy)}")


def last_used(state_db: Path) -> dict[str, float]:
    """Account name -> last use, read only (empty when the runner never served anyone)."""
    if not state_db.exists():
        return {}
    conn = sqlite3.connect(state_db.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
    try:
        return dict(conn.execute("SELECT name, last_used_at FROM user_activity").fetchall())
    except sqlite3.OperationalError:  # no such table yet
        return {}
    finally:
        conn.close()
