"""The whole path on a real Mosquitto: MQTT in, validated, detected, alerts and webhooks out."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from citywatch.detectors.record import stored_header
from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device
from citywatch.sinks.store import AlertStore, store_path
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.mosquitto import MosquittoServer
from tests.servers.receiver import WebhookReceiver

SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"
DEVICES = [
    Device(id="gas-1", kind="gas", district="Nanhu", grid="G001", address="1 Zhongshan Rd", lat=30.75, lon=120.75),
    Device(id="noise-1", kind="noise", district="Nanhu", grid="G002", zone_class="2"),
    Device(id="water-1", kind="water", district="Xiuzhou", grid="G003"),
    Device(id="park-1", kind="parking", district="Xiuzhou", grid="G004", no_parking=True),
    Device(id="lock-1", kind="lock", district="Nanhu", grid="G005", tenants=2),
]
NORMAL = {"gas": {"lel_pct": 2.0}, "noise": {"laeq_db": 40.0}, "water": {"depth_cm": 0.0},
          "parking": {"occupied": False}, "lock": {"event": "unlock_ok", "user": "u1"}}
ALARM = {"gas": ({"lel_pct": 30.0}, "gas_level"), "noise": ({"laeq_db": 75.0}, "noise_limit"),
         "water": ({"depth_cm": 30.0}, "water_depth"), "parking": ({"occupied": True}, "parking_forbidden"),
         "lock": ({"event": "forced_open"}, "lock_forced_open")}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver().start()
    yield r
    r.stop()


def register(data_dir: Path, devices: list[Device]) -> None:
    registry = Registry(registry_path(data_dir))
    for d in devices:
        registry.add(d)
    registry.close()


def settings_for(tmp_path: Path, mosquitto: MosquittoServer, receiver: WebhookReceiver, **extra: object):
    return make_settings(
        tmp_path / "data",
        mqtt={"url": mosquitto.url, "client_id": f"cw-{tmp_path.name}"},
        webhooks={"url": receiver.url, "secret": SECRET, "backoff_initial_s": 0.05, "backoff_max_s": 0.5},
        **extra,
    )


def msg(device: Device, ts: float, seq: int, **fields: object) -> tuple[str, bytes]:
    body = {"ts": round(ts, 3), "seq": seq, "battery": 90.0, "rssi": -70.0, **fields}
    return f"citywatch/{device.kind}/{device.id}/telemetry", json.dumps(body).encode()


def settled(run: RunnerThread, received: int) -> bool:
    r = run.runner
    assert r is not None
    return r.pipeline.counters["received"] >= received and r.delivery.stats()["pending"] == 0


@pytest.mark.parametrize("device", DEVICES, ids=[d.kind for d in DEVICES])
def test_normal_reading_is_quiet_and_alarm_gives_one_webhook_and_one_alert(
    tmp_path: Path, mosquitto: MosquittoServer, receiver: WebhookReceiver, device: Device
) -> None:
    settings = settings_for(tmp_path, mosquitto, receiver)
    register(settings.data_dir, DEVICES)
    run = RunnerThread(settings).start().subscribed()
    try:
        now = time.time() - 5
        publish_all(mosquitto, [msg(device, now, 1, **NORMAL[device.kind])])
        wait_until(lambda: settled(run, 1))
        assert run.runner.pipeline.counters["processed"] == 1
        assert receiver.requests == [] and run.runner.engine.by_id == {}

        fields, rule = ALARM[device.kind]
        publish_all(mosquitto, [msg(device, now + i, i + 1, **fields) for i in range(1, 4)])
        wait_until(lambda: settled(run, 4) and len(receiver.requests) >= 1)
    finally:
        run.stop()
    bodies = receiver.bodies()
    assert len(bodies) == 1, bodies
    hook = bodies[0]
    assert hook["transition"] == "opened" and hook["alert"]["rule"] == rule
    assert hook["device"]["id"] == device.id and hook["device"]["district"] == device.district
    headers = receiver.requests[0][0]
    assert headers["webhook-id"] and headers["webhook-signature"].startswith("v1,")
    store = AlertStore(store_path(settings.data_dir))
    open_alerts = store.alerts("open")
    store.close()
    assert [(a.device_id, a.rule) for a in open_alerts] == [(device.id, rule)]
    assert open_alerts[0].count >= 2  # repeats updated the alert: no second alert, no second webhook


def test_ten_thousand_mixed_messages(tmp_path: Path, mosquitto: MosquittoServer, receiver: WebhookReceiver) -> None:
    settings = settings_for(tmp_path, mosquitto, receiver)
    register(settings.data_dir, DEVICES)
    rng = random.Random(5)
    now = time.time() - 600
    bad_kinds = [
        ("citywatch/gas/gas-1/telemetry", b"{nope", "malformed_json"),
        ("citywatch/gas/gas-1/telemetry", b"[1]", "not_an_object"),
        ("citywatch/gas/gas-1/telemetry", b'{"ts": 1795000000}', "missing_field"),
        ("citywatch/gas/gas-1/telemetry", b'{"ts": 1795000000, "lel_pct": "high"}', "wrong_type"),
        ("citywatch/gas/gas-1/telemetry", b'{"ts": 1795000000, "lel_pct": NaN}', "not_finite"),
        ("citywatch/water/water-1/telemetry", b'{"ts": 1795000000, "depth_cm": 5000}', "out_of_range"),
        ("citywatch/gas/gas-1/telemetry", b'{"ts": 1795000000, "lel_pct": 1, "x": "' + b"y" * 17000 + b'"}',
         "payload_too_large"),
        ("citywatch/radar/s-1/telemetry", b'{"ts": 1795000000}', "unknown_kind"),
        ("citywatch/gas/gas-1/telemetry", b'{"ts": 1795000000, "lel_pct": 1, "device_id": "gas-2"}',
         "topic_mismatch"),
        ("citywatch/gas/gas-1/telemetry", b'{"ts": %d, "lel_pct": 1}' % (time.time() + 3600), "future_timestamp"),
        ("citywatch/gas/ghost-9/telemetry", b'{"ts": 1795000000, "lel_pct": 1}', "unknown_device"),
    ]
    messages: list[tuple[str, bytes]] = []
    expected_bad: dict[str, int] = {}
    seqs = dict.fromkeys((d.id for d in DEVICES), 0)
    good = 0
    for i in range(10_000):
        if rng.random() < 0.2:
            topic, payload, reason = bad_kinds[i % len(bad_kinds)]
            messages.append((topic, payload))
            expected_bad[reason] = expected_bad.get(reason, 0) + 1
        else:
            device = DEVICES[i % len(DEVICES)]
            seqs[device.id] += 1
            messages.append(msg(device, now + i * 0.05, seqs[device.id], **NORMAL[device.kind]))
            good += 1
    run = RunnerThread(settings).start().subscribed()
    try:
        publish_all(mosquitto, messages)
        wait_until(lambda: run.runner.pipeline.counters["received"] >= len(messages), timeout=60)
        counters = dict(run.runner.pipeline.counters)
    finally:
        run.stop()
    assert counters["processed"] == good
    assert counters["dead_letters"] == sum(expected_bad.values())
    store = AlertStore(store_path(settings.data_dir))
    stored = store.dead_letter_counts()
    store.close()
    assert stored == expected_bad


def test_messages_published_while_stopped_are_processed_after_restart(
    tmp_path: Path, mosquitto: MosquittoServer, receiver: WebhookReceiver
) -> None:
    settings = settings_for(tmp_path, mosquitto, receiver)
    register(settings.data_dir, DEVICES)
    run = RunnerThread(settings).start()  # first run creates the persistent session
    run.stop()
    gas = DEVICES[0]
    now = time.time() - 1200
    messages = [msg(gas, now + i, i + 1, lel_pct=1.0) for i in range(1000)]
    publish_all(mosquitto, messages)
    run = RunnerThread(settings).start()
    try:
        wait_until(lambda: run.runner.pipeline.counters["processed"] >= 1000, timeout=60)
        assert run.runner.pipeline.counters["processed"] == 1000
        assert run.runner.pipeline.counters["dead_letters"] == 0
    finally:
        run.stop()


def stored_states(data_dir: Path) -> dict[str, dict[str, object]]:
    """Each device's stored record: the pipeline's own facts (seq, count, seen...)."""
    store = AlertStore(store_path(data_dir))
    try:
        records = store.device_states()
        return {device_id: stored_header(body) for device_id, body in records.items()}
    finally:
        store.close()


def test_state_checkpoint_writes_alerting_devices_at_once_and_the_rest_later(
    tmp_path: Path, mosquitto: MosquittoServer, receiver: WebhookReceiver
) -> None:
    """ingest.state_checkpoint_s > 0: quiet devices' state waits for the checkpoint (here: a clock
    moved past it, then a graceful stop), a device whose alert opens is written with its batch, and
    the committed reading count is exact all along."""
    clock = {"now": time.time()}
    settings = settings_for(tmp_path, mosquitto, receiver, ingest={"state_checkpoint_s": 30})
    register(settings.data_dir, DEVICES)
    gas, noise, water = DEVICES[0], DEVICES[1], DEVICES[2]
    run = RunnerThread(settings, clock=lambda: clock["now"]).start().subscribed()
    try:
        t = time.time() - 5
        publish_all(mosquitto, [msg(noise, t, 1, **NORMAL["noise"]), msg(water, t, 1, **NORMAL["water"]),
                                *[msg(gas, t + i, i + 1, lel_pct=30.0) for i in range(2)]])
        wait_until(lambda: settled(run, 4) and len(receiver.requests) >= 1)
        store = AlertStore(store_path(settings.data_dir))
        assert store.counters()["readings"] == 4
        store.close()
        assert set(stored_states(settings.data_dir)) == {gas.id}  # the alerting device only
        assert stored_states(settings.data_dir)[gas.id]["count"] == 2

        clock["now"] += 31  # past the checkpoint interval (not the offline timeout): the next batch writes the rest
        publish_all(mosquitto, [msg(noise, t + 5, 2, **NORMAL["noise"])])
        wait_until(lambda: settled(run, 5) and noise.id in stored_states(settings.data_dir))
        assert water.id in stored_states(settings.data_dir)
        assert stored_states(settings.data_dir)[noise.id]["count"] == 2

        publish_all(mosquitto, [msg(water, t + 6, 2, **NORMAL["water"])])
        wait_until(lambda: settled(run, 6))
        assert stored_states(settings.data_dir)[water.id]["count"] == 1  # waiting for the next checkpoint
    finally:
        run.stop()  # a graceful stop writes everything still waiting
    assert stored_states(settings.data_dir)[water.id]["count"] == 2


def test_a_stop_writes_waiting_state_only_within_stop_flush_s(
    tmp_path: Path, mosquitto: MosquittoServer, receiver: WebhookReceiver
) -> None:
    """ingest.stop_flush_s bounds what a stop spends writing learning not yet checkpointed (1M devices:
    minutes, past any supervisor's stop timeout). At 0 nothing waiting is written: the devices resume
    from their last checkpoint, as after a crash, and the readings count stays exact."""
    settings = settings_for(tmp_path, mosquitto, receiver,
                            ingest={"state_checkpoint_s": 3600, "stop_flush_s": 0})
    register(settings.data_dir, DEVICES)
    noise, water = DEVICES[1], DEVICES[2]
    run = RunnerThread(settings).start().subscribed()
    try:
        t = time.time() - 5
        publish_all(mosquitto, [msg(noise, t, 1, **NORMAL["noise"]), msg(water, t, 1, **NORMAL["water"])])
        wait_until(lambda: settled(run, 2))
    finally:
        run.stop()
    assert stored_states(settings.data_dir) == {}
    store = AlertStore(store_path(settings.data_dir))
    try:
        assert store.counters()["readings"] == 2
    finally:
        store.close()
