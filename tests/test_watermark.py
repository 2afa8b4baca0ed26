"""A Faust worker judges device silence only as far as the bridges could see (streams/watermark.py).

Unit: PartitionSight (the lowest watermark over owned partitions, unjudged partitions, a rebalance,
sight lost upstream). Then a worker under `test_context()` (no broker): its wall clock says every
device is long silent, but it declares only what the watermarks vouch for."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from citywatch.config import KafkaSettings
from citywatch.model import Device
from citywatch.streams.bridge import message_key, partition_for
from citywatch.streams.faust_app import UNJUDGED_WARN_S, FaustCity
from citywatch.streams.watermark import WATERMARK_HEADER, PartitionSight, Watermark, encode_watermark
from tests.conftest import make_settings
from tests.helpers import T0, DictDevices

P = 4


def mark(partition: int, seen_until: float, bridge: str = "b1", since: float = 0.0) -> bytes:
    return encode_watermark(Watermark(bridge, partition, seen_until, since))


def test_silence_is_judged_as_of_the_lowest_partition_once_each_has_a_watermark() -> None:
    sight = PartitionSight(3, period_s=1.0, now=100.0)
    assert sight.as_of() is None and sight.unjudged() == [0, 1, 2] and not sight.ever
    sight.observe(mark(0, 105.0))
    sight.observe(mark(1, 103.0))
    assert sight.as_of() is None and sight.unjudged() == [2] and sight.ever  # partition 2 not yet: nobody judged
    sight.observe(mark(2, 104.0))
    assert sight.as_of() == 103.0 and sight.unjudged() == []
    assert sight.behind_s(110.0) == 7.0
    assert sight.grace_from == 0.0  # no gap, no bridge regained sight
    # a rebalance: every owned partition is unjudged until its next watermark
    sight.assign({0, 2}, now=111.0)
    assert sight.as_of() is None and sight.unjudged() == [0, 2]
    assert sight.behind_s(111.0) == 8.0  # as of the last judgement
    sight.observe(mark(0, 110.0))
    sight.observe(mark(2, 109.0))
    assert sight.as_of() == 109.0  # partition 1 is not ours any more
    sight.observe(b"not json")
    sight.observe(encode_watermark(Watermark("b1", 0, 120.0, 0.0))[:-1])
    assert sight.malformed == 2 and sight.as_of() == 109.0
    sight.assign(set(), now=112.0)
    assert sight.as_of() is None  # owning nothing judges nothing


def test_a_partition_is_judged_as_of_its_slowest_bridge_until_that_one_is_gone() -> None:
    sight = PartitionSight(1, period_s=1.0, now=100.0)
    sight.observe(mark(0, 100.0, bridge="b1"))
    sight.observe(mark(0, 99.0, bridge="b2"))  # b2 is behind (a backlog, or frozen): its share may wait
    assert sight.as_of() == 99.0
    sight.observe(mark(0, 102.0, bridge="b1"))
    sight.observe(mark(0, 101.5, bridge="b2"))
    assert sight.as_of() == 101.5
    sight.observe(mark(0, 101.0, bridge="b1"))  # an older one (b1 restarted, or reordered): no step back
    assert sight.as_of() == 101.5
    for t in range(103, 162):  # b2 is gone (killed); b1 goes on: b2 still holds the partition back ...
        sight.observe(mark(0, float(t), bridge="b1"))
    assert sight.as_of() == 101.5 and sight.expired == 0 and sight.grace_from == 0.0
    sight.observe(mark(0, 162.0, bridge="b1"))  # ... until it is BRIDGE_EXPIRY_S behind: taken as gone
    assert sight.as_of() == 162.0 and sight.expired == 1
    assert sight.grace_from == 162.0  # the jump: b2's share was not watched, timers restart


def test_sight_lost_upstream_restarts_offline_timers_from_when_it_returned() -> None:
    sight = PartitionSight(2, period_s=1.0, now=100.0)
    for t in (100.0, 101.0, 102.0):
        for p in (0, 1):
            sight.observe(mark(p, t, since=95.0))
    assert sight.grace_from == 95.0 and sight.as_of() == 102.0
    sight.observe(mark(0, 103.0, since=102.5))  # the bridge's sight returned (it was blind)
    assert sight.grace_from == 102.5
    sight.observe(mark(1, 106.5, since=102.5))  # 4.5 s: within 5 periods, a slow bridge
    assert sight.grace_from == 102.5
    sight.observe(mark(0, 110.0, since=102.5))  # 7 s without a watermark: nobody watched meanwhile
    assert sight.grace_from == 110.0 and sight.as_of() == 106.5


# -- a worker (test_context: no broker) ---------------------------------------------------------------

FLEET = [Device(id=f"gas-{i:02d}", kind="gas", district="Nanhu", interval_s=1.0) for i in range(8)]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def reading(device: Device, at: float) -> tuple[bytes, bytes, dict[str, bytes]]:
    topic = f"citywatch/gas/{device.id}/telemetry"
    body = json.dumps({"ts": at, "seq": int(at - T0) + 1, "lel_pct": 0.0, "co_ppm": 1.0}).encode()
    return message_key(topic, "citywatch"), body, {"topic": topic.encode(), "received_at": repr(at).encode()}


def test_a_worker_declares_only_the_silence_the_watermarks_vouch_for(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    s = make_settings(tmp_path / "data", api={"enabled": False})
    city = FaustCity(s, KafkaSettings(partitions=P, batch_within_s=0.001), role="process", worker_id="w1",
                     devices=DictDevices({d.id: d for d in FLEET}), clock=clock)
    silent = FLEET[-1]
    silent_partition = partition_for(silent.id.encode(), P)
    assert len({partition_for(d.id.encode(), P) for d in FLEET}) == P  # the fleet covers every partition
    offline: list[str] = []

    async def record(out: Any) -> None:
        offline.extend(t.alert.device_id for t in out.transitions
                       if t.alert.rule == "device_offline" and t.transition == "opened")

    city.publish = record

    async def go() -> None:
        async with city.process_agent.test_context() as agent:
            async def send(key: bytes, value: bytes, headers: dict[str, bytes], partition: int) -> None:
                await agent.put(value, key=key, partition=partition, headers=headers)

            async def watermarks(seen_until: float, partitions: range | list[int] = range(P)) -> None:
                for p in partitions:
                    await send(b"bridge-1", mark(p, seen_until), {WATERMARK_HEADER: b"1"}, p)

            for device in FLEET:
                key, body, headers = reading(device, T0 + 1.0)
                await send(key, body, headers, partition_for(key, P))
            # the wall clock runs far ahead (lag, a dead bridge): no watermark, no judgement
            clock.now = T0 + 100.0
            assert (await city.tick()).transitions == [] and offline == []
            # every partition but one vouches far ahead: still nobody
            await watermarks(T0 + 90.0, [p for p in range(P) if p != silent_partition])
            await city.tick()
            assert offline == []
            await watermarks(T0 + 3.0, [silent_partition])  # judged as of T0 + 3: 2 s of silence
            await city.tick()
            assert offline == []
            await watermarks(T0 + 6.5)  # a watermark every few seconds: no gap (a gap restarts the timers)
            for device in FLEET[:-1]:  # the fleet reports on, but one device went quiet
                key, body, headers = reading(device, T0 + 9.0)
                await send(key, body, headers, partition_for(key, P))
            await watermarks(T0 + 10.0)
            await city.tick()
            assert offline == [silent.id]  # 9 s of its silence seen; the others' silence is 1 s
            # sight lost upstream (no watermark for 10 s): timers restart, nobody else is declared
            await watermarks(T0 + 20.0)
            await city.tick()
            assert offline == [silent.id] and city.core is not None
            assert city.core.pipeline.deadman.grace_from == T0 + 20.0

    asyncio.run(go())
    assert city.core is not None
    checks = city.core.offline_checks(clock())
    assert checks["as_of"] == T0 + 20.0 and checks["behind_s"] == 80.0 and checks["unjudged"] == []
    health = city.health()
    assert health["problems"] == ["offline_checks_behind"] and health["offline_checks_behind_s"] == 80.0
    assert city.core.pipeline.counters["processed"] == 2 * len(FLEET) - 1  # watermarks are no readings
    assert not city.core.pipeline.counters.get("dead_letter", 0)
    beat = json.loads(city.heartbeat.read_text())
    assert beat["offline_checks"]["as_of"] == T0 + 20.0
    city.close()


def test_a_worker_that_never_reads_a_watermark_declares_nobody_offline_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    s = make_settings(tmp_path / "data", api={"enabled": False})
    city = FaustCity(s, KafkaSettings(partitions=P, batch_within_s=0.001), role="process", worker_id="w1",
                     devices=DictDevices({d.id: d for d in FLEET}), clock=clock)
    published: list[Any] = []

    async def record(out: Any) -> None:
        published.extend(out.transitions)

    city.publish = record

    async def go() -> None:
        async with city.process_agent.test_context() as agent:
            for device in FLEET:
                key, body, headers = reading(device, T0 + 1.0)
                await agent.put(body, key=key, partition=partition_for(key, P), headers=headers)
            clock.now = T0 + UNJUDGED_WARN_S + 60.0
            with caplog.at_level(logging.WARNING, logger="citywatch.streams.faust_app"):
                await city.tick()
                await city.tick()

    asyncio.run(go())
    assert published == []  # an old bridge: the wall clock would have declared all eight
    warnings = [r.getMessage() for r in caplog.records if "no bridge watermark" in r.getMessage()]
    assert len(warnings) == 1 and "earlier release" in warnings[0]  # loudly, once a minute
    health = city.health()
    assert health["problems"] == ["offline_checks_behind", "no_watermarks"]
    assert health["offline_checks"]["unjudged"] == list(range(P))
    city.close()
