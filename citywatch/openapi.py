"""The OpenAPI 3.1 description of the HTTP API (`citywatch run`'s and the Faust sink's: one
implementation, citywatch/alertapi.py), served at GET /openapi.json.

One table, OPERATIONS, says for every JSON route what it takes and answers; the document is built
from it at start, and the schemas of the bodies that are msgspec Structs (Alert, Transition,
Incident, SilenceRequest, DispatchEvent, ActionDetail) are generated from the Structs themselves
(`msgspec.json.schema_components`), so a field added to an alert is in the document at once.
Each app serves the operations of the routes it has (`register` reads its router): the runner's all
of them, the Faust sink's the subset it serves, with the same operation objects.
tests/test_openapi.py checks the table against the routes the app really has (both ways, methods
too) and validates the document as OpenAPI 3.1. The operator console's HTML pages (/console/...)
are not an API: they are listed in `x-citywatch-not-described`.

The document is open like /health (people/api.py OPEN_PATHS): it names routes and fields, never a
secret, and tools (Swagger UI, schemathesis, an API gateway) fetch it before they have a token.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from citywatch.loop.dispatch import ActionDetail, DispatchEvent
from citywatch.loop.dispatch_api import DISPATCH_PATH, PERSON_ACTIONS
from citywatch.loop.silences import SilenceRequest
from citywatch.model import Alert, Incident, Transition
from citywatch.service import Accepted

PATH = "/openapi.json"
REF = "#/components/schemas/{name}"
NOT_DESCRIBED = {"/console": "the operator console: server-rendered HTML pages and their forms (session cookie, "
                             "CSRF token), not a JSON API"}
STRUCTS: tuple[type, ...] = (Alert, Transition, Incident, SilenceRequest, DispatchEvent, ActionDetail, Accepted)


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


STRING, BOOLEAN, INTEGER, NUMBER = {"type": "string"}, {"type": "boolean"}, {"type": "integer"}, {"type": "number"}
NULLABLE_STRING = {"type": ["string", "null"]}
TIME = {"type": ["string", "null"], "format": "date-time", "description": "UTC, RFC 3339"}

# Schemas of answers built as dicts (not Structs): written here, next to nothing else.
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {"type": "object", "required": ["error"], "description": "A refusal: what is wrong.",
              "properties": {"error": STRING, "code": {**STRING, "description": "a stable code, where there is one"}}},
    "ByBody": {"type": "object", "description": "Who acts (an account records its own name; a shared credential "
                                                 "names the person it acts for).",
               "properties": {"by": STRING}},
    "Health": {
        "type": "object", "additionalProperties": True,
        "required": ["status", "live", "ready", "problems"],
        "properties": {
            "status": {"enum": ["ok", "not_ready", "failing"]}, "live": BOOLEAN, "ready": BOOLEAN,
            "problems": array({"enum": ["fatal", "consume_loop_dead", "consume_loop_stalled", "collector_down",
                                        "mqtt_disconnected", "storage_error", "backlog_full"]}),
            "consume_loop_alive": BOOLEAN, "mqtt_connected": BOOLEAN, "collector_restarts": INTEGER,
            "webhooks_pending": INTEGER, "backlog": {"type": "object"},
        },
    },
    "Stats": {"type": "object", "additionalProperties": True,
              "description": "Counters of the pipeline, the store, deliveries, InfluxDB, the API guard (`api`) and "
                             "authentication (`auth`), and `health` as GET /health answers it."},
    "AlertView": {"allOf": [ref("Alert"), {
        "type": "object", "required": ["silenced", "silence_id"],
        "properties": {"silenced": {**BOOLEAN, "description": "a silence in force holds its webhooks"},
                       "silence_id": NULLABLE_STRING}}]},
    "IncidentDetail": {"allOf": [ref("Incident"), {
        "type": "object", "required": ["history"],
        "properties": {"history": array({"type": "object", "properties": {
            "id": STRING, "transition": STRING, "at": NUMBER, "reason": STRING, "severity": STRING,
            "status": STRING}})}}]},
    "Silence": {
        "type": "object",
        "required": ["id", "state", "matchers", "scope", "starts_at", "ends_at", "reason", "author"],
        "properties": {
            "id": STRING, "state": {"enum": ["active", "scheduled", "ended", "expired"]},
            "matchers": {"type": "object", "additionalProperties": array(STRING)}, "scope": STRING,
            "starts_at": TIME, "ends_at": TIME, "reason": STRING, "author": STRING, "created_at": TIME,
            "covers_safety_rules": BOOLEAN, "ended_at": TIME, "ended_by": NULLABLE_STRING,
        },
    },
    "SilenceEnded": {"allOf": [ref("Silence"), {
        "type": "object", "required": ["released"],
        "properties": {"released": {"type": "object", "additionalProperties": INTEGER,
                                    "description": "what the end released: webhooks sent, suppressed, still held"}}}]},
    "Kpis": {"type": "object", "additionalProperties": True,
             "description": "The loop's figures (citywatch/loop/kpis.py): per group, `opened`, `open`, `outcomes`, "
                            "`time_to_ack_s`, `within_review`, `within_response`, `closed_at_grid_level`, ..."},
    "DispatchAccepted": {
        "type": "object", "required": ["status", "code", "webhook_id", "type", "transitions"],
        "properties": {"status": {"const": "accepted"}, "code": {"const": "accepted"}, "webhook_id": STRING,
                       "type": STRING,
                       "transitions": array({"type": "object", "properties": {
                           "id": STRING, "alert_id": STRING, "incident_id": NULLABLE_STRING, "transition": STRING,
                           "status": STRING, "at": TIME}})}},
}


@dataclass(frozen=True)
class Answer:
    description: str
    schema: dict[str, Any] | None = None  # JSON; None: no body described
    media: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)  # name -> description


@dataclass(frozen=True)
class Op:
    """One route: what it is, who may call it (`access`: bearer, open, open_or_bearer, signed), its
    parameters (name -> (in, required, schema, description)), request body, and answers by status."""

    method: str
    path: str
    summary: str
    tag: str
    answers: dict[int, Answer]
    access: str = "bearer"
    params: dict[str, tuple[str, bool, dict[str, Any], str]] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    body_required: bool = False
    description: str = ""


def _error(text: str) -> Answer:
    return Answer(text, ref("Error"))


AUTH_ANSWERS = {401: _error("no or a bad bearer token"), 403: _error("the account may not do this (audited)"),
                429: Answer("too many failed tokens from this address", ref("Error"),
                            headers={"Retry-After": "seconds until the block ends"})}
ALERT_ID = {"alert_id": ("path", True, STRING, "the alert's id (al_...)")}
SIGNATURE = {
    "webhook-id": ("header", True, STRING, "unique per message: a repeat is answered with the first answer"),
    "webhook-timestamp": ("header", True, {"type": "string", "pattern": "^[0-9]+$"},
                          "integer seconds, within dispatch.tolerance_s of citywatch's clock"),
    "webhook-signature": ("header", True, STRING,
                          "v1,<base64 HMAC-SHA256 of id.timestamp.body> with the dispatch system's own secret "
                          "(Standard Webhooks); several space-separated during a rotation"),
}
ACTIONS = sorted(PERSON_ACTIONS)
FORWARDED = Answer("the Faust runner: taken for the worker that owns the alert's device; the transition follows "
                   "through the transitions topic", ref("Accepted"))

OPERATIONS: tuple[Op, ...] = (
    Op("GET", "/health", "Liveness: 200 while the consume loop runs and turns", "operations", access="open",
       answers={200: Answer("alive", ref("Health")), 503: Answer("failing: restart the process", ref("Health"))}),
    Op("GET", "/ready", "Readiness: alive, MQTT subscribed, storage writable, backlog under its bound", "operations",
       access="open",
       answers={200: Answer("ready", ref("Health")), 503: Answer("not ready (or failing)", ref("Health"))}),
    Op("GET", "/metrics", "Prometheus metrics (text exposition format)", "operations", access="open_or_bearer",
       description="Open unless api.metrics_auth is true; then a bearer token with view_stats.",
       answers={200: Answer("the metrics", {"type": "string"}, media="text/plain"),
                401: _error("api.metrics_auth and no or a bad token")}),
    Op("GET", PATH, "This document (OpenAPI 3.1)", "operations", access="open",
       answers={200: Answer("the API's description", {"type": "object"})}),
    Op("GET", "/stats", "Counters and health", "operations", answers={200: Answer("the counters", ref("Stats"))}),
    Op("GET", "/alerts", "Open alerts (oldest first), marked when a silence holds their webhooks", "alerts",
       description="Only the alerts the account's scope may see.",
       answers={200: Answer("the alerts", array(ref("AlertView")))}),
    Op("GET", "/alerts/{alert_id}", "One alert, open or finished (the webhooks' `self` link)", "alerts",
       params=ALERT_ID,
       answers={200: Answer("the alert", ref("AlertView")), 404: _error("no such alert")}),
    Op("POST", "/alerts/{alert_id}/ack", "Acknowledge (meets the review deadline)", "alerts", params=ALERT_ID,
       body=ref("ByBody"),
       answers={200: Answer("the transition made", ref("Transition")), 202: FORWARDED,
                400: _error("body not a JSON object like {\"by\": \"name\"}"),
                404: _error("no such alert"), 409: _error("already acknowledged, resolved or closed")}),
    Op("POST", "/alerts/{alert_id}/resolve", "Resolve (a person ends the case)", "alerts", params=ALERT_ID,
       body=ref("ByBody"),
       answers={200: Answer("the transition made", ref("Transition")), 202: FORWARDED, 400: _error("bad body"),
                404: _error("no such alert"), 409: _error("already resolved or closed")}),
    Op("POST", "/alerts/{alert_id}/{action}", "A dispatch action by a person: assign, on-site, rectify, reject, "
       "close", "alerts",
       params={**ALERT_ID, "action": ("path", True, {"enum": ACTIONS}, "on_site is the same as on-site")},
       body=ref("ActionDetail"),
       description="assign needs `assignee`, reject needs `reason`; rectify takes `note` and `evidence` "
                   "(http(s) links).",
       answers={200: Answer("the transition made", ref("Transition")),
                400: _error("malformed_body"), 422: _error("invalid_event: a field missing or bad"),
                404: _error("unknown_alert"), 409: _error("illegal_transition: not possible now"),
                503: Answer("storage_error: try again", ref("Error"), headers={"Retry-After": "seconds"})}),
    Op("GET", "/incidents", "Open incidents, newest first (all=1: closed ones too)", "incidents",
       params={"all": ("query", False, {"enum": ["0", "1", "true", "false", "yes", "no"]}, "closed ones too"),
               "limit": ("query", False, {"type": "integer", "minimum": 1, "maximum": 10000}, "at most (1000)")},
       answers={200: Answer("the incidents", array(ref("Incident"))), 400: _error("bad limit")}),
    Op("GET", "/incidents/{incident_id}", "One incident with its members and history", "incidents",
       params={"incident_id": ("path", True, STRING, "the incident's id (in_...)")},
       answers={200: Answer("the incident", ref("IncidentDetail")), 404: _error("no such incident")}),
    Op("GET", "/kpis", "The loop's figures over a period", "loop",
       params={"by": ("query", False, STRING, "grid, community, district, city, kind; several comma-separated "
                                              "(default district)"),
               "since": ("query", False, {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?[smhdw]$"},
                         "the period ending now, e.g. 90m, 24h, 7d, 4w (default 24h)"),
               "archive": ("query", False, {"enum": ["0", "1", "true", "false", "yes", "no"]},
                           "0 leaves out archived alerts")},
       answers={200: Answer("the figures", ref("Kpis")), 400: _error("bad by, since or archive")}),
    Op("POST", "/silences", "Start a silence or a maintenance window", "silences", body=ref("SilenceRequest"),
       body_required=True,
       answers={201: Answer("the silence", ref("Silence")), 400: _error("not a JSON silence object"),
                422: _error("not allowed: no matcher, no reason, too long, a life-safety rule beyond one device "
                            "or 24 h"),
                503: _error("cannot store it now: try again")}),
    Op("GET", "/silences", "Silences in force and scheduled (all=1: every one)", "silences",
       params={"all": ("query", False, {"enum": ["0", "1", "true", "false", "yes", "no"]}, "ended ones too")},
       answers={200: Answer("the silences", array(ref("Silence")))}),
    Op("GET", "/silences/{silence_id}", "One silence", "silences",
       params={"silence_id": ("path", True, STRING, "si_...")},
       answers={200: Answer("the silence", ref("Silence")), 404: _error("no such silence")}),
    Op("POST", "/silences/{silence_id}/end", "End a silence now (what it held goes out or is suppressed)",
       "silences", params={"silence_id": ("path", True, STRING, "si_...")}, body=ref("ByBody"),
       answers={200: Answer("the silence, ended", ref("SilenceEnded")), 400: _error("bad body"),
                404: _error("no such silence"), 409: _error("already over"),
                503: _error("cannot store it now: try again")}),
    Op("POST", DISPATCH_PATH, "The dispatch system's signed messages (alert.* or incident.* actions)", "dispatch",
       access="signed", params=SIGNATURE, body=ref("DispatchEvent"), body_required=True,
       description="Not behind the bearer token: each message is signed (Standard Webhooks) with the dispatch "
                   "system's own secret (dispatch.secret). Every refusal changes nothing.",
       answers={200: Answer("accepted (or a repeat of an accepted webhook-id)", ref("DispatchAccepted"),
                            headers={"Citywatch-Repeat": "true when this webhook-id was accepted before"}),
                400: _error("stale_timestamp, future_timestamp, bad_webhook_id, malformed_body"),
                401: _error("bad_signature: a header missing or malformed, or no signature matches"),
                404: _error("unknown_alert, unknown_incident"),
                409: _error("illegal_transition, webhook_id_reused"),
                422: _error("invalid_event: unknown type, missing id or field, bad link"),
                501: _error("not_implemented: this runner does not dispatch incidents"),
                503: Answer("not_configured (no dispatch.secret) or storage_error (try again)", ref("Error"),
                            headers={"Retry-After": "seconds"})}),
)


def _parameters(op: Op) -> list[dict[str, Any]]:
    return [{"name": name, "in": where, "required": required, "schema": schema, "description": text}
            for name, (where, required, schema, text) in op.params.items()]


def _operation(op: Op) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": f"{op.method.lower()}{op.path}", "summary": op.summary, "tags": [op.tag]}
    if op.description:
        out["description"] = op.description
    if op.params:
        out["parameters"] = _parameters(op)
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": {"application/json": {"schema": op.body}}}
    answers = {**op.answers, **(AUTH_ANSWERS if op.access == "bearer" else {})}
    responses: dict[str, Any] = {}
    for status, answer in sorted(answers.items()):
        item: dict[str, Any] = {"description": answer.description}
        if answer.schema is not None:
            item["content"] = {answer.media: {"schema": answer.schema}}
        if answer.headers:
            item["headers"] = {name: {"description": text, "schema": STRING} for name, text in answer.headers.items()}
        responses[str(status)] = item
    out["responses"] = responses
    out["security"] = {"bearer": [{"bearer": []}], "open": [], "signed": [],
                       "open_or_bearer": [{}, {"bearer": []}]}[op.access]
    return out


def document(version: str = "", routes: AbstractSet[tuple[str, str]] | None = None,
             prefixes: AbstractSet[str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of OPERATIONS; of those among `routes` ((method, path) an app serves)
    when given, and the undescribed sub-apps among `prefixes`."""
    _, components = msgspec.json.schema_components(STRUCTS, ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        if routes is None or (op.method, op.path) in routes:
            paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    if not version:
        from citywatch import __version__ as version
    return {
        "openapi": "3.1.0",
        "info": {"title": "citywatch", "version": version,
                 "description": "The HTTP API of `citywatch run`: health, metrics, alerts and their actions, "
                                "incidents, the loop's figures, silences, and the dispatch system's signed messages. "
                                "Times in epoch seconds (alerts, incidents) or RFC 3339 UTC (silences, dispatch). "
                                "The Faust sink serves a subset (the paths its document lists), with the same "
                                "answers, except that ack and resolve go to the worker that owns the device (202)."},
        "paths": paths,
        "components": {"schemas": {**components, **SCHEMAS},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "an account's token (cwt.<id>.<secret>) or "
                                                                     "the bootstrap admin's"}}},
        "security": [{"bearer": []}],
        "x-citywatch-not-described": {prefix: why for prefix, why in NOT_DESCRIBED.items()
                                      if prefixes is None or prefix in prefixes},
    }


DOCUMENT_KEY = web.AppKey("openapi", bytes)


async def _serve(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DOCUMENT_KEY], content_type="application/json")


def served(app: web.Application) -> tuple[set[tuple[str, str]], set[str]]:
    """(method, path) of every route of `app` (HEAD and OPTIONS aside), and its sub-apps' prefixes."""
    routes, prefixes = set(), set()
    for resource in app.router.resources():
        if isinstance(resource, web.PrefixedSubAppResource):
            prefixes.add(resource.canonical)
            continue
        for route in resource:
            if route.method not in ("HEAD", "OPTIONS"):
                routes.add((route.method, resource.canonical))
    return routes, prefixes


def register(app: web.Application) -> None:
    """GET /openapi.json on an API app (open: people/api.py OPEN_PATHS), describing the routes it has:
    call it after every other route is added. Built once, at start."""
    routes, prefixes = served(app)
    app[DOCUMENT_KEY] = msgspec.json.encode(document(routes=routes | {("GET", PATH)}, prefixes=prefixes))
    app.router.add_get(PATH, _serve)
