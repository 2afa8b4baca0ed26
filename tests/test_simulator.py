"""The device simulator: deterministic, realistic, its incidents cross the configured thresholds,
its bad input gets the pipeline's reasons, and its publisher delivers to a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from citywatch.config import RuleSettings, Settings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.devices.registry import validate_device
from citywatch.errors import InvalidMessage
from citywatch.ingest.publisher import publish, publish_sync
from citywatch.ingest.schemas import parse_status, parse_telemetry
from citywatch.ingest.simulator import (
    INCIDENT_TYPES,
    Simulator,
    bad_messages,
    make_devices,
    payload_bytes,
    status_messages,
)
from citywatch.ingest.topics import parse_topic
from citywatch.model import KINDS, Device, Output
from citywatch.streams.pipeline import Pipeline

T0 = 1_795_000_000.0  # 19:06:40 in Asia/Shanghai (day); T0 + 4 h is 23:06 (night)
NIGHT = T0 + 4 * 3600
RULES = RuleSettings()
NORMAL_LOCK_EVENTS = {"unlock_ok", "unlock_fail", "door_closed"}


def local_hour(ts: float) -> int:
    return int(((ts + 8 * 3600) % 86400) // 3600)


def is_night(ts: float) -> bool:
    return not (RULES.noise.day_start_hour <= local_hour(ts) < RULES.noise.night_start_hour)


def noise_limit(device: Device, ts: float) -> float:
    day, night = RULES.noise.limits[device.zone_class or RULES.noise.default_zone_class]
    return night if is_night(ts) else day


def run_pipeline(sim: Simulator, devices: list[Device], duration_s: float) -> tuple[Pipeline, Output]:
    """Feed the simulator's messages through the real pipeline core, ticking every 30 s."""
    settings = Settings()
    registry = {d.id: d for d in devices}
    pipeline = Pipeline(settings, registry, AlertEngine(settings.alerts), started_at=sim.start)
    out = Output()
    next_tick = sim.start + 30
    for topic, payload, ts in sim.messages(duration_s):
        while ts >= next_tick:
            pipeline.tick(next_tick, out)
            next_tick += 30
        pipeline.process(topic, payload, ts + 0.2, out)
    pipeline.tick(sim.now, out)
    return pipeline, out


# -- devices -------------------------------------------------------------------------------------------


def test_make_devices_is_a_realistic_deterministic_mix() -> None:
    devices = make_devices(1000, seed=4)
    assert devices == make_devices(1000, seed=4)
    assert devices != make_devices(1000, seed=5)
    kinds = Counter(d.kind for d in devices)
    assert kinds == {"gas": 200, "noise": 150, "water": 150, "parking": 300, "lock": 150, "smoke": 50}
    assert len({d.id for d in devices}) == 1000
    assert devices[8].id == "sim-parking-000008"
    assert len({d.district for d in devices}) >= 5
    for d in devices:
        validate_device(d)
        assert d.id == f"sim-{d.kind}-{int(d.id.rsplit('-', 1)[1]):06d}"
        assert d.district and d.grid[0] == "G" and len(d.grid) == 5 and d.grid[1:].isdigit()
        assert d.address.isascii() and d.district in d.address
        assert d.lat is not None and d.lon is not None
        assert abs(d.lat - 30.75) <= 0.15 and abs(d.lon - 120.75) <= 0.15
        assert d.interval_s == 60.0
        assert (d.zone_class in {"1", "2", "3", "4a"}) == (d.kind == "noise")
        assert (d.tenants is not None and 1 <= d.tenants <= 4) == (d.kind == "lock")
        if d.kind == "parking" and not d.no_parking:
            assert d.max_stay_min is not None and 60 <= d.max_stay_min <= 240
        assert not d.no_parking or d.kind == "parking"
    no_parking = sum(d.no_parking for d in devices)
    assert 0.02 * 300 <= no_parking <= 0.1 * 300
    assert {d.zone_class for d in devices if d.kind == "noise"} == {"1", "2", "3", "4a"}


def test_a_handful_of_devices_covers_every_kind_and_options_apply() -> None:
    assert {d.kind for d in make_devices(6)} == set(KINDS)
    devices = make_devices(20, seed=2, prefix="demo", interval_s=30)
    assert all(d.id.startswith(f"demo-{d.kind}-") and d.interval_s == 30 for d in devices)
    statuses = [(f"citywatch/{d.kind}/{d.id}/status", b"online") for d in devices[:2]]
    assert status_messages(devices[:2]) == statuses
    assert list(Simulator([], start=T0).messages(600)) == []
    tiny = Simulator(make_devices(6), start=T0)  # one incident per device at most, where there is one
    assert len(tiny.incidents_log) == len({e["device_id"] for e in tiny.incidents_log}) == 6


# -- readings ------------------------------------------------------------------------------------------


def test_same_seed_same_messages_however_the_run_is_chunked() -> None:
    devices = make_devices(200, seed=1)
    one = list(Simulator(devices, seed=1, start=T0).messages(7200))
    assert len(one) == pytest.approx(200 * 120, abs=200)
    assert one == list(Simulator(devices, seed=1, start=T0).messages(7200, step_s=7))
    chunked = Simulator(devices, seed=1, start=T0)
    assert list(chunked.messages(1000)) + list(chunked.messages(6200)) == one
    stepwise = Simulator(devices, seed=1, start=T0)
    readings = [r for t in range(0, 7201, 60) for r in stepwise.readings_at(T0 + t)]
    assert [payload_bytes(p) for _, p in readings] == [payload for _, payload, _ in one]
    assert one != list(Simulator(devices, seed=2, start=T0).messages(7200))
    log = Simulator(devices, seed=1, start=T0).incidents_log
    assert log and log == Simulator(devices, seed=1, start=T0).incidents_log


def test_messages_are_in_time_order_with_increasing_seq_and_steady_intervals() -> None:
    devices = make_devices(100, seed=3)
    sim = Simulator(devices, seed=3, start=T0)
    silent = {e["device_id"] for e in sim.incidents_log if e["incident"] == "device_silent"}
    bursty = {e["device_id"] for e in sim.incidents_log if e["incident"] == "lock_brute_force"}
    messages = list(sim.messages(3600))
    assert [ts for _, _, ts in messages] == sorted(ts for _, _, ts in messages)
    per_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for topic, payload, ts in messages:
        assert b" " not in payload  # compact JSON
        body = json.loads(payload)
        assert body["ts"] == ts and T0 <= ts <= T0 + 3600
        per_device[parse_topic(topic).device_id].append(body)
    assert set(per_device) == {d.id for d in devices}
    for device_id, bodies in per_device.items():
        seqs = [b["seq"] for b in bodies]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        gaps = {round(b["ts"] - a["ts"]) for a, b in zip(bodies, bodies[1:], strict=False)}
        if device_id in silent:
            assert max(gaps) >= 60 * (RULES.health.offline_intervals + 3)
        elif device_id in bursty:
            assert min(gaps) < 60
        else:
            assert gaps == {60}


def test_readings_at_returns_each_due_reading_once() -> None:
    devices = make_devices(50, seed=1)
    sim = Simulator(devices, seed=1, start=T0)
    first = sim.readings_at(T0 + 59.999)
    assert sorted(d.id for d, _ in first) == sorted(d.id for d in devices)
    assert sim.readings_at(T0 + 59.999) == []
    assert all(isinstance(p, dict) and {"ts", "seq", "battery", "rssi"} <= set(p) for _, p in first)
    synced = Simulator(devices, seed=1, start=T0, spread=False)
    assert len(synced.readings_at(T0)) == 50 and synced.readings_at(T0 + 59) == []


def test_every_payload_parses_with_the_real_schema() -> None:
    devices = make_devices(300, seed=9)
    sim = Simulator(devices, seed=9, start=NIGHT, incident_rate=0.05)
    count = 0
    for topic, payload, ts in sim.messages(3 * 3600):
        kind, device_id, channel = parse_topic(topic)
        assert channel == "telemetry"
        reading = parse_telemetry(kind, device_id, payload, received_at=ts)
        assert reading.ts == ts and reading.seq is not None
        assert reading.battery is not None and reading.rssi is not None
        count += 1
    assert count > 300 * 170


def test_normal_readings_are_realistic_and_below_every_threshold() -> None:
    devices = make_devices(150, seed=5, interval_s=300)
    by_id = {d.id: d for d in devices}
    sim = Simulator(devices, seed=5, start=T0, incidents=False)
    assert sim.incidents_log == []
    seen: dict[str, list[Any]] = defaultdict(list)
    occupied_since: dict[str, float] = {}
    for topic, payload, ts in sim.messages(24 * 3600):
        device = by_id[parse_topic(topic).device_id]
        body = json.loads(payload)
        assert RULES.health.battery_clear_pct < body["battery"] <= 100
        assert -100 <= body["rssi"] <= -60
        if device.kind == "gas":
            assert 0 <= body["lel_pct"] <= 3.0
            seen["gas"].append(body["lel_pct"])
        elif device.kind == "noise":
            limit = noise_limit(device, ts)
            assert 30 <= body["laeq_db"] <= limit - RULES.noise.hysteresis_db
            assert body["lamax_db"] >= body["laeq_db"]
            if is_night(ts):
                assert body["lamax_db"] <= limit + RULES.noise.night_burst_db - RULES.noise.hysteresis_db
            seen["noise_day" if not is_night(ts) else "noise_night"].append(body["laeq_db"])
        elif device.kind == "water":
            assert 0 <= body["depth_cm"] < RULES.water.light_cm
            seen["water"].append(body["depth_cm"])
        elif device.kind == "parking":
            seen["parking"].append(body["occupied"])
            if device.no_parking:
                assert body["occupied"] is False
            elif body["occupied"]:
                since = occupied_since.setdefault(device.id, ts)
                assert (ts - since) / 60 <= (device.max_stay_min or 0)
            else:
                occupied_since.pop(device.id, None)
        elif device.kind == "smoke":
            assert body["obscuration_pct_per_m"] < RULES.smoke.pre_alarm_pct_per_m
            assert body["alarm"] is False or body["event"] == "test"  # a resident testing it
            seen["smoke"].append(body["obscuration_pct_per_m"])
        else:
            assert body["event"] in NORMAL_LOCK_EVENTS
            seen["lock"].append(body["event"])
    assert max(seen["gas"]) > 1.0 and Counter(seen["water"])[0.0] / len(seen["water"]) > 0.9
    day, night = seen["noise_day"], seen["noise_night"]
    assert sum(day) / len(day) > sum(night) / len(night) + 5  # a daily rhythm
    assert 45 <= sum(day) / len(day) <= 65
    assert 0.1 < sum(seen["parking"]) / len(seen["parking"]) < 0.9
    events = Counter(seen["lock"])
    assert events["door_closed"] > events["unlock_ok"] > events["unlock_fail"]
    assert seen["smoke"] and max(seen["smoke"]) > 0


def test_a_day_of_normal_readings_opens_no_alert_in_the_pipeline() -> None:
    devices = make_devices(120, seed=6, interval_s=300)
    pipeline, out = run_pipeline(Simulator(devices, seed=6, start=T0, incidents=False), devices, 24 * 3600)
    assert out.dead_letters == []
    assert [t.alert.rule for t in out.transitions] == []
    assert pipeline.counters["processed"] == pytest.approx(120 * 288, abs=120)


def test_generating_100k_messages_streams_them_all() -> None:
    """How fast is for the benchmarks; a timed assertion here flakes on a busy machine."""
    devices = make_devices(2000, seed=1)
    sim = Simulator(devices, seed=1, start=T0)
    count = sum(1 for _ in sim.messages(3000))
    assert count >= 99_000


# -- incidents -----------------------------------------------------------------------------------------


Bodies = dict[str, list[dict[str, Any]]]


def incident_readings(sim: Simulator, duration_s: float) -> tuple[Bodies, list[dict[str, Any]]]:
    readings: Bodies = defaultdict(list)
    for topic, payload, _ in sim.messages(duration_s):
        readings[parse_topic(topic).device_id].append(json.loads(payload))
    return readings, sim.incidents_log


def during(bodies: list[dict[str, Any]], incident: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for b in bodies if incident["start"] <= b["ts"] < incident["end"]]


def test_incidents_cover_every_type_and_cross_the_configured_thresholds() -> None:
    devices = make_devices(300, seed=11)
    by_id = {d.id: d for d in devices}
    sim = Simulator(devices, seed=11, start=NIGHT, incident_rate=0.05)
    readings, log = incident_readings(sim, 6 * 3600)
    names = {e["incident"] for e in log}
    assert names == set(INCIDENT_TYPES) - {"noise_day"}
    assert len(log) == 15 == len({e["device_id"] for e in log})  # 5% of 300, one incident per device
    for e in log:
        device = by_id[e["device_id"]]
        assert e["kind"] == device.kind and sim.start < e["start"] < e["end"] <= sim.start + 6 * 3600
        assert set(e["rules"]) <= set(INCIDENT_TYPES[e["incident"]][1])
        inside = during(readings[device.id], e)
        after = [b for b in readings[device.id] if b["ts"] >= e["end"]]
        name = e["incident"]
        if name == "gas_leak":
            values = [b["lel_pct"] for b in inside]
            assert min(values[:2]) < RULES.gas.level1_pct < max(values) and max(values) > RULES.gas.level2_pct
            first_high = next(j for j, v in enumerate(values) if v >= RULES.gas.level2_pct)
            assert any(RULES.gas.level1_pct <= v < RULES.gas.level2_pct for v in values[:first_high])
            assert values[-1] < RULES.gas.level1_pct - RULES.gas.hysteresis_pct
            assert all(b["lel_pct"] <= 3 for b in after)
        elif name == "noise_night":
            assert is_night(e["start"]) and e["rules"] == ["noise_limit", "noise_night_burst"]
            limit = noise_limit(device, e["start"])
            assert all(b["laeq_db"] > noise_limit(device, b["ts"]) for b in inside)
            assert max(b["lamax_db"] for b in inside) > limit + RULES.noise.night_burst_db
        elif name == "water_storm":
            depths = [b["depth_cm"] for b in inside]
            assert max(depths) > RULES.water.severe_cm and depths[0] < RULES.water.moderate_cm
            assert depths[-1] < RULES.water.light_cm and all(b["depth_cm"] < 1 for b in after)
        elif name == "parking_overstay":
            occupied = [b["ts"] for b in inside if b["occupied"]]
            assert not inside[0]["occupied"] and not inside[-1]["occupied"]
            assert (occupied[-1] - occupied[0]) / 60 > device.max_stay_min
        elif name == "parking_forbidden":
            assert device.no_parking and any(b["occupied"] for b in inside)
            assert not any(b["occupied"] for b in after)
        elif name == "lock_brute_force":
            fails = [b["ts"] for b in inside if b["event"] == "unlock_fail"]
            assert len(fails) >= RULES.lock.fail_count
            assert fails[RULES.lock.fail_count - 1] - fails[0] <= RULES.lock.fail_window_s
            assert len({b["user"] for b in inside}) == 1  # one stranger
        elif name.startswith("lock_"):
            event = name.removeprefix("lock_")
            assert inside[0]["event"] == event or inside[1]["event"] == event
            if event in ("door_ajar", "forced_open"):
                assert inside[-1]["event"] == "door_closed"
            if event == "jammed":
                assert inside[-1]["event"] == "unlock_ok"
        elif name == "smoke_fire":
            values = [b["obscuration_pct_per_m"] for b in inside]
            assert max(values) >= RULES.smoke.alarm_pct_per_m and inside[-1]["alarm"] is True
        elif name == "smoke_tamper":
            assert inside[0]["event"] == "tamper"
        elif name == "device_silent":
            assert inside == []
            before = [b for b in readings[device.id] if b["ts"] < e["start"]]
            silence = after[0]["ts"] - before[-1]["ts"]
            assert silence > RULES.health.offline_intervals * device.interval_s
            assert after[0]["seq"] == before[-1]["seq"] + 1
        elif name == "battery_low":
            assert all(b["battery"] < RULES.health.battery_low_pct for b in inside)
            assert after[0]["battery"] > RULES.health.battery_clear_pct
            if device.kind in ("lock", "smoke"):
                assert inside[0]["event"] == "low_battery"
        else:  # pragma: no cover
            raise AssertionError(f"untested incident {name}")


def test_a_daytime_noise_incident_is_over_the_day_limit() -> None:
    devices = make_devices(40, seed=2)
    sim = Simulator(devices, seed=2, start=T0 - 3 * 3600, horizon_s=3600)  # 16:06 to 17:06
    readings, log = incident_readings(sim, 2 * 3600)
    [noise] = [e for e in log if e["kind"] == "noise" and e["incident"].startswith("noise")]
    assert noise["incident"] == "noise_day" and noise["rules"] == list(INCIDENT_TYPES["noise_day"][1])
    device = next(d for d in devices if d.id == noise["device_id"])
    assert all(b["laeq_db"] > noise_limit(device, b["ts"]) for b in during(readings[device.id], noise))


def test_the_pipeline_detects_every_incident_and_nothing_else() -> None:
    devices = make_devices(300, seed=8)
    sim = Simulator(devices, seed=8, start=NIGHT, incident_rate=0.05)
    last_end = max(e["end"] for e in sim.incidents_log)
    assert last_end - sim.start < 4 * 3600
    _, out = run_pipeline(sim, devices, last_end - sim.start + 300)
    opened = [t for t in out.transitions if t.transition == "opened"]
    expected = {e["device_id"]: e for e in sim.incidents_log}
    assert len(expected) == 15
    unexpected = [(t.alert.device_id, t.alert.rule) for t in opened
                  if t.alert.rule not in expected.get(t.alert.device_id, {}).get("rules", ())]
    assert unexpected == []
    for device_id, e in expected.items():
        found = {t.alert.rule: t.at for t in opened if t.alert.device_id == device_id}
        assert set(found) == set(e["rules"]), e
        for rule, at in found.items():
            assert e["start"] <= at <= e["end"] + 60, (rule, e)


# -- bad input -----------------------------------------------------------------------------------------

REQUIRED_REASONS = {
    "malformed_json", "not_an_object", "missing_field", "wrong_type", "not_finite", "out_of_range",
    "payload_too_large", "unknown_kind", "topic_mismatch", "future_timestamp", "unknown_device",
    "bad_timestamp",
}


def reason_by_parser(topic: str, payload: bytes, devices: dict[str, Device], now: float) -> str:
    """The pipeline's checks, in its order, using the real topic and payload parsers."""
    try:
        if len(payload) > Settings().ingest.max_payload_bytes:
            return "payload_too_large"
        kind, device_id, channel = parse_topic(topic)
        device = devices.get(device_id)
        if device is None:
            return "unknown_device"
        if device.kind != kind:
            return "kind_mismatch"
        if channel == "status":
            parse_status(payload)
        else:
            parse_telemetry(kind, device_id, payload, received_at=now)
    except InvalidMessage as exc:
        return exc.reason
    return "accepted"


@pytest.mark.parametrize("seed", [1, 2])
def test_bad_messages_get_the_reasons_the_parsers_and_pipeline_give(seed: int) -> None:
    devices = make_devices(30, seed=seed)
    registry = {d.id: d for d in devices}
    now = T0 + 123.4
    cases = bad_messages(devices, seed=seed, now=now)
    reasons = {reason for _, _, reason in cases}
    assert reasons >= REQUIRED_REASONS | {"bad_topic", "kind_mismatch", "bad_value", "bad_status"}
    assert bad_messages(devices, seed=seed, now=now) == cases
    settings = Settings()
    pipeline = Pipeline(settings, registry, AlertEngine(settings.alerts), started_at=now)
    for topic, payload, reason in cases:
        assert reason_by_parser(topic, payload, registry, now) == reason, (topic, payload[:200])
        out = Output()
        pipeline.process(topic, payload, now, out)
        assert [d.reason for d in out.dead_letters] == [reason], (topic, payload[:200])
    for topic, payload, reason in cases:
        if reason == "unknown_device":
            assert parse_topic(topic).device_id not in registry
        if reason == "payload_too_large":
            assert len(payload) > 16 * 1024 and json.loads(payload)
        if reason == "unknown_kind":
            with pytest.raises(InvalidMessage, match="unknown_kind"):
                parse_topic(topic)


def test_bad_messages_work_with_a_single_kind_of_device() -> None:
    for kind in KINDS:
        devices = [Device(id=f"only-{kind}", kind=kind)]
        cases = bad_messages(devices, seed=1, now=T0)
        assert {reason for _, _, reason in cases} >= REQUIRED_REASONS
        for topic, payload, reason in cases:
            assert reason_by_parser(topic, payload, {devices[0].id: devices[0]}, T0) == reason, (kind, reason)


# -- publishing to a real Mosquitto --------------------------------------------------------------------

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.01)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A real Mosquitto on a free loopback port; yields its mqtt:// URL."""
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 1000000\nmax_inflight_messages 1000\nlog_dest stderr\n")
    with open(tmp_path / "mosquitto.log", "wb") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
    try:
        def listening() -> bool:
            assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_for(listening, 10, "mosquitto listening")
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Subscriber:
    """A paho client collecting every message under citywatch/#."""

    def __init__(self, url: str, client_id: str) -> None:
        port = int(url.rsplit(":", 1)[1])
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("citywatch/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(self.subscribed.is_set, 10, "SUBACK")

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_publish_sync_delivers_every_message_and_retained_online_statuses(broker: str) -> None:
    devices = make_devices(60, seed=1)
    sim = Simulator(devices, seed=1, start=T0)
    messages = list(sim.messages(1800))
    sub = Subscriber(broker, "test-sim-sub")
    try:
        sent = publish_sync(broker, messages, qos=1, online=devices, client_id="test-sim-pub")
        assert sent == len(messages) + len(devices)
        wait_for(lambda: sub.count() >= sent, 20, "all messages received")
        got = Counter((topic, payload) for topic, payload, _ in sub.messages)
        want = Counter((topic, payload) for topic, payload, _ in messages)
        want.update((f"citywatch/{d.kind}/{d.id}/status", b"online") for d in devices)
        assert got == want
    finally:
        sub.close()
    late = Subscriber(broker, "test-sim-late")  # retained statuses reach a subscriber that comes later
    try:
        wait_for(lambda: late.count() >= len(devices), 10, "retained statuses")
        assert all(retain and payload == b"online" for _, payload, retain in late.messages)
        statuses = {f"citywatch/{d.kind}/{d.id}/status" for d in devices}
        assert {topic for topic, _, _ in late.messages} == statuses
    finally:
        late.close()


def test_async_publish_is_rate_limited_and_keeps_the_loop_free(broker: str) -> None:
    devices = make_devices(20, seed=3)
    messages = [(topic, payload) for topic, payload, _ in Simulator(devices, seed=3, start=T0).messages(300)]
    assert len(messages) == 100
    sub = Subscriber(broker, "test-sim-sub-async")

    async def main() -> tuple[int, float, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        started = time.monotonic()
        sent = await publish(broker, messages, qos=1, rate=500.0, client_id="test-sim-pub-async")
        elapsed = time.monotonic() - started
        tick_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await tick_task
        return sent, elapsed, ticks

    try:
        sent, elapsed, ticks = asyncio.run(main())
        assert sent == 100
        assert elapsed >= 99 / 500.0
        assert ticks >= 5  # the event loop ran while publishing
        wait_for(lambda: sub.count() >= 100, 10, "all messages received")
        assert sorted(m[:2] for m in sub.messages) == sorted(messages)
    finally:
        sub.close()


def test_cancelling_async_publish_stops_it(broker: str) -> None:
    messages = [("citywatch/gas/sim-gas-000000/telemetry", b'{"ts":1,"lel_pct":1}')] * 1000

    async def main() -> float:
        task = asyncio.create_task(publish(broker, messages, rate=100.0, client_id="test-sim-cancel"))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    assert asyncio.run(main()) < 2.0


def test_publish_qos0_and_realtime_pacing(broker: str) -> None:
    now = time.time()
    times = [now + 0.05 * i for i in range(6)]
    messages = [(f"citywatch/water/w{i}/telemetry", b'{"ts":%f,"depth_cm":0}' % ts, ts)
                for i, ts in enumerate(times)]
    sub = Subscriber(broker, "test-sim-sub-qos0")
    try:
        started = time.time()
        assert publish_sync(broker, messages, qos=0, realtime=True) == 6
        assert time.time() - started >= 0.2
        wait_for(lambda: sub.count() >= 6, 10, "all messages received")
    finally:
        sub.close()


def test_publish_to_nothing_raises_connection_error() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        publish_sync(f"mqtt://127.0.0.1:{free_port()}", [("citywatch/x", b"1")], timeout_s=5)
    assert time.monotonic() - started < 5
    with pytest.raises(ValueError):
        publish_sync("http://127.0.0.1:1", [])
