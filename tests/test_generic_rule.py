"""The generic detector as a learned rule in the live pipeline (`generic_anomaly`): off by default,
switched on per kind in the configuration, opening and clearing through the real pipeline core,
its per-device state plain and continuing exactly after a restore."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from citywatch.config import Settings, load_settings
from citywatch.detectors.generic_rule import GenericAnomaly
from citywatch.detectors.record import DeviceRecord
from citywatch.detectors.registry import build_rules
from citywatch.errors import ConfigError
from citywatch.model import KINDS, Device, Reading
from tests.helpers import T0, feed, make_pipeline, rule_state

ON: dict[str, Any] = {"rules": {"learned": {"generic": {"fields": {"gas": "co_ppm"}}}}}


def test_off_by_default_and_on_for_the_kinds_named() -> None:
    default = build_rules(Settings())
    assert not any(isinstance(r, GenericAnomaly) for kind in KINDS for r in default[kind])
    on = build_rules(load_settings(None, ON))
    generic = [r for kind in KINDS for r in on[kind] if isinstance(r, GenericAnomaly)]
    assert len(generic) == 1 and generic[0].kinds == {"gas"} and generic[0].field == "co_ppm"


def test_the_shipped_config_names_no_field() -> None:
    shipped = load_settings(Path(__file__).resolve().parent.parent / "config.yaml")
    assert shipped.rules.learned.generic.fields == {}


@pytest.mark.parametrize(("fields", "message"), [({"gaz": "co_ppm"}, "unknown kind 'gaz'"),
                                                 ({"gas": "co"}, "kind gas has no field 'co'")])
def test_an_unknown_kind_or_field_is_a_clear_configuration_error(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=f"rules.learned.generic.fields: {message}"):
        load_settings(None, {"rules": {"learned": {"generic": {"fields": fields}}}})


def test_opens_on_a_departure_and_clears_after_quiet_readings() -> None:
    device = Device(id="g1", kind="gas")
    pipeline = make_pipeline(device, **ON)
    rng = random.Random(5)
    opened: list[tuple[int, str]] = []
    cleared: list[tuple[int, str]] = []
    for i in range(700):
        co = 3.0 + rng.gauss(0, 0.2) + (12.0 if 500 <= i < 505 else 0.0)  # a burst of CO, under any threshold
        out = feed(pipeline, device, T0 + 60.0 * i, lel_pct=1.0, co_ppm=round(co, 2), battery=90)
        for t in out.transitions:
            if t.alert.rule == "generic_anomaly":
                (opened if t.transition == "opened" else cleared).append((i, t.transition))
    assert [i for i, _ in opened] == [500]
    assert cleared and all(i > 505 for i, _ in cleared)
    state = rule_state(pipeline, "g1", "generic_anomaly")
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(state.dump())) == state.dump()  # plain data


def test_rule_state_restored_from_storage_continues_exactly() -> None:
    rng = random.Random(6)
    device = Device(id="g1", kind="gas")
    rule = GenericAnomaly("gas", "co_ppm")
    readings = [Reading("g1", "gas", T0 + 60.0 * i, T0 + 60.0 * i,
                        {"lel_pct": 1.0, "co_ppm": 3 + rng.gauss(0, 0.2) + (5 if i > 400 else 0)}) for i in range(600)]
    record = DeviceRecord("gas", [])
    straight, resumed = rule.fresh(), rule.fresh()
    for reading in readings[:300]:
        rule.evaluate(reading, device, record, straight)
    resumed.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(straight.dump())))
    for reading in readings[300:]:
        assert rule.evaluate(reading, device, record, resumed) == rule.evaluate(reading, device, record, straight)
    assert resumed.dump() == straight.dump()


def test_devices_sharing_the_rule_keep_their_own_state() -> None:
    """One rule object serves every device of the kind: interleaved, each device's state is what
    it would be alone."""
    rng = random.Random(8)
    a = [(T0 + 60.0 * i, 3 + rng.gauss(0, 0.2)) for i in range(400)]
    b = [(T0 + 60.0 * i + 7, 50 + rng.gauss(0, 5) + (40 if i > 300 else 0)) for i in range(400)]
    device_a, device_b = Device(id="a", kind="gas"), Device(id="b", kind="gas")
    together = make_pipeline(device_a, device_b, **ON)
    for (ta, va), (tb, vb) in zip(a, b, strict=True):
        feed(together, device_a, ta, lel_pct=1.0, co_ppm=round(va, 2))
        feed(together, device_b, tb, lel_pct=1.0, co_ppm=round(vb, 2))
    for device, rows in ((device_a, a), (device_b, b)):
        alone = make_pipeline(device, **ON)
        for t, v in rows:
            feed(alone, device, t, lel_pct=1.0, co_ppm=round(v, 2))
        assert (rule_state(alone, device.id, "generic_anomaly").dump()
                == rule_state(together, device.id, "generic_anomaly").dump())
