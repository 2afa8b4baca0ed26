"""The data directory fills up: a clear error, no crash loop, nothing acknowledged, recovery when space returns.

The data directory is a real, small tmpfs mounted by the test (root can mount here, as in CI).
"""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device
from citywatch.sinks.store import AlertStore, store_path
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.mosquitto import MosquittoServer
from tests.servers.receiver import WebhookReceiver

DEVICES = [Device(id=f"gas-{i}", kind="gas") for i in range(20)]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> Path:
    """Fill the file system to its last byte. Unbuffered: a buffered file kept the bytes that did not
    fit and raised ENOSPC again when closed (CI once failed so, at `with`)."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)  # a short write when nearly full, then ENOSPC
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_disk_full_holds_messages_and_recovers(tmp_path: Path, small_disk: Path, mosquitto: MosquittoServer,
                                               caplog: pytest.LogCaptureFixture) -> None:
    receiver = WebhookReceiver().start()
    settings = make_settings(small_disk / "data", mqtt={"url": mosquitto.url, "client_id": "cw-disk"},
                             webhooks={"url": receiver.url, "secret": "s3cret-for-disk-test",
                                       "backoff_initial_s": 0.05, "backoff_max_s": 0.5})
    registry = Registry(registry_path(settings.data_dir))
    for d in DEVICES:
        registry.add(d)
    registry.close()
    now = time.time() - 100
    first = [(f"citywatch/gas/{d.id}/telemetry", json.dumps({"ts": now, "seq": 1, "lel_pct": 1}).encode())
             for d in DEVICES]
    # two alarm readings a minute apart: a leak, not a one-sample sensor jump
    alarms = [(f"citywatch/gas/{d.id}/telemetry",
               json.dumps({"ts": now + 60 * k, "seq": 1 + k, "lel_pct": 60, "pad": "x" * 2000}).encode())
              for k in (1, 2) for d in DEVICES]
    run = RunnerThread(settings).start()
    try:
        publish_all(mosquitto, first)
        wait_until(lambda: run.runner.pipeline.counters["processed"] == len(DEVICES))
        caplog.set_level(logging.ERROR)
        filler = fill(small_disk)
        publish_all(mosquitto, alarms)
        wait_until(lambda: run.runner.storage_error is not None)
        assert run.thread.is_alive()
        assert "cannot write to" in caplog.text and "unacknowledged" in caplog.text
        stuck_batches = run.runner.batches
        filler.unlink()  # space returns
        wait_until(lambda: run.runner.storage_error is None and run.runner.batches > stuck_batches, timeout=30)
        wait_until(lambda: run.runner.delivery.stats()["pending"] == 0, timeout=30)
    finally:
        run.stop()
        receiver.stop()
    store = AlertStore(store_path(settings.data_dir))
    opened = [a for a in store.alerts("open") if a.rule == "gas_level"]
    store.close()
    assert sorted(a.device_id for a in opened) == sorted(d.id for d in DEVICES)
    assert {b["alert"]["id"] for b in receiver.bodies()} >= {a.id for a in opened}
