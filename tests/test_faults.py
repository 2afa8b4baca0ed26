"""Faults survived: the broker restarts mid-stream; the pipeline process is killed and restarted."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.servers.mosquitto import MosquittoServer

DEVICES = [Device(id=f"water-{i}", kind="water") for i in range(50)]


def register(data_dir: Path) -> None:
    registry = Registry(registry_path(data_dir))
    for d in DEVICES:
        registry.add(d)
    registry.close()


def stream(n: int, start: float) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        d = DEVICES[i % len(DEVICES)]
        seq = i // len(DEVICES) + 1
        out.append((f"citywatch/water/{d.id}/telemetry",
                    json.dumps({"ts": start + seq, "seq": seq, "depth_cm": 0.5}).encode()))
    return out


class Publisher(threading.Thread):
    """A persistent-session QoS 1 publisher that rides through broker restarts (paho resends)."""

    def __init__(self, port: int, messages: list[tuple[str, bytes]], rate: float) -> None:
        super().__init__(daemon=True)
        self.messages, self.rate = messages, rate
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fault-pub", clean_session=False)
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.sent = 0

    def run(self) -> None:
        t0 = time.monotonic()
        for i, (topic, payload) in enumerate(self.messages):
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the load, not synchronising the test
            self.client.publish(topic, payload, qos=1)
            self.sent += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_broker_restart_mid_stream_loses_no_qos1_message(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-restart",
                                                      "reconnect_min_s": 0.5, "reconnect_max_s": 2})
    register(settings.data_dir)
    messages = stream(6000, time.time() - 10_000)
    run = RunnerThread(settings).start().subscribed()
    publisher = Publisher(mosquitto.port, messages, rate=2000)
    try:
        publisher.start()
        wait_until(lambda: run.runner.pipeline.counters["processed"] >= 1000)
        mosquitto.restart()  # persistence on: the runner's queued messages survive the restart
        assert run.runner.pipeline.counters["received"] < len(messages)  # it really was mid-stream
        wait_until(lambda: run.runner.collector.connects >= 2, timeout=30)
        publisher.join(30)
        wait_until(lambda: run.runner.pipeline.counters["processed"] >= len(messages), timeout=60)
        counters = dict(run.runner.pipeline.counters)
    finally:
        publisher.close()
        run.stop()
    assert counters["processed"] == len(messages)
    # anything seen twice was a redelivery, recognised by its seq and kept as a dead letter
    assert counters.get("dead_letters", 0) == counters.get("dead_letter.duplicate", 0)


def burst(n: int, start: float) -> list[tuple[str, bytes]]:
    pad = "x" * 2400
    return [(topic, payload[:-1] + f', "pad": "{pad}"}}'.encode()) for topic, payload in stream(n, start)]


def test_a_burst_is_absorbed_by_the_broker_with_bounded_memory(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    """40,000 messages of ~2.5 KB (100 MB) published as fast as possible, 10x and more the normal
    rate: the runner takes them through its bounded hand-off; the broker holds the rest. Memory
    stays bounded (no in-process queue grows with the burst) and nothing is dropped."""
    import psutil

    from tests.mqtt_tools import publish_from_another_process

    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": "cw-burst",
                                                      "queue_size": 500})
    register(settings.data_dir)
    n = 40_000
    process = psutil.Process()
    run = RunnerThread(settings).start().subscribed()
    try:
        handoff = run.runner.collector.handoff
        peak = {"handoff": 0, "rss": process.memory_info().rss}
        rss_before = peak["rss"]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak["handoff"] = max(peak["handoff"], len(handoff))
                peak["rss"] = max(peak["rss"], process.memory_info().rss)
                stop.wait(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        publish_from_another_process(mosquitto, "tests.test_faults:burst", (n, time.time() - 50_000))
        wait_until(lambda: run.runner.pipeline.counters["received"] >= n, timeout=120)
        stop.set()
        sampler.join()
        counters = dict(run.runner.pipeline.counters)
    finally:
        run.stop()
    assert counters["processed"] == n and counters.get("dead_letters", 0) == 0
    assert peak["handoff"] <= 500
    growth_mb = (peak["rss"] - rss_before) / 2**20
    assert growth_mb < 60, f"RSS grew {growth_mb:.0f} MB during a 100 MB burst"
