"""The audit trail: who did what, to what, when, from where, and how it ended; append-only and
tamper-evident.

Each database file that people's actions change carries its own chain, written in the same SQLite
transaction as the change it records (a record exists exactly when the change does):

* state.db: alert actions (ack, resolve, assign, on-site, rectify, reject, close), silences, the
  dispatch system's messages, and refused attempts (403) of known users;
* registry.db: device registry changes and account changes (the CLI writes that file, the runner
  only reads it; one file per transaction keeps each record atomic with its change).

A record's `hash` is sha256 over its canonical JSON (sorted keys, no spaces, UTF-8) including the
previous record's hash (`prev`); the first record's `prev` is GENESIS, or the hash of the last
record moved to the archive (`audit_anchor`, see archive.py). Editing, inserting or deleting a
record in the middle breaks the chain at that point, and `verify` names the first broken link.
Triggers refuse UPDATE, and DELETE outside an archive batch, so only someone bypassing citywatch
(e.g. sqlite3 after dropping the triggers) can change records; the chain then shows it. Deleting
the newest records is only visible against a head noted elsewhere: `verify` prints the head.
"""

from __future__ import annotations

import getpass
import gzip
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

GENESIS = "0" * 64
LOCAL_ADMIN = "local-admin"  # the CLI working on the data dir's files as the local admin (users.LOCAL)
OUTCOMES = ("ok", "refused", "error")
MAX_VALUE_BYTES = 4096  # before/after larger than this are stored as a digest ("small" values only)
MAX_TEXT = 500  # reason, user agent and the other free texts are cut to this many characters

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    username TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    before TEXT,
    after TEXT,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    on_behalf_of TEXT NOT NULL,
    source TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_user ON audit (username);
CREATE INDEX IF NOT EXISTS audit_target ON audit (target_type, target_id);
CREATE TABLE IF NOT EXISTS audit_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_archive_pending (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    file TEXT NOT NULL,
    size_before INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
WHEN OLD.seq > COALESCE((SELECT last_seq FROM audit_archive_pending), 0)
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: records leave only through the archive'); END;
"""

COLUMNS = ("seq", "at", "username", "role", "action", "target_type", "target_id", "before", "after", "outcome",
           "reason", "on_behalf_of", "source", "user_agent", "prev", "hash")


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the audit tables and triggers if missing (not inside a transaction: DDL commits)."""
    conn.executescript(SCHEMA)


# -- who and from where ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """Who acts, as the audit records it: the authenticated account (`user`, `role`), the person a
    shared credential acts for (`on_behalf_of`: the bootstrap token's or the dispatch system's
    `by`), and where the request came from (`source`: the client address, or "cli")."""

    user: str
    role: str
    source: str
    user_agent: str = ""
    on_behalf_of: str = ""

    @classmethod
    def cli(cls, on_behalf_of: str | None = None) -> Actor:
        """The CLI working on the data dir's files: the local admin, for the OS user running it."""
        who = on_behalf_of if on_behalf_of is not None else os_user()
        return cls(LOCAL_ADMIN, "admin", "cli", f"citywatch cli (pid {os.getpid()}, uid {os.getuid()})", who)


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


@dataclass(frozen=True)
class Entry:
    """One record before it is chained: what the caller knows."""

    actor: Actor
    action: str
    target_type: str = ""
    target_id: str = ""
    before: Any = None
    after: Any = None
    outcome: str = "ok"
    reason: str = ""
    at: float = field(default_factory=time.time)


class Record(NamedTuple):
    """A stored record (`before`/`after` as their canonical JSON text, or None)."""

    seq: int
    at: float
    username: str
    role: str
    action: str
    target_type: str
    target_id: str
    before: str | None
    after: str | None
    outcome: str
    reason: str
    on_behalf_of: str
    source: str
    user_agent: str
    prev: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        """The record for people and machines: values decoded, time also as RFC 3339 UTC."""
        body = self._asdict()
        body["time"] = utc_text(self.at)
        body["before"] = None if self.before is None else json.loads(self.before)
        body["after"] = None if self.after is None else json.loads(self.after)
        return body


def utc_text(at: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-11-27T08:00:00.123Z."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _value(value: Any) -> str | None:
    """A before/after value as canonical JSON; a large one as its size and digest instead."""
    if value is None:
        return None
    text = canonical(value)
    data = text.encode()
    if len(data) > MAX_VALUE_BYTES:
        return canonical({"truncated": True, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return text


def _text(value: str) -> str:
    return str(value)[:MAX_TEXT]


def record_hash(fields: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of every field but `hash` (`prev` included: the chain)."""
    return hashlib.sha256(canonical({k: v for k, v in fields.items() if k != "hash"}).encode()).hexdigest()


# -- writing ---------------------------------------------------------------------------------------


def head(conn: sqlite3.Connection) -> tuple[int, str]:
    """The chain's last (seq, hash): the newest record, else the archive anchor, else (0, GENESIS)."""
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if row is not None:
        return int(row[0]), str(row[1])
    anchor = conn.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone()
    return (int(anchor[0]), str(anchor[1])) if anchor else (0, GENESIS)


def append(conn: sqlite3.Connection, entry: Entry) -> Record:
    """Chain and insert one record inside the caller's write transaction (BEGIN IMMEDIATE holds the
    write lock, so no other process can append between reading the head and inserting)."""
    if not conn.in_transaction:
        raise RuntimeError("audit.append must run inside the change's transaction")
    if entry.outcome not in OUTCOMES:
        raise ValueError(f"outcome {entry.outcome!r}: one of {OUTCOMES}")
    last_seq, prev = head(conn)
    a = entry.actor
    fields: dict[str, Any] = {
        "seq": last_seq + 1, "at": float(entry.at), "username": _text(a.user), "role": a.role,
        "action": entry.action, "target_type": entry.target_type, "target_id": _text(entry.target_id),
        "before": _value(entry.before), "after": _value(entry.after), "outcome": entry.outcome,
        "reason": _text(entry.reason), "on_behalf_of": _text(a.on_behalf_of), "source": _text(a.source),
        "user_agent": _text(a.user_agent), "prev": prev,
    }
    fields["hash"] = record_hash(fields)
    conn.execute(f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                 tuple(fields[c] for c in COLUMNS))
    return Record(**fields)


def record(conn: sqlite3.Connection, entry: Entry) -> Record:
    """Append in a transaction of its own: for what is not a store change (a refusal, a failed
    attempt) or happens outside one."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        written = append(conn, entry)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return written


TxHook = Callable[[sqlite3.Connection, Any], None]


def hook(entry: Entry, after: Callable[[Any], Any] | None = None,
         target_id: Callable[[Any], str] | None = None) -> TxHook:
    """A hook for a store transaction (AlertStore.commit's `also`, SilenceBook's `also`): appends
    `entry`, its `after` (and target id, when only known then) taken from what the transaction
    writes (an Output, a Silence)."""

    def write(conn: sqlite3.Connection, subject: Any) -> None:
        done = entry
        if after is not None:
            done = replace(done, after=after(subject))
        if target_id is not None:
            done = replace(done, target_id=target_id(subject))
        append(conn, done)

    return write


# -- reading ---------------------------------------------------------------------------------------


def records(conn: sqlite3.Connection, after_seq: int = 0, batch: int = 1000) -> Iterator[Record]:
    """Every record after `after_seq`, in order, read in batches."""
    last = after_seq
    while True:
        rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                            (last, batch)).fetchall()
        if not rows:
            return
        for row in rows:
            yield Record(*row)
        last = rows[-1][0]


def query(conn: sqlite3.Connection, since: float | None = None, user: str | None = None,
          target: str | None = None, action: str | None = None, limit: int = 1000) -> list[Record]:
    """Records matching every filter given, oldest first (the newest `limit` of them). `target` is
    `type:id` or an id alone."""
    where: list[str] = ["1"]
    args: list[Any] = []
    if since is not None:
        where.append("at >= ?")
        args.append(since)
    if user:
        where.append("username = ?")
        args.append(user)
    if action:
        where.append("action = ?")
        args.append(action)
    if target:
        kind, sep, ident = target.partition(":")
        if sep and ident:
            where.append("target_type = ? AND target_id = ?")
            args += [kind, ident]
        else:
            where.append("target_id = ?")
            args.append(target)
    rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM audit WHERE {' AND '.join(where)}"
                        " ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()
    return [Record(*row) for row in reversed(rows)]


# -- verifying -------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What `verify` found: records checked, the head, and the first broken link if any."""

    name: str
    checked: int = 0
    archived: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    broken_seq: int | None = None
    problem: str = ""
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_seq is None and not self.problem

    def to_json(self) -> dict[str, Any]:
        return {"chain": self.name, "ok": self.ok, "checked": self.checked, "archived": self.archived,
                "head": {"seq": self.head_seq, "hash": self.head_hash}, "broken_seq": self.broken_seq,
                "problem": self.problem, "note": self.note}


def _check(rows: Iterable[dict[str, Any]], verdict: Verdict, seq: int, prev: str, where: str) -> tuple[int, str]:
    """Walk `rows` (dicts of the stored fields) from (seq, prev); stops at the first broken link."""
    for fields in rows:
        if verdict.broken_seq is not None:
            break
        got = int(fields["seq"])
        if got != seq + 1:
            verdict.broken_seq = seq + 1
            verdict.problem = (f"{where}: record {seq + 1} is missing (next is {got}): records were deleted"
                               if got > seq + 1 else f"{where}: record {got} appears again or out of order")
            break
        if fields["prev"] != prev:
            verdict.broken_seq = got
            verdict.problem = f"{where}: record {got} does not follow record {seq} (its prev hash differs)"
            break
        if record_hash(fields) != fields["hash"]:
            verdict.broken_seq = got
            verdict.problem = f"{where}: record {got} was changed (its hash does not match its contents)"
            break
        seq, prev = got, str(fields["hash"])
        verdict.checked += 1
    return seq, prev


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one archive file (every gzip member), as stored."""
    with gzip.open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def verify(conn: sqlite3.Connection, name: str, archives: Iterable[Path] = ()) -> Verdict:
    """Check the chain: first the archived records (files in order), then the table, which must
    continue from the last archived hash (the anchor). The first broken link is reported."""
    verdict = Verdict(name)
    seq, prev = 0, GENESIS
    for path in archives:
        before = verdict.checked
        seq, prev = _check(read_records(path), verdict, seq, prev, f"archive {path.name}")
        verdict.archived += verdict.checked - before
        if verdict.broken_seq is not None:
            return verdict
    anchor = conn.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone()
    if anchor is not None:
        if verdict.archived and (int(anchor[0]), str(anchor[1])) != (seq, prev):
            verdict.problem = (f"the archive ends at record {seq} but state continues from record {anchor[0]}: "
                               "an archive file is missing or was changed")
            verdict.broken_seq = seq + 1
            return verdict
        if not verdict.archived:  # moved to cold storage, or lost: say so, the rest is still checked
            verdict.note = f"records 1-{anchor[0]} were archived; no archive files found to check them"
        seq, prev = int(anchor[0]), str(anchor[1])
    columns = COLUMNS
    rows = (dict(zip(columns, r, strict=True)) for r in records(conn, 0))
    seq, prev = _check(rows, verdict, seq, prev, "table")
    verdict.head_seq, verdict.head_hash = seq, prev
    return verdict


# -- the device registry ---------------------------------------------------------------------------


def device_hook(actor: Actor, rename: dict[str, str] | None = None,
                reason: str = "") -> Callable[[sqlite3.Connection, str, str, Any, Any], None]:
    """A Registry `on_change` hook (devices/registry.py ChangeHook) recording each device change as
    `device.<verb>` in registry.db's chain, in the change's transaction (`rename`: e.g. add -> import)."""

    def write(conn: sqlite3.Connection, verb: str, device_id: str, before: Any, after: Any) -> None:
        if verb == "rotate":  # the password changed; its hash is never recorded
            before, after = {"password": "replaced"}, {"password": "new, printed once"}
        action = f"device.{(rename or {}).get(verb, verb)}"
        append(conn, Entry(actor, action, "device", device_id, before, after, reason=reason))

    return write
