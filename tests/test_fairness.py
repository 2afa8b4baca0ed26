"""Per-client fairness in the collector: MQTT 5 Maximum Packet Size keeps huge publishes at the broker,
the hand-off is bounded in bytes as well as messages, and the shipped Mosquitto limits stop
oversized packets at their sender. Real Mosquitto; RSS measured on the runner and its collector child."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from citywatch.devices.registry import Registry, registry_path
from citywatch.ingest.collector_process import _Buffer
from citywatch.ingest.handoff import Handoff
from citywatch.model import Device
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.mosquitto import MosquittoServer

ROOT = Path(__file__).resolve().parent.parent
WATER = [Device(id=f"water-{i}", kind="water") for i in range(10)]
BIG_PUBLISHES = 8  # in parallel, one client each
BIG_BYTES = 20 * 2**20
FLOOD = 15  # oversized publishes, more than the collector's receive_maximum (10 in that test)
RSS_BOUND_MB = 60  # the finding: 16 x 100 MB took the runner from 264 MB to 937 MB


def register(data_dir: Path) -> None:
    registry = Registry(registry_path(data_dir))
    for d in WATER:
        registry.add(d)
    registry.close()


def normal(seq: int) -> list[tuple[str, bytes]]:
    ts = time.time() - 600 + seq
    return [(f"citywatch/water/{d.id}/telemetry", json.dumps({"ts": ts, "seq": seq, "depth_cm": 0.5}).encode())
            for d in WATER]


# -- the hand-off's byte bound ---------------------------------------------------------------------


def test_handoff_blocks_at_its_byte_bound_before_its_count_bound() -> None:
    loop = asyncio.new_event_loop()
    handoff: Handoff[bytes] = Handoff(1000, loop, maxbytes=1000, sizeof=len)
    done = threading.Event()

    def produce() -> None:
        handoff.put_many([b"x" * 400] * 5)
        done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    wait_until(lambda: handoff.blocked_puts >= 1)
    assert len(handoff) == 3 and handoff.nbytes == 1200 and handoff.full()  # 3 x 400 >= 1000: blocked
    assert not done.is_set()
    assert len(loop.run_until_complete(handoff.get_batch(2, 0.1))) == 2  # room again: the rest goes in
    producer.join(5)
    assert done.is_set() and len(handoff) == 3 and handoff.nbytes == 1200
    loop.run_until_complete(handoff.get_batch(10, 0.1))
    assert handoff.nbytes == 0
    handoff.put(b"y" * 5000)  # one item larger than the whole bound still passes, alone
    assert len(handoff) == 1 and handoff.full()
    loop.close()


def test_the_child_buffer_blocks_at_its_byte_bound() -> None:
    buffer = _Buffer(1000, maxbytes=1000)
    added = []

    def produce() -> None:
        for i in range(5):
            buffer.put((i,), 400)
            added.append(i)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    wait_until(lambda: len(added) == 3)
    producer.join(0.3)
    assert producer.is_alive() and len(added) == 3 and buffer.nbytes == 1200  # paho's thread would wait here
    assert len(buffer.take()) == 3
    producer.join(5)
    assert added == [0, 1, 2, 3, 4]


# -- MQTT 5 Maximum Packet Size through a real Mosquitto ---------------------------------------------


def publish_big_in_parallel(port: int, count: int, size: int, topic: str) -> None:
    """`count` clients each publish one `size`-byte QoS 1 message at the same time (runs in a child
    process, so the payloads are not in the test's memory)."""
    payload = b"{" + b"x" * (size - 2) + b"}"

    def one(i: int) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"big-{i}")
        client.connect("127.0.0.1", port)
        client.loop_start()
        client.publish(topic, payload, qos=1).wait_for_publish(120)
        client.disconnect()
        client.loop_stop()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run_in_child(target: object, *args: object) -> None:
    proc = mp.get_context("spawn").Process(target=target, args=args)  # type: ignore[arg-type]
    proc.start()
    proc.join(180)
    assert proc.exitcode == 0


def rss_of_runner(collector_pid: int) -> int:
    """This process (the runner runs in a thread of it) and the collector child process."""
    return psutil.Process().memory_info().rss + psutil.Process(collector_pid).memory_info().rss


def test_a_huge_publish_never_reaches_the_runner_and_its_memory_stays_flat(tmp_path: Path,
                                                                          mosquitto: MosquittoServer) -> None:
    """8 parallel 20 MB publishes and a 1 MB one: the collector announced a Maximum Packet Size of
    max_payload_bytes + 4096, so the broker drops them for us; normal messages still flow."""
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-mps"})
    register(settings.data_dir)
    run = RunnerThread(settings).start().subscribed()
    try:
        runner = run.runner
        publish_all(mosquitto, normal(1))
        wait_until(lambda: runner.pipeline.counters["processed"] == len(WATER))
        pid = runner.collector.pid
        before = rss_of_runner(pid)
        peak = [before]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], rss_of_runner(pid))
                sampling.wait(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        topic = "citywatch/water/water-0/telemetry"
        run_in_child(publish_big_in_parallel, mosquitto.port, BIG_PUBLISHES, BIG_BYTES, topic)
        run_in_child(publish_big_in_parallel, mosquitto.port, 1, 2**20, topic)
        publish_all(mosquitto, normal(2))  # after the big ones: delivered in order, so they were dealt with
        wait_until(lambda: runner.pipeline.counters["processed"] == 2 * len(WATER), timeout=60)
        sampling.set()
        sampler.join()
        counters = dict(runner.pipeline.counters)
        received = runner.collector.received
    finally:
        run.stop()
    assert received == 2 * len(WATER)  # the big ones never reached us ...
    assert counters.get("dead_letters", 0) == 0  # ... not even as payload_too_large
    assert mosquitto.log.read_text().count("Dropping too large outgoing PUBLISH") == BIG_PUBLISHES + 1
    growth_mb = (peak[0] - before) / 2**20
    print(f"runner + collector RSS grew {growth_mb:.1f} MB during {BIG_PUBLISHES} x {BIG_BYTES >> 20} MB publishes")
    assert growth_mb < RSS_BOUND_MB, f"runner + collector RSS grew {growth_mb:.0f} MB"


def shipped_limits() -> str:
    """The limit directives of the shipped deploy/mosquitto/mosquitto.conf, as they are written."""
    keys = ("max_packet_size", "max_inflight_messages", "max_queued_messages", "max_queued_bytes",
            "max_connections", "message_size_limit")
    lines = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    return "\n".join(line for line in lines if line.split(" ", 1)[0] in keys)


def test_the_shipped_broker_limits_stop_oversized_packets_at_the_sender(tmp_path: Path) -> None:
    """With the shipped limits Mosquitto disconnects a client sending a packet over max_packet_size and
    routes nothing of it; many such publishes (more than receive_maximum) do not stall delivery to
    citywatch (the stall a subscriber-side Maximum Packet Size alone allows on Mosquitto 2.0.11)."""
    limits = shipped_limits()
    assert {line.split()[0] for line in limits.splitlines()} >= {
        "max_packet_size", "max_inflight_messages", "max_queued_messages", "max_queued_bytes", "max_connections"}
    server = MosquittoServer(tmp_path / "mosquitto", extra=limits)
    server.start()  # Mosquitto refuses to start on an option it does not know
    settings = make_settings(tmp_path / "data", mqtt={"url": server.url, "client_id": "cw-shipped",
                                                      "receive_maximum": 10})
    register(settings.data_dir)
    run = RunnerThread(settings).start().subscribed()
    try:
        oversized = b"{" + b"x" * 30_000 + b"}"
        for i in range(FLOOD):  # each on a new connection: the broker hangs up after the first
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flooder-{i}")
            client.connect("127.0.0.1", server.port)
            client.loop_start()
            client.publish("citywatch/water/water-0/telemetry", oversized, qos=1)
            wait_until(lambda c=client: not c.is_connected())  # type: ignore[misc]
            client.disconnect()  # no reconnect: the loop thread ends at once
            client.loop_stop()
        publish_all(server, normal(1))
        wait_until(lambda: run.runner.pipeline.counters["processed"] == len(WATER), timeout=20)
        received = run.runner.collector.received
    finally:
        run.stop()
        server.stop()
    assert received == len(WATER)
    log = server.log.read_text()
    assert log.count("disconnected due to oversize packet") == FLOOD  # seen only in the broker's log
    assert "Dropping too large outgoing PUBLISH" not in log  # nothing oversized was ever routed
