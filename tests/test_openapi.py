"""/openapi.json: every route of the runner's API described, nothing described that does not exist,
a valid OpenAPI 3.1 document, and real answers that match what it says."""

from __future__ import annotations

import copy
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from citywatch.apitoken import api_token
from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device
from citywatch.openapi import NOT_DESCRIBED, OPERATIONS, document, served
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.helpers import payload
from tests.mqtt_tools import publish_all
from tests.servers.mosquitto import MosquittoServer

GAS = Device(id="gas-9", kind="gas", district="Nanhu", grid="G9")


@pytest.fixture
def run(tmp_path: Path, mosquitto: MosquittoServer) -> Iterator[RunnerThread]:
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": f"cw-{tmp_path.name}"},
                             dispatch={"secret": "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="})
    registry = Registry(registry_path(settings.data_dir))
    registry.add(GAS)
    registry.close()
    runner = RunnerThread(settings).start()
    yield runner
    runner.stop()


def http(method: str, url: str, token: str | None = None, body: Any = None) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def routes_of(run: RunnerThread) -> tuple[set[tuple[str, str]], set[str]]:
    """(method, path) of every route of the app `citywatch run` serves, and the sub-apps' prefixes."""
    from citywatch.api import make_app
    from citywatch.people.api import ACCESS_KEY

    app = run.call(lambda: make_app(run.runner, "unused"))  # type: ignore[arg-type]
    try:
        return served(app)
    finally:
        app[ACCESS_KEY].users.close()


def test_every_route_is_described_and_every_description_is_a_route(run: RunnerThread) -> None:
    routes, prefixes = routes_of(run)
    described = {(method.upper(), path) for path, item in document()["paths"].items() for method in item}
    assert described == routes, (f"not described: {sorted(routes - described)}; "
                                 f"described but not served: {sorted(described - routes)}")
    assert prefixes == set(NOT_DESCRIBED)  # the console's HTML pages, listed as such
    assert set(document()["x-citywatch-not-described"]) == prefixes
    assert len(routes) == len(OPERATIONS) >= 18


def test_the_document_is_valid_openapi_3_1_and_the_validator_would_say_otherwise() -> None:
    doc = document()
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)) == len(OPERATIONS)
    broken = copy.deepcopy(doc)
    del broken["paths"]["/alerts/{alert_id}"]["get"]["responses"]["200"]["description"]
    with pytest.raises(OpenAPIValidationError):
        validate(broken)
    unnamed = copy.deepcopy(doc)
    unnamed["paths"]["/alerts/{alert_id}"]["get"]["parameters"][0]["name"] = "id"  # not the path's parameter
    with pytest.raises(OpenAPIValidationError):
        validate(unnamed)
    dangling = copy.deepcopy(doc)
    dangling["paths"]["/alerts"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] = {
        "$ref": "#/components/schemas/Nope"}
    with pytest.raises(Exception, match="Nope"):
        validate(dangling)


def test_the_schemas_of_the_structs_follow_the_code() -> None:
    """Alert's schema is generated from the Struct: every field of it is there, with its type."""
    from citywatch.model import Alert

    schemas = document()["components"]["schemas"]
    assert set(schemas["Alert"]["properties"]) == set(Alert.__struct_fields__)
    assert schemas["DispatchEvent"]["required"] == ["type"]
    bearer_free = {(op.method, op.path) for op in OPERATIONS if op.access != "bearer"}
    assert bearer_free == {("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"), ("GET", "/openapi.json"),
                           ("POST", "/dispatch/events")}
    dispatch = document()["paths"]["/dispatch/events"]["post"]
    assert {p["name"] for p in dispatch["parameters"] if p["in"] == "header"} == {
        "webhook-id", "webhook-timestamp", "webhook-signature"}
    assert dispatch["security"] == []


def conforms(doc: dict[str, Any], method: str, path: str, status: int, content_type: str, body: bytes) -> None:
    """The answer is one the document lists for this operation, and its body fits the schema given."""
    answers = doc["paths"][path][method.lower()]["responses"]
    assert str(status) in answers, f"{method} {path} answered {status}, not described ({sorted(answers)})"
    content = answers[str(status)].get("content", {})
    media = content_type.split(";")[0].strip()
    assert media in content, f"{method} {path} {status}: {media} not described"
    if media == "application/json":
        schema = {**content[media]["schema"], "components": doc["components"]}
        errors = sorted(Draft202012Validator(schema).iter_errors(json.loads(body)), key=str)
        assert not errors, f"{method} {path} {status}: {errors[0]}"


def test_real_answers_match_the_document(run: RunnerThread, mosquitto: MosquittoServer) -> None:
    """A few endpoints of a live runner, with a real alert (schemathesis would need a network install)."""
    assert run.runner is not None
    base = f"http://127.0.0.1:{run.runner.api_port}"
    token = api_token(run.settings.api, run.settings.data_dir, create=False)
    status, kind, body = http("GET", base + "/openapi.json")  # no token needed
    assert status == 200 and kind.startswith("application/json")
    doc = json.loads(body)
    assert doc == json.loads(json.dumps(document()))
    publish_all(mosquitto, [("citywatch/gas/gas-9/telemetry", payload(time.time() - 1, seq=1, lel_pct=60.0))])
    wait_until(lambda: len(run.runner.engine.by_id) == 1)  # type: ignore[union-attr]
    alert_id = next(iter(run.runner.engine.by_id))
    calls: list[tuple[str, str, str, Any, str | None]] = [
        ("GET", "/health", "/health", None, None),
        ("GET", "/ready", "/ready", None, None),
        ("GET", "/metrics", "/metrics", None, None),
        ("GET", "/stats", "/stats", None, token),
        ("GET", "/stats", "/stats", None, "not-a-token"),
        ("GET", "/alerts", "/alerts", None, token),
        ("GET", f"/alerts/{alert_id}", "/alerts/{alert_id}", None, token),
        ("GET", "/alerts/al_nope", "/alerts/{alert_id}", None, token),
        ("POST", f"/alerts/{alert_id}/assign", "/alerts/{alert_id}/{action}", {"assignee": "gas crew 3"}, token),
        ("POST", f"/alerts/{alert_id}/ack", "/alerts/{alert_id}/ack", {"by": "li"}, token),
        ("POST", f"/alerts/{alert_id}/reject", "/alerts/{alert_id}/{action}", {}, token),
        ("GET", "/incidents", "/incidents", None, token),
        ("GET", "/incidents?limit=0", "/incidents", None, token),
        ("GET", "/kpis?by=grid&since=24h", "/kpis", None, token),
        ("POST", "/silences", "/silences", {"device": "gas-9", "rule": "noise_limit", "duration": "1h",
                                             "reason": "test", "by": "li"}, token),
        ("POST", "/silences", "/silences", {"reason": "no matcher", "by": "li", "duration": "1h"}, token),
        ("GET", "/silences", "/silences", None, token),
        ("POST", "/dispatch/events", "/dispatch/events", {"type": "alert.on_site", "alert_id": alert_id}, None),
    ]
    seen = set()
    for method, url, path, sent, who in calls:
        status, kind, body = http(method, base + url, who, sent)
        conforms(doc, method, path, status, kind, body)
        seen.add((path, status))
    silence = json.loads(http("GET", base + "/silences", token)[2])[0]
    for method, url, path in (("GET", f"/silences/{silence['id']}", "/silences/{silence_id}"),
                              ("POST", f"/silences/{silence['id']}/end", "/silences/{silence_id}/end"),
                              ("POST", f"/silences/{silence['id']}/end", "/silences/{silence_id}/end")):
        status, kind, body = http(method, base + url, token, {} if method == "POST" else None)
        conforms(doc, method, path, status, kind, body)
        seen.add((path, status))
    # the answers exercised include refusals, not only the happy path
    assert {("/alerts/{alert_id}", 404), ("/stats", 401), ("/alerts/{alert_id}/{action}", 422),
            ("/incidents", 400), ("/silences", 422), ("/dispatch/events", 401),
            ("/silences/{silence_id}/end", 409)} <= seen
