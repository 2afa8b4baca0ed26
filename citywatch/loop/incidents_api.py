"""GET /incidents and GET /incidents/{id} on the runner's API (behind the same bearer token).

Open incidents come from the runner's IncidentBook in memory (exact, no I/O); `?all=1` and closed
ones come from the store through a read-only connection in a worker thread, so a lookup never
stalls ingestion (as AlertReader does for alerts). Incident-level dispatch is POSTed to the dispatch
endpoint (citywatch/loop/dispatch_api.py), which calls `runner.dispatch_incident`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import msgspec
from aiohttp import web

from citywatch.model import Incident, IncidentTransition
from citywatch.service import SERVICE_KEY, AlertService
from citywatch.sinks.alertreader import ReadOnlyStore
from citywatch.sinks.store import store_path

LIST_LIMIT = 1000  # incidents per answer unless ?limit= says otherwise (at most LIST_LIMIT_MAX)
LIST_LIMIT_MAX = 10000

_decode_incident = msgspec.json.Decoder(Incident).decode
_decode_transition = msgspec.json.Decoder(IncidentTransition).decode


class IncidentReader(ReadOnlyStore):
    """Incidents for the API, on a read-only connection of their own (see sinks/alertreader.py)."""

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return super()._rows(sql, args)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # a store from before incidents: none yet
                return []
            raise

    def incidents(self, limit: int) -> list[Incident]:
        """Every incident, newest first."""
        rows = self._rows("SELECT body FROM incidents ORDER BY opened_at DESC, id LIMIT ?", (limit,))
        return [_decode_incident(body) for (body,) in rows]

    def incident(self, incident_id: str) -> Incident | None:
        rows = self._rows("SELECT body FROM incidents WHERE id = ?", (incident_id,))
        return _decode_incident(rows[0][0]) if rows else None

    def transitions(self, incident_id: str) -> list[IncidentTransition]:
        rows = self._rows("SELECT body FROM incident_transitions WHERE incident_id = ? ORDER BY at, id",
                          (incident_id,))
        return [_decode_transition(body) for (body,) in rows]


READER_KEY = web.AppKey("incident_reader", IncidentReader)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


def _runner_of(app: web.Application) -> AlertService:
    return app[SERVICE_KEY]


def _runner(request: web.Request) -> AlertService:
    return _runner_of(request.app)


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


async def _list(request: web.Request) -> web.Response:
    """Open incidents, newest first; `?all=1`: closed ones too (at most `?limit=`, default 1000)."""
    try:
        limit = int(request.query.get("limit", LIST_LIMIT))
    except ValueError:
        return _json({"error": "limit: must be an integer"}, 400)
    if not 1 <= limit <= LIST_LIMIT_MAX:
        return _json({"error": f"limit: must be between 1 and {LIST_LIMIT_MAX}"}, 400)
    if _flag(request.query.get("all")):
        found = await asyncio.to_thread(request.app[READER_KEY].incidents, limit)
    else:
        book = _runner(request).incidents
        found = sorted(book.by_id.values(), key=lambda i: (-i.opened_at, i.id))[:limit]
    return _json(found)


async def _one(request: web.Request) -> web.Response:
    """One incident (open or closed) with its members and its transitions so far."""
    incident_id = request.match_info["incident_id"]
    reader = request.app[READER_KEY]
    incident = _runner(request).incidents.get(incident_id)
    if incident is not None:
        body = msgspec.to_builtins(incident)  # the live incident, encoded now on the loop thread
    else:
        stored = await asyncio.to_thread(reader.incident, incident_id)
        if stored is None:
            return _json({"error": f"no incident {incident_id}"}, 404)
        body = msgspec.to_builtins(stored)
    history = await asyncio.to_thread(reader.transitions, incident_id)
    body["history"] = [{"id": t.id, "transition": t.transition, "at": t.at, "reason": t.reason,
                        "severity": t.incident.severity, "status": t.incident.status} for t in history]
    return _json(body)


def register(app: web.Application) -> None:
    """Add the incident routes to the runner's API app (its bearer-token middleware covers them)."""
    reader = app[READER_KEY] = IncidentReader(store_path(_runner_of(app).settings.data_dir))

    async def close_reader(app: web.Application) -> None:
        reader.close()

    app.on_cleanup.append(close_reader)
    app.router.add_get("/incidents", _list)
    app.router.add_get("/incidents/{incident_id}", _one)
