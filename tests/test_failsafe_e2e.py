"""Fail safe through the real path: Mosquitto, `citywatch run` as a process, a real webhook receiver.

The sequences of the fail-safe issue, as a new user sent them: each level alarm arrives as a signed
webhook. Then the same sequences through `citywatch replay --kind`: is_alert=1 on the alarming row,
and the `rules` column names the rule.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device
from citywatch.sinks.webhooks import verify
from tests.conftest import wait_until
from tests.mqtt_tools import publish_all
from tests.runner_process import ROOT, RunnerProcess
from tests.servers.mosquitto import MosquittoServer
from tests.servers.receiver import WebhookReceiver

SECRET = "whsec_" + "ZmFpbC1zYWZlLWZhaWwtc2FmZS1mYWlsLXNhZmU="
WATER = Device(id="water-fs", kind="water", district="Nanhu", grid="G1")
GAS_10S = Device(id="gas-10s", kind="gas", district="Nanhu", grid="G1")
GAS_1MIN = Device(id="gas-1min", kind="gas", district="Nanhu", grid="G1")
GAS_FIRST = Device(id="gas-first", kind="gas", district="Nanhu", grid="G1")
GAS_FUTURE = Device(id="gas-future", kind="gas", district="Nanhu", grid="G1")
GAS_STATUS = Device(id="gas-status", kind="gas", district="Nanhu", grid="G1", interval_s=1.0)
GAS_EVENT = Device(id="gas-event", kind="gas", district="Nanhu", grid="G1", interval_s=1.0)
SMOKE_SOUNDING = Device(id="smoke-sounding", kind="smoke", district="Nanhu", grid="G1")
SMOKE_SILENT = Device(id="smoke-silent", kind="smoke", district="Nanhu", grid="G1")  # its sounder failed
DEVICES = [WATER, GAS_10S, GAS_1MIN, GAS_FIRST, GAS_FUTURE, GAS_STATUS, GAS_EVENT, SMOKE_SOUNDING, SMOKE_SILENT]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver().start()
    yield r
    r.stop()


def telemetry(device: Device, ts: float, **fields: float | bool) -> tuple[str, bytes]:
    return f"citywatch/{device.kind}/{device.id}/telemetry", json.dumps({"ts": round(ts, 3), **fields}).encode()


def status(device: Device, text: str) -> tuple[str, bytes]:
    return f"citywatch/{device.kind}/{device.id}/status", text.encode()


def verified_hooks(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    """Every webhook received, each checked against its Standard Webhooks signature."""
    with receiver.lock:
        requests = list(receiver.requests)
    for headers, body in requests:
        assert verify(SECRET, headers, body), "a webhook with a bad signature"
    return [json.loads(body) for _, body in requests]


def openings(receiver: WebhookReceiver, device: Device, rule: str) -> list[dict[str, Any]]:
    return [h for h in verified_hooks(receiver)
            if h["transition"] == "opened" and h["device"]["id"] == device.id and h["alert"]["rule"] == rule]


def test_each_level_alarm_of_the_issue_arrives_as_a_signed_webhook(
        tmp_path: Path, mosquitto: MosquittoServer, receiver: WebhookReceiver) -> None:
    data_dir = tmp_path / "data"
    registry = Registry(registry_path(data_dir))
    for device in DEVICES:
        registry.add(device)
    registry.close()
    runner = RunnerProcess(tmp_path, data_dir, mosquitto.url, "cw-failsafe",
                           webhooks={"url": receiver.url, "secret": SECRET, "backoff_initial_s": 0.05})
    runner.start()
    try:
        runner.wait_healthy()
        now = time.time()
        publish_all(mosquitto, [
            telemetry(WATER, now - 10, depth_cm=0.0), telemetry(WATER, now, depth_cm=40.0),
            telemetry(GAS_10S, now - 10, lel_pct=0.0), telemetry(GAS_10S, now, lel_pct=30.0),
            telemetry(GAS_1MIN, now - 60, lel_pct=0.0), telemetry(GAS_1MIN, now, lel_pct=60.0),
            telemetry(GAS_FIRST, now, lel_pct=55.0),
            telemetry(GAS_FUTURE, now - 60, lel_pct=1.0), telemetry(GAS_FUTURE, now + 290, lel_pct=1.0),
            telemetry(GAS_FUTURE, now, lel_pct=80.0),
            telemetry(GAS_STATUS, now, lel_pct=1.0), status(GAS_STATUS, "offline"),
            telemetry(GAS_EVENT, now, lel_pct=65.0),  # its one and only message
            telemetry(SMOKE_SOUNDING, now, obscuration_pct_per_m=0.8, alarm=True),
            telemetry(SMOKE_SILENT, now - 60, obscuration_pct_per_m=0.1, alarm=False),
            telemetry(SMOKE_SILENT, now, obscuration_pct_per_m=7.5, alarm=False),
        ])
        wait_until(lambda: all(openings(receiver, d, r) for d, r in [
            (WATER, "water_depth"), (GAS_10S, "gas_level"), (GAS_1MIN, "gas_level"), (GAS_FIRST, "gas_level"),
            (GAS_FUTURE, "gas_level"), (GAS_STATUS, "device_offline"), (GAS_EVENT, "gas_level"),
            (SMOKE_SOUNDING, "smoke_alarm"), (SMOKE_SILENT, "smoke_alarm")]), timeout=20)
        for device in (SMOKE_SOUNDING, SMOKE_SILENT):
            alarm = openings(receiver, device, "smoke_alarm")[0]["alert"]
            assert alarm["severity"] == "critical" and alarm["safety"] is True, device.id
        assert openings(receiver, WATER, "water_depth")[0]["alert"]["severity"] == "critical"
        assert openings(receiver, GAS_10S, "gas_level")[0]["alert"]["severity"] == "warning"
        level2 = openings(receiver, GAS_1MIN, "gas_level")[0]["alert"]
        assert level2["severity"] == "critical" and level2["safety"] is True
        for device in (WATER, GAS_10S, GAS_1MIN, GAS_FIRST, GAS_FUTURE, GAS_EVENT):
            hook = openings(receiver, device, "water_depth" if device is WATER else "gas_level")[0]
            assert hook["alert"]["safety"] is True, device.id

        publish_all(mosquitto, [status(GAS_STATUS, "online")])  # then silence past three intervals
        wait_until(lambda: len(openings(receiver, GAS_STATUS, "device_offline")) >= 2, timeout=20)
        wait_until(lambda: openings(receiver, GAS_EVENT, "device_offline"), timeout=20)  # and later, offline
    finally:
        assert runner.stop() == 0, runner.stderr[-3000:]
    transitions = [(h["device"]["id"], h["alert"]["rule"], h["transition"]) for h in verified_hooks(receiver)]
    assert (GAS_STATUS.id, "device_offline", "resolved") in transitions  # online resolved the last will's alert


SEQUENCES = {  # kind, rows (seconds after T0, value), the alarming row, the rule it opens
    "water 0 then 40 cm ten seconds later": ("water", [(0, 0.0), (10, 40.0)], 1, "water_depth"),
    "gas 0 then 30 %LEL ten seconds later": ("gas", [(0, 0.0), (10, 30.0)], 1, "gas_level"),
    "gas 0 then 60 %LEL a minute later": ("gas", [(0, 0.0), (60, 60.0)], 1, "gas_level"),
    "gas first-ever reading at level-2": ("gas", [(0, 55.0)], 0, "gas_level"),
}


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_replay_marks_the_alarming_row_and_names_its_rule(tmp_path: Path, name: str) -> None:
    kind, rows, alarming, rule = SEQUENCES[name]
    field = {"water": "depth_cm", "gas": "lel_pct"}[kind]
    src = tmp_path / "in.csv"
    src.write_text(f"timestamp,{field}\n" + "".join(f"{1_795_000_000 + t},{v}\n" for t, v in rows))
    out = tmp_path / "out.csv"
    done = subprocess.run([sys.executable, "-m", "citywatch", "replay", str(src), "--out", str(out), "--kind", kind],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with open(out, newline="") as handle:
        result = list(csv.DictReader(handle))
    assert [r["is_alert"] for r in result] == ["1" if i == alarming else "0" for i in range(len(rows))]
    assert rule in result[alarming]["rules"].split(";")
