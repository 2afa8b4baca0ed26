"""The owner's silences: add and end them in state.db, release held webhooks when they end, and
write them to InfluxDB for the dashboards.

`citywatch run` holds one `SilenceBook` on its alert store connection (the API calls it on the
event loop thread, like acknowledgements); `tick` on the runner's clock releases silences whose end
passed. The CLI without a running owner uses the same book on its own connection, holding the data
dir's lock. Every change is one SQLite transaction.

InfluxDB: one `silences` point per silence at its start time, tags `silence` (id), `scope`
(`grid=G7 kind=noise|water`) and each matcher naming a single value (device, grid, community,
district, city, kind, rule, so the dashboards' variables apply); fields `start_s`, `end_s` (when it
stops or stopped holding: ending early rewrites the point), `reason`, `author`, `ended` (ended early),
`covers_safety`. Points are idempotent, so the runner writes those of the last 30 days again at start
(silences a CLI stored while no runner ran).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any
from zoneinfo import ZoneInfo

from citywatch.config import Settings
from citywatch.loop import silences as sil
from citywatch.loop.silences import Policy, Released, Silence, SilenceNotFound, SilenceRequest
from citywatch.sinks.outbox import ensure_schema

log = logging.getLogger(__name__)

Also = Callable[[sqlite3.Connection, Silence], None]

REWRITE_DAYS = 30.0  # at start, points of silences that ended within this are written again
_TAG = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\=", "\\": "/", "\n": r"\ ", "\r": r"\ "})
_STR = str.maketrans({'"': r"\"", "\\": r"\\", "\n": " ", "\r": " "})


def known_rules(settings: Settings) -> frozenset[str]:
    """Every rule name an alert can carry with these settings (a silence naming another is a typo)."""
    from citywatch.detectors.flooding import FLOODING_RULE
    from citywatch.detectors.health import OFFLINE_RULE
    from citywatch.detectors.registry import build_rules

    names = {rule.name for rules in build_rules(settings).values() for rule in rules}
    return frozenset(names | {OFFLINE_RULE, FLOODING_RULE} | set(settings.alerts.rules))


def policy(settings: Settings, rules: frozenset[str] | None = None) -> Policy:
    return Policy(max_safety_h=settings.silences.max_safety_h, max_days=settings.silences.max_days,
                  safety_rules=settings.alerts.safety_rules,
                  known_rules=known_rules(settings) if rules is None else rules)


def silence_line(silence: Silence) -> str:
    """The InfluxDB point of a silence (see the module docstring)."""
    pairs = {"scope": silence.scope_text(), "silence": silence.id}
    pairs.update({key: values[0] for key, values in silence.matchers.items() if len(values) == 1})
    tags = ",".join(f"{key}={pairs[key].translate(_TAG)}" for key in sorted(pairs))
    fields = (f"start_s={float(silence.starts_at)!r},end_s={float(silence.until)!r},"
              f'reason="{silence.reason.translate(_STR)}",author="{silence.author.translate(_STR)}",'
              f"ended={'true' if silence.ended_at is not None else 'false'},"
              f"covers_safety={'true' if silence.safety else 'false'}")
    return f"silences,{tags} {fields} {round(silence.starts_at * 1_000_000) * 1000}"


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class SilenceBook:
    """Silences on one state.db connection. `influx`: an InfluxSink (or None); `on_release`: called
    after held webhooks became pending (the runner wakes its webhook delivery)."""

    def __init__(self, conn: sqlite3.Connection, settings: Settings, clock: Callable[[], float] = time.time, *,
                 rules: frozenset[str] | None = None, influx: Any = None,
                 on_release: Callable[[], None] | None = None) -> None:
        ensure_schema(conn)  # the outbox table, which release reads (a store that never sent anything has none)
        self.conn = conn
        self.policy = policy(settings, rules)
        self.local = ZoneInfo(settings.timezone)
        self.clock = clock
        self.influx = influx
        self.on_release = on_release
        self.unwritten: dict[str, str] = {}  # silence id -> its InfluxDB point, not yet handed to the sink
        self._storage_error: str | None = None

    # -- people's actions ----------------------------------------------------------------------------

    def add(self, request: SilenceRequest, local: bool = False, also: Also | None = None) -> Silence:
        """Check and store a new silence (SilenceRefused says why not). `local`: times without an
        offset are the city's local time (the CLI), else refused (the API). `also(conn, silence)`
        writes in the same transaction (the audit record: citywatch/people/audit.py)."""
        now = self.clock()
        silence = sil.build(request, self.policy, now, self.local if local else None)
        with transaction(self.conn):
            sil.insert(self.conn, silence)
            if also is not None:
                also(self.conn, silence)
        log.info("silence %s set by %s: %s until %s (%s)", silence.id, silence.author, silence.scope_text(),
                 sil.rfc3339(silence.ends_at), silence.reason)
        self._changed(silence)
        return silence

    def end(self, silence_id: str, by: str, also: Also | None = None) -> tuple[Silence, Released]:
        """End a silence now and release what it held. SilenceNotFound, SilenceOver. `also` as for add."""
        now = self.clock()
        with transaction(self.conn):
            silence = sil.get(self.conn, silence_id)
            if silence is None:
                raise SilenceNotFound(f"no silence {silence_id}")
            sil.mark_ended(self.conn, silence, by, now)
            released = sil.release(self.conn, [silence], now, self.policy.safety_rules)
            if also is not None:
                also(self.conn, silence)
        log.info("silence %s ended early by %s: %d webhooks released, %d suppressed, %d still held by another",
                 silence.id, by, *released)
        self._changed(silence)
        self._released(released)
        return silence, released

    def get(self, silence_id: str) -> Silence | None:
        return sil.get(self.conn, silence_id)

    def listed(self, everything: bool = False) -> list[Silence]:
        return sil.listed(self.conn, self.clock(), everything)

    def in_force(self) -> list[Silence]:
        return sil.in_force(self.conn, self.clock())

    # -- the runner ----------------------------------------------------------------------------------

    def start(self) -> None:
        """At the runner's start: write the points of recent silences again (idempotent)."""
        if self.influx is None:
            return
        since = self.clock() - REWRITE_DAYS * 86400
        for silence in sil.listed(self.conn, self.clock(), everything=True, limit=10000):
            if silence.until >= since:
                self.unwritten[silence.id] = silence_line(silence)
        self._write_points()

    def tick(self, now: float) -> Released | None:
        """Release the silences whose end passed. A full or read-only disk is retried next tick."""
        try:
            over = sil.due(self.conn, now)
            if not over:
                self._write_points()
                return None
            with transaction(self.conn):
                released = sil.release(self.conn, over, now, self.policy.safety_rules)
        except sqlite3.OperationalError as exc:
            if self._storage_error is None:
                log.error("silences: cannot release held webhooks (%s); retrying", exc)
            self._storage_error = str(exc)
            return None
        self._storage_error = None
        for silence in over:
            log.info("silence %s over (%s): %s", silence.id, silence.state(now), silence.scope_text())
            self._changed(silence)
        log.info("silences over: %d webhooks released, %d suppressed, %d still held by another", *released)
        self._released(released)
        return released

    def _released(self, released: Released) -> None:
        if released.pending and self.on_release is not None:
            self.on_release()

    def _changed(self, silence: Silence) -> None:
        if self.influx is not None:
            self.unwritten[silence.id] = silence_line(silence)
            self._write_points()

    def _write_points(self) -> None:
        """Hand waiting points to the InfluxDB sink without blocking; kept for the next tick when full."""
        if self.influx is None or not self.unwritten:
            return
        from citywatch.sinks.influx import InfluxBackpressure

        try:
            self.influx.add(list(self.unwritten.values()), timeout=0)
        except InfluxBackpressure:
            return
        self.unwritten.clear()
