"""One contract over every learned detector (house style, habit 3): input untouched, missing and
extra fields tolerated, scoring does not learn, state round-trips (through msgpack too), seeded
runs repeat exactly, constant input (a stuck sensor) never divides by zero."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from citywatch.config import Settings
from citywatch.detectors.baseline import LearnedRule, SeasonalBaseline, plain_copy, plain_hook
from citywatch.detectors.generic import GenericDetector
from citywatch.detectors.registry import build_rules
from citywatch.model import KINDS, Device, Reading
from tests.helpers import T0

Row = dict[str, Any]


def _rows(kind: str, seed: int, n: int, constant: bool) -> Iterator[Row]:
    rng = random.Random(seed)
    users = ["a", "b", "c"]
    for i in range(n):
        ts = T0 + 60.0 * i + (0 if constant else rng.uniform(-5, 5))
        battery = 90.0 if constant else round(90 - i * 0.01, 1)
        if kind == "gas":
            yield {"ts": ts, "lel_pct": 1.5 if constant else round(1 + rng.random(), 1), "battery": battery}
        elif kind == "noise":
            yield {"ts": ts, "laeq_db": 45.0 if constant else round(45 + rng.gauss(0, 2), 1), "battery": battery}
        elif kind == "water":
            yield {"ts": ts, "depth_cm": 4.0 if constant else round(abs(rng.gauss(0, 1)), 1), "battery": battery}
        elif kind == "parking":
            yield {"ts": ts, "occupied": True if constant else (i // 30) % 2 == 0, "battery": battery}
        else:
            event = "unlock_ok" if constant or rng.random() < 0.2 else rng.choice(["door_closed", "unlock_fail"])
            yield {"ts": ts, "event": event, "user": "a" if constant else rng.choice(users), "battery": battery}


def _detectors() -> list[tuple[str, str, Callable[[], Any]]]:
    """(id, kind, factory) for every learned rule the registry builds, a bare baseline, the generic one."""
    out: list[tuple[str, str, Callable[[], Any]]] = []

    def fresh(kind: str, index: int) -> Callable[[], Any]:
        return lambda: build_rules(Settings())[kind][index]

    for kind in KINDS:
        for index, rule in enumerate(build_rules(Settings())[kind]):
            if isinstance(rule, LearnedRule):
                out.append((f"{kind}:{rule.name}", kind, fresh(kind, index)))
    out.append(("baseline", "noise", lambda: SeasonalBaseline("laeq_db", min_spread=0.3)))
    out.append(("generic", "generic", GenericDetector))
    return out


DETECTORS = _detectors()


def rows_for(kind: str, seed: int = 1, n: int = 400, constant: bool = False) -> list[Row]:
    if kind == "generic":
        rng = random.Random(seed)
        return [{"ts": T0 + 300.0 * i, "value": 5.0 if constant else rng.gauss(0, 1) + (6 if i > 300 else 0)}
                for i in range(n)]
    return list(_rows(kind, seed, n, constant))


def state_of(detector: Any) -> Any:
    return detector.to_state()


def restore(detector: Any, state: Any) -> Any:
    if isinstance(detector, GenericDetector):
        return GenericDetector.from_state(state)
    return detector.load(state)


@pytest.fixture(params=DETECTORS, ids=[d[0] for d in DETECTORS])
def case(request: pytest.FixtureRequest) -> tuple[str, Callable[[], Any]]:
    _, kind, factory = request.param
    return kind, factory


def test_every_learned_rule_is_under_contract() -> None:
    names = {d[0].split(":")[1] for d in DETECTORS if ":" in d[0]}
    assert len(names) == 12


def test_input_untouched_and_scoring_does_not_learn(case: tuple[str, Callable[[], Any]]) -> None:
    kind, factory = case
    detector = factory()
    for x in rows_for(kind):
        before = copy.deepcopy(x)
        state = copy.deepcopy(state_of(detector))
        score = detector.score_one(x)
        assert math.isfinite(score) and score >= 0
        assert state_of(detector) == state  # scoring alone changes nothing
        detector.learn_one(x)
        assert x == before


def test_missing_and_extra_fields_are_tolerated(case: tuple[str, Callable[[], Any]]) -> None:
    kind, factory = case
    detector = factory()
    for i, x in enumerate(rows_for(kind, n=100)):
        x = {**x, "firmware": "1.2.3", "extra": [1, 2]}
        if i % 3 == 0:
            x = {k: v for k, v in x.items() if k == "ts"}
        if i % 7 == 0:
            x = {}
        assert math.isfinite(detector.score_one(x))
        detector.learn_one(x)


def test_state_round_trips_through_msgpack(case: tuple[str, Callable[[], Any]]) -> None:
    kind, factory = case
    rows = rows_for(kind, seed=2, n=500)
    straight = factory()
    for x in rows[:300]:
        straight.learn_one(x)
    packed = msgspec.msgpack.encode(state_of(straight))
    resumed = restore(factory(), msgspec.msgpack.decode(packed))
    assert state_of(resumed) == state_of(straight)
    for x in rows[300:]:
        assert resumed.score_one(x) == straight.score_one(x)
        resumed.learn_one(x)
        straight.learn_one(x)
    assert state_of(resumed) == state_of(straight)


def test_seeded_runs_repeat_exactly(case: tuple[str, Callable[[], Any]]) -> None:
    kind, factory = case

    def run() -> list[float]:
        detector = factory()
        scores = []
        for x in rows_for(kind, seed=3):
            scores.append(detector.score_one(x))
            detector.learn_one(x)
        return scores

    assert run() == run()


def test_constant_input_never_divides_by_zero(case: tuple[str, Callable[[], Any]]) -> None:
    kind, factory = case
    detector = factory()
    for x in rows_for(kind, n=3000, constant=True):
        assert math.isfinite(detector.score_one(x))
        detector.learn_one(x)


@pytest.mark.parametrize("kind", KINDS)
def test_rules_keep_plain_msgpack_state_and_score_in_unit_range(kind: str) -> None:
    """As pipeline rules: the device state stores as plain data, a state restored from its stored
    form goes on exactly like the one kept in memory, and `last_score` stays within [0, 1]."""
    rules = [r for r in build_rules(Settings())[kind] if isinstance(r, LearnedRule)]
    device = Device(id="d", kind=kind, tenants=1, zone_class="2", max_stay_min=60)
    state: dict[str, Any] = {}
    restored: dict[str, Any] | None = None
    for i, x in enumerate(rows_for(kind, n=2000)):
        if i == 1500:
            stored = msgspec.msgpack.encode(state, enc_hook=plain_hook)
            restored = msgspec.msgpack.decode(stored)
            assert restored == plain_copy(state)
            assert msgspec.json.decode(msgspec.json.encode(state, enc_hook=plain_hook)) == restored  # Faust JSON
        values = {k: v for k, v in x.items() if k not in ("ts", "battery")}
        reading = Reading("d", kind, x["ts"], x["ts"], values, battery=x["battery"])
        for rule in rules:
            finding = rule.evaluate(reading, device, state)
            score = rule.last_score
            assert 0.0 <= score <= 1.0
            if restored is not None:
                assert rule.evaluate(reading, device, restored) == finding
                assert rule.last_score == score
    assert restored is not None and plain_copy(restored) == plain_copy(state)
