"""GET /kpis: the loop's figures over the HTTP API (bearer token, like every endpoint but /health), on
the embedded runner's API and on the Faust sink's.

    GET /kpis?by=grid|community|district|city|kind[,...]&since=24h[&archive=0]

`by` (default district) groups, several comma-separated; `since` (default 24h: 90m, 24h, 7d, 4w) is the
period ending now (the runner's clock); `archive=0` leaves out archived alerts. The body is
`citywatch.loop.kpis.compute`'s JSON (definitions there). Computed in a worker thread on a read-only
connection of its own, one computation at a time, so a long period never stalls ingestion and
concurrent requests queue instead of piling up threads.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from citywatch.errors import CitywatchError
from citywatch.loop import kpis
from citywatch.sinks.store import store_path


class KpiReader:
    """A read-only connection to state.db, opened on first use; one computation at a time. `clock`
    says what "now" is (the runner's: tests inject one)."""

    def __init__(self, data_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.data_dir = data_dir
        self.clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def compute(self, start: float, end: float, by: tuple[str, ...], archive: bool) -> dict[str, Any]:
        with self._lock:
            if self._conn is None:
                self._conn = kpis.open_readonly(store_path(self.data_dir))
            return kpis.compute(self._conn, start, end, by, self.data_dir if archive else None)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


KPI_READER_KEY = web.AppKey("kpi_reader", KpiReader)
MAX_SINCE_S = 3660 * 86400.0  # ten years and a bit: beyond, the period is not a question for this store


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise kpis.KpiError(f"archive: {text!r}: use 1 or 0")


async def _kpis(request: web.Request) -> web.Response:
    from citywatch.report import parse_duration

    query = request.query
    try:
        by = kpis.parse_by(query.get("by", "district"))
        since_s = parse_duration(query.get("since", "24h"))
        if since_s > MAX_SINCE_S:
            raise kpis.KpiError(f"since: at most {MAX_SINCE_S / 86400:g}d")
        archive = _flag(query.get("archive", "1"))
    except CitywatchError as exc:
        return _json({"error": str(exc)}, 400)
    reader = request.app[KPI_READER_KEY]
    now = reader.clock()
    try:
        body = await asyncio.to_thread(reader.compute, now - since_s, now, by, archive)
    except kpis.KpiError as exc:
        return _json({"error": str(exc)}, 400)
    return _json(body)


def register(app: web.Application, data_dir: Path | None = None, clock: Callable[[], float] | None = None) -> None:
    """Add GET /kpis to an API app: the embedded runner's (its data dir and clock by default) or the
    Faust sink's (which passes its own)."""
    if data_dir is None or clock is None:
        from citywatch.service import SERVICE_KEY

        runner: Any = app[SERVICE_KEY]
        data_dir, clock = data_dir or runner.settings.data_dir, clock or runner.clock
    reader = app[KPI_READER_KEY] = KpiReader(data_dir, clock or time.time)

    async def close(app: web.Application) -> None:
        reader.close()

    app.on_cleanup.append(close)
    app.router.add_get("/kpis", _kpis)
