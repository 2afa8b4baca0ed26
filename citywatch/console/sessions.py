"""Server-side sessions of the operator console.

Signing in with an account's token (citywatch/people/users.py) creates a session: an opaque random
id (256 bits, `secrets.token_urlsafe`) that is all the browser holds, in an HttpOnly, SameSite=Strict
cookie (Secure over https). The token itself is never stored in the browser or here.

A session ends when it is unused for `console.session_idle_min`, `console.session_max_h` after its
sign-in, at sign-out, or when the account changes under it: disabled, removed, or its token rotated
(the session remembers the token's public id; `valid` compares it with the account's current one at
every request). Sessions live in memory: a restart signs everyone out, which keeps nothing secret on
disk. At most `console.max_sessions` exist; beyond, the one unused longest ends.

Each session carries its CSRF token (a second random value, sent in every form and checked on every
POST with hmac.compare_digest) and the language the person chose (default: the city's).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from citywatch.people.users import User

COOKIE = "citywatch_session"
SECURE_COOKIE = "__Host-citywatch_session"  # over https: the __Host- prefix pins it to this origin, path /


@dataclass
class Session:
    """One signed-in browser. `user` is the account as at the last request (refreshed by the app)."""

    id: str
    user: User
    token_id: str  # the account token's public id at sign-in: a rotation ends the session
    csrf: str
    language: str
    created: float
    last_seen: float
    streams: int = 0  # live-update streams open
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, text) shown once on the next page


class SessionBook:
    """Sessions by id, least recently used first (bounded)."""

    def __init__(self, idle_s: float, max_age_s: float, max_sessions: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self.ended: dict[str, int] = {"signed_out": 0, "expired": 0, "evicted": 0, "account_changed": 0}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, user: User, language: str) -> Session:
        """A new session for `user` (a fresh id: never one the browser brought, so no fixation)."""
        now = self.clock()
        session = Session(id=secrets.token_urlsafe(32), user=user, token_id=user.token_id,
                          csrf=secrets.token_urlsafe(32), language=language, created=now, last_seen=now)
        self._sessions[session.id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
            self.ended["evicted"] += 1
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (touched: its idle time starts over), else None."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self.clock()
        if self.expired(session, now):
            self.end(session_id, "expired")
            return None
        session.last_seen = now
        self._sessions.move_to_end(session_id)
        return session

    def expired(self, session: Session, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return now - session.last_seen > self.idle_s or now - session.created > self.max_age_s

    def alive(self, session: Session) -> bool:
        """Still signed in (not ended, not expired): without touching it (live streams ask this)."""
        return self._sessions.get(session.id) is session and not self.expired(session)

    def end(self, session_id: str, why: str = "signed_out") -> Session | None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            self.ended[why] = self.ended.get(why, 0) + 1
        return session

    def end_user(self, name: str, why: str = "account_changed") -> int:
        """End every session of an account (it was disabled, removed or its token rotated)."""
        ids = [sid for sid, s in self._sessions.items() if s.user.name == name]
        for sid in ids:
            self.end(sid, why)
        return len(ids)

    def purge(self) -> int:
        """Drop expired sessions (called now and then; `get` drops them too)."""
        now = self.clock()
        stale = [sid for sid, s in self._sessions.items() if self.expired(s, now)]
        for sid in stale:
            self.end(sid, "expired")
        return len(stale)

    def stats(self) -> dict[str, int]:
        return {"sessions": len(self._sessions), **self.ended}


def csrf_ok(session: Session, given: str | None) -> bool:
    """The form's CSRF token is this session's (constant time)."""
    return bool(given) and hmac.compare_digest(str(given).encode(), session.csrf.encode())
