"""One contract over every rule the registry builds, fixed and learned alike (one interface,
detectors/base.py `Rule`): a fresh state per device, independent of every other; state that
round-trips through its stored form and goes on exactly as the one kept in memory; the same
readings give the same verdicts; state stays bounded however long the stream; and no valid
reading, in any order, makes a rule raise or score outside [0, 1]."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citywatch.config import Settings, load_settings
from citywatch.detectors.base import Rule
from citywatch.detectors.record import DeviceRecord, RuleState, known
from citywatch.detectors.registry import build_rules
from citywatch.ingest.schemas import parse_telemetry
from citywatch.model import KINDS, Device, Reading
from tests.helpers import T0

# every rule there is: the generic detector on every numeric kind too (it is off by default)
SETTINGS: Settings = load_settings(None, {"rules": {"learned": {"generic": {"fields": {
    "gas": "lel_pct", "noise": "laeq_db", "water": "depth_cm", "smoke": "obscuration_pct_per_m"}}}}})
RULES = build_rules(SETTINGS)
CASES = [(kind, i) for kind in KINDS for i in range(len(RULES[kind]))]
IDS = [f"{kind}:{RULES[kind][i].name}" for kind, i in CASES]
STATE_BOUND = 2048  # bytes of msgpack per rule and device, however long the stream
EVENTS = ["unlock_ok", "unlock_fail", "forced_open", "tamper", "door_ajar", "door_closed", "jammed", "low_battery"]


def device(kind: str) -> Device:
    return Device(id="d", kind=kind, tenants=2, zone_class="2", max_stay_min=60, interval_s=60)


def values(kind: str, rng: random.Random, i: int, constant: bool) -> dict[str, Any]:
    if kind == "gas":
        return {"lel_pct": 1.5 if constant else round(abs(rng.gauss(2, 1)) + (30 if i % 700 > 650 else 0), 1)}
    if kind == "noise":
        return {"laeq_db": 45.0 if constant else round(45 + rng.gauss(0, 3), 1), "lamax_db": 60.0}
    if kind == "water":
        return {"depth_cm": 4.0 if constant else round(abs(rng.gauss(0, 1)) + (i % 500) * 0.1 * (i % 500 > 450), 1)}
    if kind == "parking":
        return {"occupied": True if constant else (i // 30) % 2 == 0}
    if kind == "lock":
        return {"event": "unlock_ok" if constant else rng.choice(EVENTS), "user": rng.choice("abcdefgh")}
    return {"obscuration_pct_per_m": 0.1 if constant else round(abs(rng.gauss(0.2, 0.5)), 2),
            "alarm": not constant and rng.random() < 0.01}


def stream(kind: str, n: int, seed: int = 1, constant: bool = False) -> Iterator[Reading]:
    rng = random.Random(seed)
    for i in range(n):
        ts = T0 + 60.0 * i + (0 if constant else rng.uniform(-5, 5))
        battery = 90.0 if constant else round(90 - i * 0.005, 2)
        yield Reading("d", kind, ts, ts, values(kind, rng, i, constant), battery=battery)


def run(rule: Rule, kind: str, state: Any, readings: Iterator[Reading] | list[Reading]) -> list[Any]:
    """Each reading through the rule as the pipeline hands it over (record.ts the newest event time)."""
    record = DeviceRecord(kind, [])
    dev = device(kind)
    verdicts = []
    for reading in readings:
        verdicts.append(rule.evaluate(reading, dev, record, state))
        record.ts = reading.ts if not known(record.ts) else max(record.ts, reading.ts)
    return verdicts


def stored(state: RuleState | None) -> bytes:
    return msgspec.msgpack.encode(state.dump() if state is not None else None)


@pytest.fixture(params=CASES, ids=IDS)
def case(request: pytest.FixtureRequest) -> tuple[str, Rule]:
    kind, i = request.param
    return kind, RULES[kind][i]


def test_every_rule_is_under_contract() -> None:
    names = {rule.name for kind in KINDS for rule in RULES[kind]}
    assert len(names) == 28 and {"gas_level", "water_depth", "smoke_alarm", "generic_anomaly"} <= names


def plain(value: object) -> bool:
    if isinstance(value, list):
        return all(plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and plain(item) for key, item in value.items())
    return value is None or isinstance(value, bool | int | float | str | bytes)


def test_fresh_states_are_independent(case: tuple[str, Rule]) -> None:
    kind, rule = case
    first, second = rule.fresh(), rule.fresh()
    assert first is None or isinstance(first, RuleState)
    assert stored(first) == stored(second)
    run(rule, kind, first, stream(kind, 400))
    assert stored(second) == stored(rule.fresh())  # one device's learning is not another's


def test_state_round_trips_and_goes_on_exactly(case: tuple[str, Rule]) -> None:
    kind, rule = case
    readings = list(stream(kind, 700, seed=2))
    straight = rule.fresh()
    run(rule, kind, straight, readings[:400])
    resumed = rule.fresh()
    if straight is None:
        assert resumed is None
        return
    assert resumed is not None
    resumed.restore(msgspec.msgpack.decode(stored(straight)))
    assert stored(resumed) == stored(straight)
    assert plain(straight.dump())  # numbers, strings, bytes (number arrays), lists, maps: any runner can carry it
    assert msgspec.msgpack.decode(stored(straight)) == straight.dump()
    assert run(rule, kind, resumed, readings[400:]) == run(rule, kind, straight, readings[400:])
    assert stored(resumed) == stored(straight)


def test_the_same_readings_give_the_same_verdicts(case: tuple[str, Rule]) -> None:
    kind, rule = case
    first, second = rule.fresh(), rule.fresh()
    assert run(rule, kind, first, stream(kind, 600, seed=3)) == run(rule, kind, second, stream(kind, 600, seed=3))
    assert stored(first) == stored(second)


def test_state_stays_bounded(case: tuple[str, Rule]) -> None:
    kind, rule = case
    state = rule.fresh()
    readings = list(stream(kind, 12_000, seed=4))
    run(rule, kind, state, readings[:6000])
    size = len(stored(state))
    run(rule, kind, state, readings[6000:])
    assert len(stored(state)) <= STATE_BOUND and len(stored(state)) <= max(size, 64) * 1.1


def test_constant_input_never_divides_by_zero(case: tuple[str, Rule]) -> None:
    kind, rule = case
    for finding, score in run(rule, kind, rule.fresh(), stream(kind, 3000, constant=True)):
        assert math.isfinite(score) and 0.0 <= score <= 1.0
        assert finding is None or finding.rule == rule.name


def payloads(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """Any payload the kind's schema accepts (values at and beyond every threshold)."""
    pct = st.floats(0, 100, allow_nan=False)
    common: dict[str, st.SearchStrategy[Any]] = {"battery": st.none() | pct}
    fields: dict[str, st.SearchStrategy[Any]] = {
        "gas": {"lel_pct": pct},
        "noise": {"laeq_db": st.floats(0, 160), "lamax_db": st.none() | st.floats(0, 180)},
        "water": {"depth_cm": st.floats(0, 1000)},
        "parking": {"occupied": st.booleans()},
        "lock": {"event": st.sampled_from(EVENTS), "user": st.none() | st.text(max_size=8)},
        "smoke": {"obscuration_pct_per_m": pct, "alarm": st.booleans(),
                  "event": st.none() | st.sampled_from(["test", "tamper", "low_battery"])},
    }[kind]  # type: ignore[assignment]
    return st.fixed_dictionaries({**fields, **common}).map(
        lambda d: {k: v for k, v in d.items() if v is not None})


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_valid_reading_in_any_order_makes_a_rule_raise(kind: str, data: st.DataObject) -> None:
    """Readings the schema accepts, with gaps, repeats and late ones, through every rule of the kind
    the way the pipeline runs them (in-order-only rules skip late readings)."""
    steps = data.draw(st.lists(st.tuples(payloads(kind), st.sampled_from([0.0, 1.0, 60.0, 3600.0, 86400.0, -600.0])),
                               min_size=1, max_size=40))
    rules = RULES[kind]
    record = DeviceRecord(kind, [rule.fresh() for rule in rules])
    dev = device(kind)
    ts = T0
    for payload, step in steps:
        ts += step
        reading = parse_telemetry(kind, "d", msgspec.json.encode({"ts": ts, **payload}), T0 + 10 * 86400.0,
                                  1e9, 0.0)
        late = known(record.ts) and reading.ts < record.ts
        for rule, state in zip(rules, record.states, strict=True):
            if late and rule.in_order_only:
                continue
            finding, score = rule.evaluate(reading, dev, record, state)
            assert math.isfinite(score) and 0.0 <= score <= 1.0, (rule.name, score)
            assert finding is None or finding.rule == rule.name
        if not late:
            record.ts = reading.ts
    for rule, state in zip(rules, record.states, strict=True):
        assert len(stored(state)) <= STATE_BOUND, rule.name
