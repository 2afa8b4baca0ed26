"""Comments on alerts and incidents: what people write while they work a case.

Stored in state.db (table `comments`) with the audit record of the comment (action `comment`, the
text as its `after`) in the same transaction (citywatch/people/audit.py), so a comment exists exactly
when its record does. Comments are append-only, like the trail: nobody edits or deletes one. They
are kept with their case: retention's archive of old closed alerts does not move them yet (they stay
in state.db; a comment is small).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from citywatch.errors import CitywatchError
from citywatch.people import audit
from citywatch.people.audit import Entry

MAX_CHARS = 2000
TARGETS = ("alert", "incident")

SCHEMA = """
CREATE TABLE IF NOT EXISTS comments (
    id INTEGER PRIMARY KEY,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    at REAL NOT NULL,
    author TEXT NOT NULL,
    role TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS comments_target ON comments (target_type, target_id, at);
CREATE TRIGGER IF NOT EXISTS comments_no_update BEFORE UPDATE ON comments
BEGIN SELECT RAISE(ABORT, 'comments are append-only'); END;
"""


class CommentRefused(CitywatchError):
    """The comment cannot be stored as given (empty, too long, control characters)."""


@dataclass(frozen=True)
class Comment:
    id: int
    target_type: str
    target_id: str
    at: float
    author: str
    role: str
    body: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "target_type": self.target_type, "target_id": self.target_id, "at": self.at,
                "time": audit.utc_text(self.at), "author": self.author, "role": self.role, "body": self.body}


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def clean(text: str) -> str:
    """The text as stored: stripped, line breaks kept (\\r\\n as \\n), no other control characters."""
    body = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not body:
        raise CommentRefused("a comment needs some text")
    if len(body) > MAX_CHARS:
        raise CommentRefused(f"a comment is at most {MAX_CHARS} characters ({len(body)} given)")
    if any(not (c.isprintable() or c == "\n") for c in body):
        raise CommentRefused("a comment may not contain control characters")
    return body


def add(conn: sqlite3.Connection, target_type: str, target_id: str, text: str, entry: Entry,
        clock: Callable[[], float]) -> Comment:
    """Store a comment and its audit record (`entry`: who, from where; completed here) atomically."""
    if target_type not in TARGETS:
        raise ValueError(f"target_type {target_type!r}: one of {TARGETS}")
    body = clean(text)
    at = clock()
    conn.execute("BEGIN IMMEDIATE")
    try:
        cur = conn.execute("INSERT INTO comments (target_type, target_id, at, author, role, body)"
                           " VALUES (?, ?, ?, ?, ?, ?)",
                           (target_type, target_id, at, entry.actor.user, entry.actor.role, body))
        comment = Comment(int(cur.lastrowid or 0), target_type, target_id, at, entry.actor.user, entry.actor.role,
                          body)
        audit.append(conn, Entry(entry.actor, "comment", target_type, target_id, None,
                                 {"comment_id": comment.id, "body": body}, at=at))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return comment


def of(conn: sqlite3.Connection, target_type: str, target_id: str, limit: int = 500) -> list[Comment]:
    """A case's comments, oldest first (the newest `limit`)."""
    rows = conn.execute("SELECT id, target_type, target_id, at, author, role, body FROM comments"
                        " WHERE target_type = ? AND target_id = ? ORDER BY at DESC, id DESC LIMIT ?",
                        (target_type, target_id, limit)).fetchall()
    return [Comment(*row) for row in reversed(rows)]
