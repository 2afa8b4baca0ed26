"""Escalation up the grid hierarchy (issue 14, item 4): webhook routes by level, on an injected clock.

An alert nobody acknowledges goes to the grid's route; after the review deadline to the community's,
after the response deadline to the district's, after `escalation.repeat_h` more to the city's. Each
endpoint is a real HTTP receiver; the runner is the real one on a real Mosquitto.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from citywatch.config import WebhookRoute
from citywatch.devices.registry import Registry, registry_path
from citywatch.errors import ConfigError
from citywatch.model import Alert, Device, Transition
from citywatch.sinks.outbox import matches
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.mosquitto import MosquittoServer
from tests.servers.receiver import WebhookReceiver

H = 3600.0
GAS = Device(id="gas-7", kind="gas", district="Nanhu", grid="G7", community="Jianshe", city="Jiaxing",
             interval_s=86400)  # silent for hours of injected time without going offline
LEVELS = ("grid", "community", "district", "city")


@pytest.fixture
def receivers() -> Any:
    found = {level: WebhookReceiver().start() for level in LEVELS}
    yield found
    for r in found.values():
        r.stop()


def transitions(receiver: WebhookReceiver) -> list[str]:
    return [b["transition"] for b in receiver.bodies()]


def test_an_unacknowledged_alert_climbs_from_the_grid_route_to_the_city_route(
        tmp_path: Path, mosquitto: MosquittoServer, receivers: dict[str, WebhookReceiver]) -> None:
    routes = [
        {"name": "grid-G7", "url": receivers["grid"].url, "level": "grid", "grids": ["G7"]},
        {"name": "community-Jianshe", "url": receivers["community"].url, "level": "community",
         "communities": ["Jianshe"]},
        {"name": "district-Nanhu", "url": receivers["district"].url, "level": "district", "districts": ["Nanhu"]},
        {"name": "city-Jiaxing", "url": receivers["city"].url, "level": "city", "cities": ["Jiaxing"]},
        # another community's route at the same level: never reached by G7's alert
        {"name": "community-other", "url": receivers["grid"].url + "-other", "level": "community",
         "communities": ["Xinxing"]},
    ]
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-escalation"},
                             webhooks={"routes": routes, "secret": "plain-secret-for-tests",
                                       "backoff_initial_s": 0.05},
                             alerts={"deadlines": {"gas": {"review_h": 1, "response_h": 2}},
                                     "escalation": {"repeat_h": 1}})
    registry = Registry(registry_path(settings.data_dir))
    registry.add(GAS)
    registry.close()
    clock = {"now": time.time()}
    run = RunnerThread(settings, clock=lambda: clock["now"]).start()
    grid, community, district, city = (receivers[level] for level in LEVELS)

    def gas(lel: float, seq: int) -> tuple[str, bytes]:
        return "citywatch/gas/gas-7/telemetry", json.dumps({"ts": time.time() - 1, "seq": seq,
                                                            "lel_pct": lel}).encode()

    try:
        publish_all(mosquitto, [gas(30.0, 1)])
        wait_until(lambda: transitions(grid) == ["opened"])
        assert run.runner is not None
        alert_id = next(iter(run.runner.engine.by_id))
        opened = run.runner.engine.by_id[alert_id].opened_at  # the reading's time: deadlines run from it

        clock["now"] = opened + 1 * H + 1  # review deadline missed: the community level
        wait_until(lambda: transitions(community) == ["escalated"])
        publish_all(mosquitto, [gas(60.0, 2)])  # what happens next goes to the community's route too
        wait_until(lambda: transitions(community) == ["escalated", "updated"])
        assert "escalated to the community level" in community.bodies()[0]["reason"]

        clock["now"] = opened + 2 * H + 1  # response deadline missed: the district level
        wait_until(lambda: transitions(district) == ["escalated"])
        clock["now"] = opened + 3 * H + 1  # repeat_h later, still not closed: the city level
        wait_until(lambda: transitions(city) == ["escalated"])
        assert "escalated to the city level" in city.bodies()[0]["reason"]
        assert run.runner.engine.by_id[alert_id].escalation_level == 3

        run.call(lambda: run.runner.resolve(alert_id, "city-duty-officer"))  # type: ignore[union-attr]
        wait_until(lambda: transitions(city) == ["escalated", "resolved"])
    finally:
        run.stop()
    assert transitions(grid) == ["opened"]
    assert transitions(community) == ["escalated", "updated"]
    assert transitions(district) == ["escalated"]
    assert {b["alert"]["id"] for r in receivers.values() for b in r.bodies()} == {alert_id}
    assert city.bodies()[0]["alert"]["escalations"] == ["review", "response", "response+1"]


def test_route_levels_are_checked_and_matched_by_name() -> None:
    with pytest.raises(ConfigError, match=r"webhooks.routes\[x\].level: 'street' is not one of"):
        make_settings(Path("/tmp/unused"), webhooks={"routes": [{"name": "x", "url": "http://a/h", "level": "street"}]})
    custom = make_settings(Path("/tmp/unused"), alerts={"escalation": {"levels": ["grid", "street", "city"]}},
                           webhooks={"routes": [{"name": "x", "url": "http://a/h", "level": "street"}]})
    route = custom.webhooks.routes[0]
    levels = custom.alerts.escalation.levels

    def at(level: int) -> Transition:
        alert = Alert(id="al_1", device_id="d", kind="gas", rule="gas_level", severity="warning", status="open",
                      opened_at=0.0, updated_at=0.0, escalation_level=level, device={"grid": "G1"})
        return Transition(id="al_1.1", alert_id="al_1", transition="escalated", at=0.0, alert=alert)

    assert [matches(route, at(n), levels) for n in range(4)] == [False, True, False, False]
    assert [matches(WebhookRoute(name="any", url="http://a/h"), at(n), levels) for n in range(4)] == [True] * 4
    top = WebhookRoute(name="top", url="http://a/h", level="city")
    assert matches(top, at(9), levels)  # beyond the top level: the top level
