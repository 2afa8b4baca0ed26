"""The embedded runner and the Faust runner give the same alert transitions for the same input.

One recorded message list (the simulator, with incidents, plus bad input) goes (1) through the
Pipeline driven as EmbeddedRunner._process drives it (batches, a tick after each batch), and
(2) through the Faust `process` agent under `test_context()` with the same batches and ticks.
Also across a hand-over: one Faust worker takes the first half, a second one, built from the
first one's Table (what changelog recovery gives it), takes the rest. The Faust worker judges
silence only as far as the bridges' watermarks vouch (streams/watermark.py): here a watermark in
every partition after each batch, at the batch's clock, as the embedded runner's tick.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citywatch.config import Settings, load_settings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.ingest.simulator import Simulator, bad_messages, make_devices
from citywatch.model import Device, Output, Transition
from citywatch.streams.bridge import KafkaSettings, message_key, partition_for
from citywatch.streams.faust_app import FaustCity
from citywatch.streams.pipeline import Pipeline
from citywatch.streams.watermark import WATERMARK_HEADER, Watermark, encode_watermark
from tests.helpers import T0, DictDevices

PARTITIONS = 4
BATCH = 50
Recorded = list[tuple[str, bytes, float]]  # (topic, payload, received_at)


def equivalence_settings(data_dir: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": data_dir, "api": {"enabled": False},
        # short deadlines so the run escalates; the rest as configured by default
        "alerts": {"review_deadline_h": 0.5, "response_deadline_h": 1.0},
    }
    base.update(overrides)
    return load_settings(None, base)


def recorded_input(devices: list[Device], hours: float = 2.0, seed: int = 7) -> Recorded:
    """Simulated telemetry with every incident type, and a handful of bad messages, in time order."""
    sim = Simulator(devices, seed=seed, start=T0, horizon_s=hours * 3600 * 0.6, incident_rate=0.1)
    messages = [(topic, payload, ts + 0.4) for topic, payload, ts in sim.messages(hours * 3600)]
    bad = bad_messages(devices, seed=seed, now=T0 + 1800)
    for i, (topic, payload, _reason) in enumerate(bad):
        messages.insert(len(messages) // 2 + i * 7, (topic, payload, T0 + 1800 + i))
    return messages


def batches(messages: Recorded) -> Iterator[tuple[Recorded, float]]:
    for start in range(0, len(messages), BATCH):
        batch = messages[start:start + BATCH]
        yield batch, batch[-1][2]


def run_embedded(settings: Settings, devices: list[Device], messages: Recorded) -> list[Transition]:
    """As EmbeddedRunner._process: process the batch, then tick at the batch's clock."""
    pipeline = Pipeline(settings, DictDevices({d.id: d for d in devices}), AlertEngine(settings.alerts),
                        started_at=T0)
    transitions: list[Transition] = []
    for batch, now in batches(messages):
        out = Output()
        for topic, payload, received_at in batch:
            pipeline.process(topic, payload, received_at, out)
        pipeline.tick(now, out)
        transitions += out.transitions
    return transitions


def faust_city(settings: Settings, devices: list[Device], worker_id: str) -> tuple[FaustCity, list[Transition]]:
    # watermark_s: a watermark per batch, however far apart the simulated batches are (no gap: no grace)
    city = FaustCity(settings, KafkaSettings(partitions=PARTITIONS, batch_within_s=0.001, watermark_s=3600.0),
                     role="process", worker_id=worker_id,
                     devices=DictDevices({d.id: d for d in devices}), clock=lambda: T0)
    published: list[Transition] = []

    async def record(out: Output) -> None:
        published.extend(out.transitions)

    city.publish = record
    return city, published


async def run_faust(city: FaustCity, messages: Recorded) -> None:
    prefix = city.settings.mqtt.topic_prefix
    async with city.process_agent.test_context() as agent:
        for batch, now in batches(messages):
            for topic, payload, received_at in batch:
                key = message_key(topic, prefix)
                await agent.put(payload, key=key, partition=partition_for(key, PARTITIONS),
                                headers={"topic": topic.encode(), "received_at": repr(received_at).encode()})
            for p in range(PARTITIONS):  # the bridge vouches: it forwarded everything received until `now`
                await agent.put(encode_watermark(Watermark("bridge-1", p, now, 0.0)), key=b"bridge-1", partition=p,
                                headers={WATERMARK_HEADER: b"1"})
            await city.tick(now)


def by_alert(transitions: list[Transition]) -> dict[str, list[Transition]]:
    grouped: dict[str, list[Transition]] = defaultdict(list)
    for t in transitions:
        grouped[t.alert_id].append(t)
    return dict(grouped)


@pytest.fixture(scope="module")
def devices() -> list[Device]:
    return make_devices(40, seed=3)


@pytest.fixture(scope="module")
def messages(devices: list[Device]) -> Recorded:
    return recorded_input(devices)


def test_embedded_and_faust_give_the_same_transitions(tmp_path: Path, devices: list[Device],
                                                      messages: Recorded) -> None:
    settings = equivalence_settings(tmp_path)
    expected = run_embedded(settings, devices, messages)
    city, got = faust_city(settings, devices, "w1")
    asyncio.run(run_faust(city, messages))
    city.close()

    kinds = {t.transition for t in expected}
    assert {"opened", "resolved", "escalated"} <= kinds, kinds  # the input exercises the lifecycle
    assert {t.alert.rule for t in expected} >= {"gas_level", "device_offline", "lock_forced_open"}
    assert len(expected) >= 20
    assert by_alert(got) == by_alert(expected)  # same ids, kinds, times and alert snapshots, per alert
    assert got == expected  # one agent, same batches: even the global order is the same


def test_a_second_worker_resumes_from_the_first_ones_table(tmp_path: Path, devices: list[Device],
                                                           messages: Recorded) -> None:
    # Offline detection is left out here: a worker that takes over a partition grants its devices
    # a grace period (no offline alert for silence overlapping the takeover), by design.
    settings = equivalence_settings(tmp_path, rules={"health": {"offline_intervals": 10_000}})
    expected = run_embedded(settings, devices, messages)
    half = (len(messages) // BATCH // 2) * BATCH
    first, got_first = faust_city(settings, devices, "w1")
    asyncio.run(run_faust(first, messages[:half]))
    second, got_second = faust_city(settings, devices, "w2")
    # What changelog recovery gives the successor: the first worker's records, key by key.
    records = dict(first.table.data.items())
    assert records and all(isinstance(v, bytes) for v in records.values())
    for key, value in records.items():
        second.table.data[key] = value
    asyncio.run(run_faust(second, messages[half:]))
    first.close()
    second.close()

    assert any(t.transition == "opened" for t in got_first) and any(t.transition == "resolved" for t in got_second)
    # alerts open across the hand-over are continued, not reopened
    spanning = {t.alert_id for t in got_first} & {t.alert_id for t in got_second}
    assert spanning
    assert got_first + got_second == expected
