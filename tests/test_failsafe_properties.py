"""Fail safe, as properties over any history (hypothesis), through the pipeline core and the real store.

For every kind: whatever came before (any values, any gaps, readings delivered out of order within
the seq window, the pipeline restarted from its SQLite store between any two readings, learned
detectors on or off), a reading at or over a life-safety level leaves that rule's alert open in the
batch of that reading. The converse for the rules that may wait: each delay the README's fail-safe
table documents is the real upper bound.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citywatch.config import Settings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.model import Device, Output
from citywatch.sinks.store import AlertStore
from citywatch.streams.device_value import DeviceValues
from citywatch.streams.pipeline import Pipeline
from tests.helpers import T0, DictDevices
from tests.helpers import settings as make_settings

GAS = Device(id="gas-p", kind="gas")
WATER = Device(id="water-p", kind="water")
LOCK = Device(id="lock-p", kind="lock", tenants=2)
NOISE = Device(id="noise-p", kind="noise", zone_class="2")  # day limit 60, night 50 dB(A)
BAY = Device(id="bay-p", kind="parking", max_stay_min=30)
FIRE_LANE = Device(id="lane-p", kind="parking", no_parking=True)
DEVICES = [GAS, WATER, LOCK, NOISE, BAY, FIRE_LANE]
LOCK_EVENTS = ["unlock_ok", "unlock_fail", "forced_open", "tamper", "door_ajar", "door_closed", "jammed",
               "low_battery"]
_encode = msgspec.json.Encoder().encode


@dataclass
class Harness:
    """The pipeline core with the embedded runner's persistence: each message is one batch committed to
    a real SQLite store; `restart` rebuilds engine and pipeline from that store, as `citywatch run` does."""

    settings: Settings
    path: Path
    store: AlertStore = field(init=False)
    values: DeviceValues = field(init=False)
    pipeline: Pipeline = field(init=False)
    received_at: float = T0

    def __post_init__(self) -> None:
        self.store = AlertStore(self.path)
        self.restart()

    def restart(self) -> None:
        engine = AlertEngine(self.settings.alerts, self.store.open_alerts(), track_keys=True)
        self.values = DeviceValues(keep_alert=False)
        records = self.values.load(self.store.device_values().items(), engine)
        self.pipeline = Pipeline(self.settings, DictDevices({d.id: d for d in DEVICES}), engine, records,
                                 started_at=self.received_at)

    def send(self, device: Device, ts: float, seq: int | None, **fields: Any) -> Output:
        self.received_at = max(self.received_at, ts) + 1.0
        body: dict[str, Any] = {"ts": ts, **fields}
        if seq is not None:
            body["seq"] = seq
        out = Output()
        self.pipeline.process(f"citywatch/{device.kind}/{device.id}/telemetry", _encode(body), self.received_at, out)
        assert not out.dead_letters, out.dead_letters
        engine = self.pipeline.alerts
        changed = self.pipeline.take_dirty() | self.values.touched(engine)
        self.store.commit(out, engine.take_dirty(), {d: self.values.encode(d, self.pipeline) for d in changed})
        return out

    def is_open(self, device: Device, rule: str) -> bool:
        return self.pipeline.alerts.is_open(device.id, rule)

    def close(self) -> None:
        self.store.close()


@dataclass(frozen=True)
class Step:
    gap_s: float  # event time after the previous step
    value: Any
    swap: bool  # deliver this reading before the previous one (out of order, within the seq window)
    restart: bool  # restart the pipeline from its store before delivering it


def history(values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Step]]:
    step = st.builds(Step, st.floats(0.0, 900.0), values, st.booleans(), st.booleans())
    return st.lists(step, max_size=12)


def deliver(h: Harness, device: Device, steps: list[Step], field_name: str, use_seq: bool) -> tuple[float, int]:
    """Send the history (with some neighbours swapped); returns the newest event time and next seq."""
    stamped = []
    ts, seq = T0, 0
    for s in steps:
        ts += s.gap_s
        seq += 1
        stamped.append((ts, seq, s))
    order = list(stamped)
    for i in range(1, len(order)):
        if order[i][2].swap:
            order[i - 1], order[i] = order[i], order[i - 1]
    for ts_i, seq_i, s in order:
        if s.restart:
            h.restart()
        h.send(device, ts_i, seq_i if use_seq else None, **{field_name: s.value})
    return ts, seq + 1


def harness(learned: bool, tmp: str) -> Harness:
    return Harness(make_settings(rules={"learned": {"enabled": learned}}), Path(tmp) / "state.db")


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
where = st.sampled_from(["after", "inside", "before"])  # the alarming reading's event time vs the history


def alarm_time(newest: float, position: str, offset: float) -> float:
    if position == "after":
        return newest + offset
    if position == "inside":
        return max(T0, newest - offset)
    return T0 - offset  # older than everything seen: late


# -- life-safety rules: nothing withholds the alert -------------------------------------------------


@PROPERTY
@given(steps=history(st.floats(0.0, 100.0)), alarm=st.floats(25.0, 100.0), position=where,
       offset=st.floats(0.0, 900.0), restart=st.booleans(), learned=st.booleans(), use_seq=st.booleans())
def test_gas_at_a_level_always_opens_gas_level(steps: list[Step], alarm: float, position: str, offset: float,
                                                restart: bool, learned: bool, use_seq: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        h = harness(learned, tmp)
        newest, seq = deliver(h, GAS, steps, "lel_pct", use_seq)
        if restart:
            h.restart()
        out = h.send(GAS, alarm_time(newest, position, offset), seq if use_seq else None, lel_pct=alarm)
        assert h.is_open(GAS, "gas_level"), (steps, out.transitions)
        if alarm >= 50.0:  # level-2: the alert is (or was raised to) critical in the same batch
            assert h.pipeline.alerts.by_key[(GAS.id, "gas_level")].severity == "critical"
        h.close()


@PROPERTY
@given(steps=history(st.floats(0.0, 1000.0)), alarm=st.floats(3.0, 1000.0), position=where,
       offset=st.floats(0.0, 900.0), restart=st.booleans(), learned=st.booleans(), use_seq=st.booleans())
def test_water_at_a_level_always_opens_water_depth(steps: list[Step], alarm: float, position: str, offset: float,
                                                    restart: bool, learned: bool, use_seq: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        h = harness(learned, tmp)
        newest, seq = deliver(h, WATER, steps, "depth_cm", use_seq)
        if restart:
            h.restart()
        h.send(WATER, alarm_time(newest, position, offset), seq if use_seq else None, depth_cm=alarm)
        assert h.is_open(WATER, "water_depth"), steps
        if alarm >= 25.0:
            assert h.pipeline.alerts.by_key[(WATER.id, "water_depth")].severity == "critical"
        h.close()


@PROPERTY
@given(steps=history(st.sampled_from(LOCK_EVENTS)), event=st.sampled_from(["forced_open", "tamper"]),
       position=where, offset=st.floats(0.0, 900.0), restart=st.booleans(), learned=st.booleans())
def test_a_forced_or_tampered_lock_always_alarms(steps: list[Step], event: str, position: str, offset: float,
                                                 restart: bool, learned: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        h = harness(learned, tmp)
        newest, seq = deliver(h, LOCK, steps, "event", True)
        if restart:
            h.restart()
        h.send(LOCK, alarm_time(newest, position, offset), seq, event=event)
        assert h.is_open(LOCK, "lock_forced_open" if event == "forced_open" else "lock_tamper"), steps
        h.close()


@PROPERTY
@given(steps=history(st.sampled_from(LOCK_EVENTS)), gaps=st.lists(st.floats(0.0, 70.0), min_size=4, max_size=4),
       position=where, offset=st.floats(0.0, 900.0), restart_at=st.integers(0, 5), learned=st.booleans())
def test_five_failed_unlocks_within_the_window_always_alarm(steps: list[Step], gaps: list[float], position: str,
                                                           offset: float, restart_at: int, learned: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        h = harness(learned, tmp)
        newest, seq = deliver(h, LOCK, steps, "event", True)
        start = alarm_time(newest, position, offset)
        times = [start]
        for gap in gaps:  # 5 failures within at most 280 s
            times.append(times[-1] + gap)
        for i, ts in enumerate(times):
            if i == restart_at:
                h.restart()
            h.send(LOCK, ts, seq + i, event="unlock_fail")
        assert h.is_open(LOCK, "lock_brute_force"), steps
        h.close()


# -- rules that may wait: the documented delay is the upper bound ----------------------------------


@PROPERTY
@given(steps=history(st.floats(30.0, 100.0)), loud=st.lists(st.floats(60.5, 120.0), min_size=2, max_size=2),
       restart=st.booleans(), learned=st.booleans())
def test_noise_over_the_limit_opens_by_the_second_reading_in_a_row(steps: list[Step], loud: list[float],
                                                                   restart: bool, learned: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        h = harness(learned, tmp)
        newest, seq = deliver(h, NOISE, steps, "laeq_db", True)
        newest = max(newest, T0) + 60  # in order, same daytime period (T0 is 19:06 local, day until 22:00)
        h.send(NOISE, newest, seq, laeq_db=loud[0])
        if restart:
            h.restart()
        h.send(NOISE, newest + 60, seq + 1, laeq_db=loud[1])
        assert h.is_open(NOISE, "noise_limit"), steps
        h.close()


@PROPERTY
@given(steps=history(st.booleans()), restart=st.booleans(), learned=st.booleans())
def test_an_occupied_fire_lane_opens_at_once_and_an_overstay_at_the_first_reading_past_the_limit(
        steps: list[Step], restart: bool, learned: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        h = harness(learned, tmp)
        newest, seq = deliver(h, FIRE_LANE, steps, "occupied", True)
        if restart:
            h.restart()
        h.send(FIRE_LANE, newest + 1, seq, occupied=True)
        assert h.is_open(FIRE_LANE, "parking_forbidden"), steps

        newest, seq = deliver(h, BAY, steps, "occupied", True)
        h.send(BAY, newest + 1, seq, occupied=True)
        if restart:
            h.restart()
        h.send(BAY, newest + 1 + 30 * 60 + 1, seq + 1, occupied=True)  # 30 min + 1 s: past max_stay_min
        assert h.is_open(BAY, "parking_overstay"), steps
        h.close()
