"""Faust agents and Tables under `test_context()` (no broker): the process agent's records and
their partitions, state hand-over between workers, partition ownership, people's actions, and
the sink's idempotence by transition id."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka.partitioner import DefaultPartitioner

from citywatch.config import Settings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.detectors.record import stored_header
from citywatch.model import Device, Output, Transition
from citywatch.sinks.store import AlertStore, store_path
from citywatch.streams.bridge import ACTION_HEADER, KafkaSettings, message_key, partition_for
from citywatch.streams.device_value import decode_value
from citywatch.streams.faust_app import FaustCity, encode_dead_letter, encode_transition
from citywatch.streams.pipeline import Pipeline
from tests.conftest import make_settings
from tests.helpers import T0, DictDevices

P = 4
GAS = Device(id="gas-7", kind="gas", district="Nanhu", grid="G001")
NOISE = Device(id="noise-3", kind="noise", zone_class="2")
LOCK = Device(id="lock-2", kind="lock", tenants=1)
DEVICES = DictDevices({d.id: d for d in (GAS, NOISE, LOCK)})


def telemetry(device: Device, ts: float, seq: int, **fields: Any) -> tuple[str, bytes, float]:
    body = {"ts": ts, "seq": seq, **fields}
    return f"citywatch/{device.kind}/{device.id}/telemetry", json.dumps(body).encode(), ts + 0.5


def settings(tmp_path: Path, **sections: Any) -> Settings:
    sections.setdefault("api", {"enabled": False})
    return make_settings(tmp_path / "data", **sections)


class Recorder:
    def __init__(self) -> None:
        self.transitions: list[Transition] = []
        self.outputs: list[Output] = []

    async def __call__(self, out: Output) -> None:
        self.outputs.append(out)
        self.transitions.extend(out.transitions)


# test_context's put waits until the agent took the event, so each put is a batch of its own: a short
# batch window keeps that fast (batches of many events: test_a_batch_*).
KAFKA = KafkaSettings(partitions=P, batch_within_s=0.001)


def city_for(s: Settings, worker_id: str = "w1", role: str = "process") -> tuple[FaustCity, Recorder]:
    city = FaustCity(s, KAFKA, role=role, worker_id=worker_id, devices=DEVICES,
                     clock=lambda: T0)
    recorder = Recorder()
    city.publish = recorder
    return city, recorder


async def put(agent: Any, topic: str, payload: bytes, received_at: float) -> Any:
    key = message_key(topic, "citywatch")
    return await agent.put(payload, key=key, partition=partition_for(key, P),
                           headers={"topic": topic.encode(), "received_at": repr(received_at).encode()})


def feed(city: FaustCity, messages: list[tuple[str, bytes, float]]) -> None:
    async def go() -> None:
        async with city.process_agent.test_context() as agent:
            for m in messages:
                await put(agent, *m)
    asyncio.run(go())


@pytest.fixture
def closing() -> Iterator[list[FaustCity]]:
    cities: list[FaustCity] = []
    yield cities
    for city in cities:
        city.close()


def test_kafka_partitioner_and_ours_agree() -> None:
    partitioner = DefaultPartitioner()
    for i in range(200):
        key = f"dev-{i}".encode()
        assert partition_for(key, 12) == partitioner(key, list(range(12)), list(range(12)))
    assert message_key("citywatch/gas/gas-7/telemetry", "citywatch") == b"gas-7"
    assert message_key("weird/topic", "citywatch") == b"weird/topic"  # still dead-lettered downstream


def test_process_agent_writes_one_record_per_device_into_its_partition(
        tmp_path: Path, closing: list[FaustCity]) -> None:
    city, rec = city_for(settings(tmp_path))
    closing.append(city)
    feed(city, [telemetry(GAS, T0, 1, lel_pct=2.0), telemetry(GAS, T0 + 60, 2, lel_pct=30.0)])

    assert [t.transition for t in rec.transitions] == ["opened"]
    record = decode_value(city.table.data[GAS.id.encode()])
    assert stored_header(record.state)["seq"] == 2
    assert record.alerts["gas_level"].alert is not None
    assert record.alerts["gas_level"].alert.id == rec.transitions[0].alert_id
    # every changelog write went to the partition the bridge's key maps to
    pending = [f.message for f in city.app.producer.buffer.pending._queue]
    changelog = [m for m in pending if m.channel.get_topic_name().endswith("devices-changelog")]
    assert changelog and {m.partition for m in changelog} == {partition_for(GAS.id.encode(), P)}


class CountingTable(dict[bytes, bytes]):
    """The Table's mapping, counting writes per key."""

    def __init__(self, data: dict[bytes, bytes]) -> None:
        super().__init__(data)
        self.writes: dict[bytes, int] = {}

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.writes[key] = self.writes.get(key, 0) + 1
        super().__setitem__(key, value)


def test_a_batch_writes_each_device_once_and_equals_event_by_event(
        tmp_path: Path, closing: list[FaustCity]) -> None:
    messages = []
    for i in range(30):  # three devices, interleaved: gas opens level-1 then level-2, noise opens after its hold
        messages.append(telemetry(GAS, T0 + 60 * i, i + 1, lel_pct=2.0 + 2.0 * i))
        messages.append(telemetry(NOISE, T0 + 60 * i + 1, i + 1, laeq_db=50.0 + i))
    events = [(message_key(topic, "citywatch"), payload, {"topic": topic.encode(), "received_at": repr(at).encode()},
               None) for topic, payload, at in messages]

    one_by_one, rec1 = city_for(settings(tmp_path / "a"), "w1")
    batched, rec2 = city_for(settings(tmp_path / "b"), "w2")
    closing += [one_by_one, batched]

    async def go() -> None:
        for event in events:
            await one_by_one.handle(*event)
        assert batched.core is not None
        batched.core.table = CountingTable({})
        await batched.handle_batch(events)

    asyncio.run(go())
    assert len(rec2.outputs) == 1  # one publish for the batch
    strip = [(t.alert.rule, t.transition, t.alert.severity, t.at) for t in rec1.transitions]
    assert strip and strip == [(t.alert.rule, t.transition, t.alert.severity, t.at) for t in rec2.transitions]
    assert batched.core is not None and one_by_one.core is not None
    table = batched.core.table
    assert table.writes == {GAS.id.encode(): 1, NOISE.id.encode(): 1}  # 60 events, two writes
    for key in (GAS.id.encode(), NOISE.id.encode()):
        assert decode_value(table[key]) == decode_value(one_by_one.table.data[key])


def test_state_survives_a_handover_after_every_single_message(tmp_path: Path, closing: list[FaustCity]) -> None:
    """Hold streaks, clear streaks and flap history move with the partition: a new worker is
    built from the previous one's Table before every message, and the transitions are those
    of one uninterrupted embedded pipeline."""
    s = settings(tmp_path, alerts={"rules": {"noise_limit": {"hold_readings": 2},
                                             "gas_level": {"clear_readings": 2}},
                                   "flap_max_cycles": 3})
    messages, t, seq = [], T0, 0
    for _cycle in range(4):  # the 4th opening within the window is a flapping alert
        for lel in (30.0, 2.0, 2.0):
            t, seq = t + 60, seq + 1
            messages.append(telemetry(GAS, t, seq, lel_pct=lel))
    for db in (72.0, 73.0, 74.0, 50.0):  # noise opens on the 2nd loud reading
        t, seq = t + 60, seq + 1
        messages.append(telemetry(NOISE, t, seq, laeq_db=db))
    messages.append(telemetry(LOCK, t + 1, 1, event="forced_open"))  # latched: stays open

    embedded = Pipeline(s, DEVICES, AlertEngine(s.alerts), started_at=T0)
    out = Output()
    for m in messages:
        embedded.process(*m, out)
    expected = out.transitions
    assert [x.transition for x in expected].count("flapping") == 1

    got: list[Transition] = []
    records: dict[bytes, bytes] = {}
    for i, m in enumerate(messages):
        city, rec = city_for(s, worker_id=f"w{i}")
        closing.append(city)
        for key, value in records.items():
            city.table.data[key] = value  # what changelog recovery hands the successor
        feed(city, [m])
        got += rec.transitions
        records = dict(city.table.data.items())
    assert got == expected


def test_a_worker_loads_and_ticks_only_the_partitions_it_owns(tmp_path: Path, closing: list[FaustCity]) -> None:
    s = settings(tmp_path, alerts={"review_deadline_h": 1.0}, rules={"health": {"offline_intervals": 1000}})
    assert partition_for(GAS.id.encode(), P) != partition_for(LOCK.id.encode(), P)
    first, _ = city_for(s)
    closing.append(first)
    feed(first, [telemetry(GAS, T0, 1, lel_pct=30.0), telemetry(LOCK, T0, 1, event="forced_open")])

    second, rec = city_for(s, worker_id="w2")
    closing.append(second)
    for key, value in first.table.data.items():
        second.table.data[key] = value  # a standby copy holds every partition
    assert second.core is not None
    second.core.assign({partition_for(GAS.id.encode(), P)})
    out = asyncio.run(second.tick(T0 + 2 * 3600))
    assert [(t.transition, t.alert.device_id) for t in out.transitions] == [("escalated", GAS.id)]
    assert set(second.core.engine.by_key) == {(GAS.id, "gas_level")}
    assert second.heartbeat.exists()
    beat = json.loads(second.heartbeat.read_text())
    assert beat["owned"] == [partition_for(GAS.id.encode(), P)]


def test_people_act_through_the_telemetry_topic(tmp_path: Path, closing: list[FaustCity]) -> None:
    city, rec = city_for(settings(tmp_path))
    closing.append(city)

    async def go() -> None:
        async with city.process_agent.test_context() as agent:
            await put(agent, *telemetry(LOCK, T0, 1, event="forced_open"))
            alert_id = rec.transitions[0].alert_id
            key = LOCK.id.encode()
            for action, target in (("ack", alert_id), ("resolve", alert_id), ("ack", "al_nope")):
                body = json.dumps({"alert_id": target, "by": "ops-1", "at": T0 + 60}).encode()
                await agent.put(body, key=key, partition=partition_for(key, P),
                                headers={ACTION_HEADER: action.encode()})

    asyncio.run(go())
    assert [t.transition for t in rec.transitions] == ["opened", "acknowledged", "resolved"]
    assert rec.transitions[1].alert.acked_by == "ops-1"
    assert city.core is not None and city.core.counters["actions_rejected"] == 1
    assert GAS.id.encode() not in city.table.data and LOCK.id.encode() in city.table.data


def test_bad_input_becomes_a_dead_letter_and_the_sink_stores_it(tmp_path: Path, closing: list[FaustCity]) -> None:
    s = settings(tmp_path)
    city, rec = city_for(s)
    closing.append(city)
    feed(city, [("citywatch/gas/gas-7/telemetry", b"{nope", T0), ("citywatch/gas/ghost/telemetry", b"{}", T0)])
    dead = [d for o in rec.outputs for d in o.dead_letters]
    assert [d.reason for d in dead] == ["malformed_json", "unknown_device"]

    sink_city, _ = city_for(s, worker_id="sink", role="sink")
    closing.append(sink_city)

    async def go() -> None:
        async with sink_city.deadletters_agent.test_context() as agent:
            await agent.put(encode_dead_letter(dead[0]), wait=False)
            await agent.put(encode_dead_letter(dead[1]))

    asyncio.run(go())
    store = AlertStore(store_path(s.data_dir))
    assert store.dead_letter_counts() == {"malformed_json": 1, "unknown_device": 1}
    store.close()


def test_sink_stores_and_enqueues_each_transition_once(tmp_path: Path, closing: list[FaustCity]) -> None:
    s = settings(tmp_path, webhooks={"url": "http://127.0.0.1:9/hook"})
    city, rec = city_for(s)
    closing.append(city)
    feed(city, [telemetry(GAS, T0, 1, lel_pct=30.0), telemetry(GAS, T0 + 60, 2, lel_pct=60.0),
                telemetry(GAS, T0 + 120, 3, lel_pct=1.0)])
    opened, updated, resolved = [t for t in rec.transitions if t.alert.rule == "gas_level"]
    sink_city, _ = city_for(s, worker_id="sink", role="sink")
    closing.append(sink_city)
    assert sink_city.sink is not None

    # a redelivery after a rebalance: the first two again, and again after the third
    stream = [opened, updated, opened, resolved, updated, opened]

    async def go() -> list[int]:
        async with sink_city.deliver_agent.test_context() as agent:
            for t in stream[:-1]:
                await agent.put(encode_transition(t), wait=False)
            await agent.put(encode_transition(stream[-1]))
            return list(agent.results.values())

    stored = asyncio.run(go())
    assert sum(stored) == 3
    assert sink_city.sink.counters["duplicates"] == 3
    store = AlertStore(store_path(s.data_dir))
    assert [t.id for t in store.transitions()] == [opened.id, updated.id, resolved.id]
    (alert,) = [a for a in store.alerts(None) if a.rule == "gas_level"]
    assert alert.status == "resolved"  # a late duplicate of an older transition does not roll it back
    rows = store.conn.execute("SELECT webhook_id FROM webhook_outbox ORDER BY seq").fetchall()
    store.close()
    assert [r[0] for r in rows] == [opened.id, updated.id, resolved.id]
    assert msgspec.json.decode(encode_transition(opened), type=Transition) == opened


def test_sink_api_lists_alerts_and_forwards_actions_to_the_owner(tmp_path: Path, closing: list[FaustCity]) -> None:
    import urllib.error
    import urllib.request


    s = settings(tmp_path, api={"enabled": True, "port": 0, "token": "t0ken-t0ken"})
    city, rec = city_for(s)
    closing.append(city)
    feed(city, [telemetry(LOCK, T0, 1, event="forced_open")])
    sink_city, _ = city_for(s, worker_id="sink", role="sink")
    closing.append(sink_city)
    assert sink_city.sink is not None
    sink_city.sink.write(rec.transitions)
    alert_id = rec.transitions[0].alert_id
    requested: list[tuple[str, str, dict[str, Any]]] = []

    async def request_action(device_id: str, action: str, body: bytes) -> None:
        requested.append((device_id, action, json.loads(body)))

    sink_city.request_action = request_action  # type: ignore[method-assign]

    def call(base: str, path: str, method: str = "GET", token: str = "t0ken-t0ken") -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        data = json.dumps({"by": "ops-7"}).encode() if method == "POST" else None
        request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    async def go() -> list[tuple[int, Any]]:
        runner = await sink_city.start_sink_api()
        host, port = "127.0.0.1", next(iter(runner.sites)).port  # type: ignore[attr-defined]  # httpserve's site
        calls = [("/health", "GET", ""), ("/alerts", "GET", "t0ken-t0ken"), ("/alerts", "GET", "wrong"),
                 (f"/alerts/{alert_id}/ack", "POST", "t0ken-t0ken"), ("/alerts/al_nope/ack", "POST", "t0ken-t0ken"),
                 ("/kpis?by=kind&since=3650d", "GET", "t0ken-t0ken"), ("/kpis", "GET", "wrong")]
        try:
            return [await asyncio.to_thread(call, f"http://{host}:{port}", path, method, token)
                    for path, method, token in calls]
        finally:
            await runner.cleanup()

    health, listed, unauthorized, acked, unknown, figures, figures_denied = asyncio.run(go())
    assert figures[0] == 200 and figures[1]["total"]["opened"] == 1 and figures_denied[0] == 401
    assert [g["key"] for g in figures[1]["groups"]] == [{"kind": "lock"}]
    assert health[0] == 200 and listed[0] == 200 and [a["id"] for a in listed[1]] == [alert_id]
    assert unauthorized[0] == 401 and unknown[0] == 404
    assert acked == (202, {"accepted": "ack", "alert_id": alert_id, "device_id": LOCK.id})
    assert [(d, a, b["alert_id"], b["by"]) for d, a, b in requested] == [(LOCK.id, "ack", alert_id, "ops-7")]
