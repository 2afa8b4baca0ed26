"""The loop's own figures over a period, per grid, community, district, city or kind (GET /kpis, the report).

Sources: the alert store's `alerts` table (each stored body carries what the figures need: opening,
first acknowledgement or assignment, last rectification, closure, deadlines, escalation level, reopen
count) and, for periods reaching past `retention.alerts.archive_after_days`, the archived alerts in
`data_dir/archive/alerts-YYYY-MM-DD.jsonl.gz` (files of the period's days only; an alert both archived
and still in the store, after a crash mid-archive, counts once).

Per group, over the period [start, end]:

- `opened`: alerts opened in the period. `open`: alerts not yet finished (of any age), at the time asked.
- `finished`: cases whose terminal transition (closed or resolved) falls in the period. Every figure
  below is over these cases, each defined in `citywatch.loop.cases`: `outcomes` (closed_verified,
  closed_confirmed, resolved_by_person, resolved_condition_cleared), `dispatched` (ever assigned),
  `resolved_without_dispatch` (resolved and never assigned: outside the dispatch loop, and so in no
  dispatch figure but the review and response shares when those deadlines came due).
- `time_to_ack_s`, `time_to_rectify_s`, `time_to_verified_close_s`: `{n, median, p90}` in seconds over
  the cases that have that time (verified closure: closed_verified cases only); p90 by nearest rank
  (the smallest time at or above which 10% of the cases lie), median the middle (mean of the two middles).
- `within_review`, `within_response`, `closed_at_grid_level`, `reopened_after_rectification`:
  `{n, count, share}`: of the `n` cases the figure applies to, `count` met it (for reopened: were
  reopened); `share` = count / n, null when n is 0. `closed_at_grid_level` over closed cases is the
  city's headline figure ("solved at the grid level").

Groups: by a level of the hierarchy (each group keyed by that level and the levels above it, so grid
G1 of one district is not merged with a G1 of another) or by kind, or a combination (`by=district,kind`);
a device's place is the one its alert carried when it opened. "" is a level not set in the registry.
"""

from __future__ import annotations

import gzip
import itertools
import math
import sqlite3
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from citywatch.errors import CitywatchError
from citywatch.loop.cases import OUTCOMES, CaseFigures, case_figures
from citywatch.model import ALERT_STATUSES, TERMINAL_STATUSES

HIERARCHY: tuple[str, ...] = ("city", "district", "community", "grid")
DIMENSIONS: tuple[str, ...] = ("grid", "community", "district", "city", "kind")
TERMINAL_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES)) + ")"
UNFINISHED_SQL = "(" + ", ".join(f"'{s}'" for s in ALERT_STATUSES if s not in TERMINAL_STATUSES) + ")"
ARCHIVE_GLOB = "alerts-*.jsonl.gz"


class KpiError(CitywatchError):
    """A request the figures cannot answer (unknown grouping, bad period): a clear message."""


class Place(msgspec.Struct, frozen=True):
    """The levels of an alert's device block (the rest of the block is skipped unparsed)."""

    city: str | None = None
    district: str | None = None
    community: str | None = None
    grid: str | None = None


class CaseView(msgspec.Struct, kw_only=True):
    """The part of a stored alert body the figures read (msgspec skips the rest unparsed)."""

    id: str
    kind: str
    rule: str = ""
    status: str
    opened_at: float
    review_deadline: float = 0.0
    response_deadline: float = 0.0
    acked_at: float | None = None
    assigned_at: float | None = None
    responded_at: float | None = None
    rectified_at: float | None = None
    resolved_at: float | None = None
    resolved_by: str | None = None
    closed_at: float | None = None
    closed_by: str | None = None
    reopened: int = 0
    escalation_level: int = 0
    device: Place = Place()


class _ArchiveLine(msgspec.Struct):
    alert: CaseView


_decode_case = msgspec.json.Decoder(CaseView).decode
_decode_archived = msgspec.json.Decoder(_ArchiveLine).decode


def parse_by(text: str) -> tuple[str, ...]:
    """`district` or `district,kind` -> the grouping dimensions; KpiError names a bad one."""
    dims = tuple(d.strip() for d in text.split(",") if d.strip())
    if not dims:
        raise KpiError(f"by: give one of {', '.join(DIMENSIONS)} (or several, comma-separated)")
    for dim in dims:
        if dim not in DIMENSIONS:
            raise KpiError(f"by: unknown {dim!r}; one of {', '.join(DIMENSIONS)}")
    if len(set(dims)) != len(dims):
        raise KpiError(f"by: {text!r} names a dimension twice")
    return dims


def key_fields(dims: Sequence[str]) -> tuple[str, ...]:
    """The fields that key a group: each hierarchy level with the levels above it, then kind."""
    levels = [HIERARCHY.index(d) for d in dims if d in HIERARCHY]
    fields = HIERARCHY[:max(levels) + 1] if levels else ()
    return fields + (("kind",) if "kind" in dims else ())


def _key(case: CaseView, fields: tuple[str, ...]) -> tuple[str, ...]:
    d = case.device
    return tuple((case.kind if f == "kind" else getattr(d, f)) or "" for f in fields)


# -- reading ----------------------------------------------------------------------------------------

def stored_cases(conn: sqlite3.Connection, start: float) -> Iterator[CaseView]:
    """Alerts that may have opened or finished since `start`: every unfinished one, and finished ones
    last updated since then (a case's updated_at is at or after its opening and its finish). Both
    queries go by an index (status; status, updated_at)."""
    for (body,) in conn.execute(f"SELECT body FROM alerts WHERE status IN {UNFINISHED_SQL}"):
        yield _decode_case(body)
    for (body,) in conn.execute(f"SELECT body FROM alerts WHERE status IN {TERMINAL_SQL} AND updated_at >= ?",
                                (start,)):
        yield _decode_case(body)


def archive_files(data_dir: Path, start: float) -> list[Path]:
    """Archive files of the UTC days from `start` on (a file holds the alerts last updated that day)."""
    first = datetime.fromtimestamp(start, UTC).date().isoformat()
    folder = data_dir / "archive"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(ARCHIVE_GLOB) if p.name[len("alerts-"):-len(".jsonl.gz")] >= first)


def archived_cases(data_dir: Path, start: float) -> Iterator[CaseView]:
    for path in archive_files(data_dir, start):
        with gzip.open(path, "rb") as f:
            for line in f:
                if line.strip():
                    yield _decode_archived(line).alert


# -- figures ----------------------------------------------------------------------------------------

def nearest_rank(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile by nearest rank of sorted `values`."""
    return values[max(0, math.ceil(pct / 100 * len(values)) - 1)]


def _times(values: list[float]) -> dict[str, Any]:
    values.sort()
    if not values:
        return {"n": 0, "median": None, "p90": None}
    return {"n": len(values), "median": statistics.median(values), "p90": nearest_rank(values, 90)}


def _share(flags: list[bool | None]) -> dict[str, Any]:
    applicable = [f for f in flags if f is not None]
    count = sum(applicable)
    return {"n": len(applicable), "count": count, "share": count / len(applicable) if applicable else None}


@dataclass
class Tally:
    """One group's cases, folded into figures by `figures()`."""

    opened: int = 0
    open: int = 0
    finished: list[CaseFigures] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        done = self.finished
        outcomes = {name: 0 for name in OUTCOMES}
        for case in done:
            outcomes[case.outcome] += 1
        return {
            "opened": self.opened,
            "open": self.open,
            "finished": len(done),
            "outcomes": outcomes,
            "dispatched": sum(c.dispatched for c in done),
            "resolved_without_dispatch": sum(c.resolved_without_dispatch for c in done),
            "time_to_ack_s": _times([c.time_to_ack_s for c in done if c.time_to_ack_s is not None]),
            "time_to_rectify_s": _times([c.time_to_rectify_s for c in done if c.time_to_rectify_s is not None]),
            "time_to_verified_close_s": _times([c.time_to_close_s for c in done if c.outcome == "closed_verified"]),
            "within_review": _share([c.within_review for c in done]),
            "within_response": _share([c.within_response for c in done]),
            "closed_at_grid_level": _share([c.closed_at_grid for c in done]),
            "reopened_after_rectification": _share([c.reopened_after_rectification for c in done]),
        }


def tally(cases: Iterable[CaseView], start: float, end: float, fields: tuple[str, ...]
          ) -> tuple[Tally, dict[tuple[str, ...], Tally]]:
    """(all, per group) over the period; each alert id once (the first seen wins: pass the store first)."""
    total, groups = Tally(), dict[tuple[str, ...], Tally]()
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            continue
        seen.add(case.id)
        opened = start <= case.opened_at <= end
        figures = case_figures(case)
        finished = figures is not None and start <= figures.finished_at <= end
        unfinished = case.status not in TERMINAL_STATUSES and case.opened_at <= end
        if not (opened or finished or unfinished):
            continue
        group = groups.get(key := _key(case, fields))
        if group is None:
            group = groups[key] = Tally()
        for t in (total, group):
            t.opened += opened
            t.open += unfinished
            if finished:
                assert figures is not None
                t.finished.append(figures)
    return total, groups


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def compute(conn: sqlite3.Connection, start: float, end: float, by: Sequence[str],
            data_dir: Path | None = None) -> dict[str, Any]:
    """The figures (a JSON-ready dict with stable English keys) for the period [start, end] grouped `by`.
    With `data_dir`, archived alerts of the period count too."""
    if not end >= start:
        raise KpiError("the period must not end before it starts")
    dims = parse_by(",".join(by))
    fields = key_fields(dims)
    cases: Iterable[CaseView] = stored_cases(conn, start)
    if data_dir is not None:
        cases = itertools.chain(cases, archived_cases(data_dir, start))
    total, groups = tally(cases, start, end, fields)
    rows = [{"key": dict(zip(fields, key, strict=True)), **tally_.figures()}
            for key, tally_ in sorted(groups.items())]
    return {"since": _utc(start), "until": _utc(end), "by": list(dims), "total": total.figures(), "groups": rows}


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to state.db (WAL: reads beside the runner's writes)."""
    if not path.exists():
        raise KpiError(f"no alert store at {path}")
    uri = path.resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=5, check_same_thread=False)
