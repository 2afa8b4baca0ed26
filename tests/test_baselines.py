"""Per-device learned baselines: online, rhythm-aware, robust, warmed up, small and serialisable."""

from __future__ import annotations

import math
import random
from typing import Any

import msgspec
import pytest

from citywatch.detectors.baseline import LocalTime, SeasonalBaseline, field_ts, squash
from citywatch.ingest.simulator import Simulator, make_devices
from citywatch.model import KINDS
from tests.helpers import T0, deep_size, make_pipeline

HOUR = 3600.0
DAY = 86400.0


class Baseline:
    """A seasonal baseline with a state of its own, river style (learn_one / score_one): the model
    under test is `SeasonalBaseline`, stateless, handed the state on every call."""

    def __init__(self, field: str = "value", clock: LocalTime | None = None, **params: Any) -> None:
        self.model = SeasonalBaseline(field, clock, **params)
        self.clock = self.model.clock
        self.state = self.model.fresh()

    def learn_one(self, x: dict[str, float]) -> None:
        found = field_ts(x, self.model.field)
        if found is not None:
            self.model.update(self.state, *found)

    def score_one(self, x: dict[str, float]) -> float:
        found = field_ts(x, self.model.field)
        return abs(self.model.deviation_at(self.state, *found)) if found is not None else 0.0

    def update(self, value: float, ts: float, flagged: bool | None = None) -> None:
        self.model.update(self.state, value, ts, flagged)

    def expect(self, ts: float) -> tuple[float, float] | None:
        return self.model.expect(self.state, ts)

    @property
    def warm(self) -> bool:
        return self.model.warm(self.state)

    def to_state(self) -> list[Any]:
        return self.state.dump()

    def load(self, data: list[Any]) -> Baseline:
        self.state.restore(data)
        return self


def rhythm(ts: float, clock: LocalTime) -> float:
    """A street: 40 at night, 60 by day, ramping 05:00-07:00."""
    hour, _ = clock.position(ts)
    if hour < 5:
        return 40.0
    if hour < 7:
        return 40.0 + 10.0 * (hour - 5)
    return 60.0 if hour < 22 else 40.0


def trained(days: float = 3, step: float = 60.0, seed: int = 1, **params: float) -> Baseline:
    clock = LocalTime()
    rng = random.Random(seed)
    b = Baseline("db", clock, min_spread=0.3, **params)  # type: ignore[arg-type]
    t = T0
    while t < T0 + days * DAY:
        b.learn_one({"ts": t, "db": rhythm(t, clock) + rng.gauss(0, 1)})
        t += step
    return b


def test_local_time_knows_hour_and_weekend() -> None:
    clock = LocalTime("Asia/Shanghai")
    assert clock.position(T0)[0] == pytest.approx(19 + 6 / 60 + 40 / 3600)  # 19:06:40 local
    assert clock.hour(T0) == 19
    # T0 is Wednesday 2026-11-18 local time; Saturday and Sunday are weekend, Monday is not
    assert [clock.position(T0 + d * DAY)[1] for d in range(7)] == [False, False, False, True, True, False, False]
    assert LocalTime("UTC").hour(T0) == 11


def test_it_learns_the_daily_rhythm_and_flags_what_departs_from_it() -> None:
    b = trained()
    clock = b.clock
    night = T0 + 3 * DAY + 8 * HOUR  # 03:06 local
    day = T0 + 3 * DAY - 5 * HOUR  # 14:06 local
    mean_night, sigma = b.expect(night) or (math.nan, math.nan)
    assert mean_night == pytest.approx(40, abs=0.5) and 0.8 < sigma < 2.0
    assert b.expect(day)[0] == pytest.approx(60, abs=0.5)  # type: ignore[index]
    assert b.score_one({"ts": night, "db": 41}) < 2
    assert b.score_one({"ts": night, "db": 55}) > 8  # normal by day, not at 3 a.m.
    assert b.score_one({"ts": day, "db": 55}) > 3  # quiet for the afternoon
    # within the morning ramp the interpolation follows the rhythm
    ramp = T0 + 3 * DAY + 14 * HOUR + 45 * 60  # 06:51 local
    assert b.expect(ramp)[0] == pytest.approx(rhythm(ramp, clock), abs=2.0)  # type: ignore[index]


def test_no_score_before_the_warm_up() -> None:
    b = Baseline("db", min_count=20)
    assert b.score_one({"ts": T0, "db": 1000.0}) == 0.0
    for i in range(10):
        b.learn_one({"ts": T0 + 60 * i, "db": 50.0})
    assert not b.warm and b.score_one({"ts": T0 + 700, "db": 1000.0}) == 0.0
    for i in range(10, 40):
        b.learn_one({"ts": T0 + 60 * i, "db": 50.0})
    assert b.warm


def test_outliers_barely_move_it_and_a_lasting_shift_is_adopted() -> None:
    b = trained(days=2)
    t = T0 + 2 * DAY + 8 * HOUR  # night
    before = b.expect(t)[0]  # type: ignore[index]
    for k in range(5):
        b.learn_one({"ts": t + 60 * k, "db": 120.0})  # five wild outliers
    assert b.expect(t + 300)[0] == pytest.approx(before, abs=0.2)  # type: ignore[index]
    # the same level for many days is eventually normal (flagged points still teach a little)
    shifted = Baseline("db", seasonal=False, min_spread=0.3)
    for k in range(200):
        shifted.learn_one({"ts": T0 + 60 * k, "db": 10.0 + (k % 3) * 0.1})
    assert shifted.score_one({"ts": T0 + 60 * 200, "db": 20.0}) > 10
    for k in range(200, 20000):
        shifted.learn_one({"ts": T0 + 60 * k, "db": 20.0 + (k % 3) * 0.1})
    assert shifted.score_one({"ts": T0 + 60 * 20000, "db": 20.0}) < 2


def test_flagged_points_are_learned_at_reduced_weight() -> None:
    full = Baseline("x", seasonal=False, flagged_weight=1.0)
    reduced = Baseline("x", seasonal=False, flagged_weight=0.05)
    for b in (full, reduced):
        for k in range(300):
            b.update(10.0 + (k % 2) * 0.2, T0 + 60 * k)
        for k in range(300, 330):
            b.update(12.0, T0 + 60 * k, flagged=True)
    moved_full = full.expect(T0)[0] - 10.1  # type: ignore[index]
    moved_reduced = reduced.expect(T0)[0] - 10.1  # type: ignore[index]
    assert moved_full > 0.1 and abs(moved_reduced) < 0.02


def test_gaps_and_irregular_timestamps_are_fine() -> None:
    clock = LocalTime()
    rng = random.Random(3)
    b = Baseline("db", clock, min_spread=0.3)
    t = T0
    while t < T0 + 4 * DAY:
        b.learn_one({"ts": t, "db": rhythm(t, clock) + rng.gauss(0, 1)})
        t += rng.choice([7.0, 60.0, 61.5, 300.0]) + (2 * DAY if rng.random() < 0.0005 else 0.0)
    night = t + (3 - clock.position(t)[0]) % 24 * HOUR  # the next 03:00 local
    assert b.expect(night)[0] == pytest.approx(40, abs=1.0)  # type: ignore[index]


def test_a_cold_weekend_bucket_falls_back_to_weekdays() -> None:
    b = trained(days=2)  # Wednesday to Friday: weekday buckets only
    saturday = T0 + 3 * DAY + 8 * HOUR
    assert b.clock.position(saturday)[1]
    assert b.expect(saturday)[0] == pytest.approx(40, abs=0.5)  # type: ignore[index]


def test_constant_input_never_divides_by_zero() -> None:
    b = Baseline("x", min_spread=1e-3)
    for k in range(3000):
        b.learn_one({"ts": T0 + 60 * k, "x": 7.0})
    assert b.score_one({"ts": T0 + 60 * 3000, "x": 7.0}) == 0.0
    assert math.isfinite(b.score_one({"ts": T0 + 60 * 3000, "x": 7.5}))
    assert squash(0.0, 1.0) == 0.0 and squash(1.0, 1.0) == 0.5


def test_state_round_trips_through_msgpack() -> None:
    b = trained(days=1)
    restored = Baseline("db", min_spread=0.3).load(msgspec.msgpack.decode(msgspec.msgpack.encode(b.to_state())))
    x = {"ts": T0 + DAY + 5 * HOUR, "db": 47.0}
    assert restored.score_one(x) == b.score_one(x)
    restored.learn_one(x)
    b.learn_one(x)
    assert restored.to_state() == b.to_state()


@pytest.mark.parametrize("kind", KINDS)
def test_all_learned_state_of_a_device_stays_under_4_kib(kind: str) -> None:
    """A long run (ten days of one device per kind, incidents included) through the pipeline."""
    device = next(d for d in make_devices(20, seed=4) if d.kind == kind)
    sim = Simulator([device], seed=4, start=T0, incident_rate=1.0, horizon_s=9 * DAY)
    pipeline = make_pipeline(device)
    from citywatch.model import Output

    out = Output()
    for topic, payload, ts in sim.messages(10 * DAY):
        pipeline.process(topic, payload, ts + 0.2, out)
    record = pipeline.records[device.id]
    learned = [s for rule, s in zip(pipeline.rules[kind], record.states, strict=True) if rule.in_order_only]
    assert learned and all(s is not None for s in learned)  # the learned detectors did keep state
    stored = pipeline.codec.encode(record)
    assert len(stored) <= 4096, len(stored)
    assert pipeline.codec.encode(pipeline.codec.decode(stored, kind)) == stored
    # in memory, fully warm (pure Python, numbers counted boxed): the typed record keeps it under
    # 2.5 KiB (the dict-per-detector state took 3-4.2 KiB; lists of boxed floats 6-7 KiB)
    in_memory = deep_size(record)
    assert in_memory <= 2560, in_memory

