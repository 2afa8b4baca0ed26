"""Producers survive a broker that is not there yet (citywatch/streams/bridge.py start_producer): a
retriable error at start is retried with backoff, a refused idempotence falls back, a deadline ends it.
A real tansu broker, started on the port the producer is already knocking on."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from citywatch.streams.bridge import KafkaSettings, ensure_topics, start_producer
from tests.servers.mosquitto import free_port
from tests.servers.tansu import TansuServer

pytestmark = pytest.mark.timeout(120)


def test_a_producer_started_before_its_broker_waits_for_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="citywatch.streams.bridge")
    port = free_port()
    kafka = KafkaSettings(bootstrap=f"127.0.0.1:{port}", partitions=1, telemetry_topic="t", transitions_topic="tr",
                          deadletters_topic="dl")
    server = TansuServer(tmp_path / "tansu", port=port)

    def retried() -> bool:
        return any("producer could not start" in r.getMessage() for r in caplog.records)

    async def go() -> int:
        task = asyncio.create_task(start_producer(kafka))
        deadline = time.monotonic() + 30
        while not retried():  # the broker is down: it retries instead of failing
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.to_thread(server.start)
        producer = await asyncio.wait_for(task, 60)
        try:
            await ensure_topics(kafka)
            sent = await producer.send_and_wait("t", b"x", key=b"k")
            return sent.offset
        finally:
            await producer.stop()

    try:
        assert asyncio.run(go()) == 0
    finally:
        server.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any("KafkaConnectionError" in m for m in messages)
    # tansu's memory storage refuses InitProducerId (UnknownError): acks=all without idempotence
    assert any("idempotent producer refused (UnknownError)" in m for m in messages)


def test_a_deadline_ends_the_wait() -> None:
    kafka = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", partitions=1)
    started = time.monotonic()
    with pytest.raises(KafkaConnectionError):
        asyncio.run(start_producer(kafka, deadline_s=1.0))
    assert time.monotonic() - started < 10
