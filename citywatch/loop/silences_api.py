"""HTTP API for silences, served by `citywatch run` beside the alert endpoints (same bearer token).

* `POST /silences`: JSON body of `SilenceRequest` (matchers device, grid, community, district, city,
  kind, rule as a string or a list; `start` (default now), `end` or `duration`; `reason`; `by`).
  201 with the silence; 400 for a body that is not such an object; 422 for a silence that is not
  allowed (no matcher, no reason, too long, a life-safety rule silenced beyond one device or 24 h).
* `GET /silences` (in force and scheduled; `?all=1`: every one, newest first), `GET /silences/{id}`.
* `POST /silences/{id}/end` (optional body `{"by": "name"}`): ends it now; what it held goes out
  (or is suppressed); 404 unknown, 409 already over.

`mark(alerts, silences, now)` is what GET /alerts shows: each alert with `silenced` and `silence_id`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from citywatch.loop import silences as sil
from citywatch.loop.silences import Silence, SilenceNotFound, SilenceOver, SilenceRefused, SilenceRequest
from citywatch.model import Alert
from citywatch.people import api as access

if TYPE_CHECKING:
    from citywatch.service import AlertService

_decode_request = msgspec.json.Decoder(SilenceRequest).decode


class _EndBody(msgspec.Struct):
    by: str | None = None


_decode_end = msgspec.json.Decoder(_EndBody).decode


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


def mark(alerts: Iterable[Alert], silences: list[Silence], now: float,
         safety_rules: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Alerts as JSON objects with `silenced` (a silence in force covers them: their webhooks are
    held) and `silence_id`."""
    out = []
    for alert in alerts:
        silence = sil.silence_for(silences, sil.alert_scope(alert), safety=sil.is_safety(alert, safety_rules),
                                  now=now) if silences else None
        body = msgspec.to_builtins(alert)
        body["silenced"] = silence is not None
        body["silence_id"] = silence.id if silence is not None else None
        out.append(body)
    return out


def register(app: web.Application) -> None:
    """Add the silence endpoints to the runner's API app (its auth middleware covers them)."""
    from citywatch.service import SERVICE_KEY

    def runner(request: web.Request) -> AlertService:
        return request.app[SERVICE_KEY]

    async def create(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            wanted = _decode_request(body)
        except msgspec.DecodeError as exc:  # ValidationError included
            return _json({"error": f"body must be a JSON silence object: {exc}"}, 400)
        except RecursionError:
            return _json({"error": "body must be a JSON silence object: nested too deeply"}, 400)
        wanted.by = access.acting_name(request, wanted.by)  # the account, not whatever the body says
        book = runner(request).silences
        try:
            silence = book.add(wanted, also=access.tx_hook(request, access.silence_state, lambda s: s.id))
        except SilenceRefused as exc:
            return _json({"error": str(exc)}, 422)
        except sqlite3.OperationalError as exc:  # a full or read-only disk: nothing was stored
            return _json({"error": f"cannot store the silence ({exc}); try again"}, 503)
        return _json(silence.to_json(book.clock()), 201)

    async def listing(request: web.Request) -> web.Response:
        book = runner(request).silences
        everything = request.query.get("all", "").lower() in ("1", "true", "yes")
        now = book.clock()
        return _json([s.to_json(now) for s in book.listed(everything)])

    async def one(request: web.Request) -> web.Response:
        book = runner(request).silences
        silence = book.get(request.match_info["silence_id"])
        if silence is None:
            return _json({"error": f"no silence {request.match_info['silence_id']}"}, 404)
        return _json(silence.to_json(book.clock()))

    async def end(request: web.Request) -> web.Response:
        book = runner(request).silences
        body = await request.read()
        by = "api"
        if body.strip():
            try:
                given = _decode_end(body).by
            except (msgspec.DecodeError, RecursionError):
                return _json({"error": 'body must be a JSON object like {"by": "name"}'}, 400)
            if given is not None and given.strip():
                if not given.isprintable():
                    return _json({"error": "by: must be printable text"}, 400)
                by = given.strip()[:128]
        by = access.acting_name(request, by)
        try:
            silence, released = book.end(request.match_info["silence_id"], by,
                                         also=access.tx_hook(request, access.silence_state))
        except SilenceNotFound as exc:
            return _json({"error": str(exc)}, 404)
        except SilenceOver as exc:
            return _json({"error": str(exc)}, 409)
        except sqlite3.OperationalError as exc:  # a full or read-only disk: it did not end
            return _json({"error": f"cannot store the end of the silence ({exc}); try again"}, 503)
        return _json({**silence.to_json(book.clock()), "released": released._asdict()})

    app.router.add_post("/silences", create)
    app.router.add_get("/silences", listing)
    app.router.add_get("/silences/{silence_id}", one)
    app.router.add_post("/silences/{silence_id}/end", end)
