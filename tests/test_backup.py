"""Backup while a runner runs, restore into a fresh data dir, and a runner there carries on: the same
open alerts, no webhook sent twice, new alarms still work. Real Mosquitto, real HTTP receiver,
`citywatch backup` / `citywatch restore` as separate processes."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest

from citywatch.backup import BackupError, backup, restore
from citywatch.devices.registry import Registry, registry_path
from citywatch.errors import StorageError
from citywatch.model import Device
from citywatch.sinks.store import AlertStore, store_path
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.mosquitto import MosquittoServer
from tests.servers.receiver import WebhookReceiver

DEVICES = [Device(id=f"gas-{i}", kind="gas", district="Nanhu", address=f"{i} Test Rd") for i in range(6)]
SECRET = "whsec_" + "YmFja3VwLXJlc3RvcmUtdGVzdC1rZXktMDAx"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CITYWATCH_CONFIG": os.devnull}
    return subprocess.run([sys.executable, "-m", "citywatch", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def reading(device: Device, ts: float, seq: int, lel: float) -> tuple[str, bytes]:
    return f"citywatch/gas/{device.id}/telemetry", json.dumps({"ts": ts, "seq": seq, "lel_pct": lel}).encode()


def test_backup_while_running_then_restore_carries_on_without_repeating_a_webhook(
        tmp_path: Path, mosquitto: MosquittoServer) -> None:
    receiver = WebhookReceiver().start()
    sections = {"mqtt": {"url": mosquitto.url, "client_id": "cw-backup"},
                "webhooks": {"url": receiver.url, "secret": SECRET, "backoff_initial_s": 0.05, "backoff_max_s": 0.5}}
    first = make_settings(tmp_path / "first", **sections)
    registry = Registry(registry_path(first.data_dir))
    for d in DEVICES:
        registry.add(d)
    registry.close()
    t0 = time.time() - 600
    run = RunnerThread(first).start()
    original = run.runner
    assert original is not None
    try:
        # five devices alarm (the sixth stays quiet for later); one alert is acknowledged by a person
        publish_all(mosquitto, [reading(d, t0, 1, 1.0) for d in DEVICES] + [reading(d, t0 + 60, 2, 30.0)
                                                                            for d in DEVICES[:5]])
        wait_until(lambda: len(original.engine.by_id) == 5)
        run.call(lambda: original.acknowledge(sorted(original.engine.by_id)[0], "ops"))
        wait_until(lambda: original.delivery.stats()["delivered"] == 6)
        open_before = {a.id: a.status for a in original.engine.by_id.values()}
        out = tmp_path / "backups" / "city.tar.gz"
        done = cli("--data-dir", str(first.data_dir), "backup", "--out", str(out))  # while the runner runs
        assert done.returncode == 0, done.stderr
    finally:
        run.stop()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == ["manifest.json", "registry.db", "state.db"]
        assert all(stat.S_IMODE(m.mode) == 0o600 for m in tar.getmembers())
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest["files"]["state.db"]["rows"]["webhook_outbox"] == 6
    assert manifest["files"]["registry.db"]["rows"]["devices"] == len(DEVICES)

    # restore refuses a data dir that is not empty (unless --force)
    refused = cli("restore", str(out), "--data-dir", str(first.data_dir))
    assert refused.returncode == 2 and "is not empty" in refused.stderr and "--force" in refused.stderr

    second = make_settings(tmp_path / "second", **sections)
    done = cli("restore", str(out), "--data-dir", str(second.data_dir))
    assert done.returncode == 0, done.stderr
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in second.data_dir.glob("*.db")} == {
        "registry.db": 0o600, "state.db": 0o600}
    sent_before = Counter(receiver.ids())
    run = RunnerThread(second).start()
    restored = run.runner
    assert restored is not None
    try:
        assert {a.id: a.status for a in restored.engine.by_id.values()} == open_before
        # a runner holds the restored dir now: restoring over it is refused, even with --force
        busy = cli("restore", str(out), "--data-dir", str(second.data_dir), "--force")
        assert busy.returncode == 2 and "in use by" in busy.stderr, busy.stderr
        # new alarms: the quiet device opens one, an open alert rises to critical
        publish_all(mosquitto, [reading(DEVICES[5], t0 + 120, 2, 30.0), reading(DEVICES[1], t0 + 120, 3, 60.0)])
        wait_until(lambda: len(receiver.ids()) >= len(sent_before) + 2)
        wait_until(lambda: restored.delivery.stats()["pending"] == 0)
        assert len(restored.engine.by_id) == 6
    finally:
        run.stop()
        receiver.stop()
    ids = receiver.ids()
    repeated = {i: n for i, n in Counter(ids).items() if n > 1}
    assert not repeated, f"webhooks sent twice after the restore: {repeated}"
    assert len(ids) == 8
    new = [b for b in receiver.bodies() if b["id"] not in sent_before]
    assert sorted(b["transition"] for b in new) == ["opened", "updated"]


def rewrite(archive: Path, target: Path, change: str) -> None:
    """A copy of `archive` whose state.db is damaged; with `change` == "rehash" the manifest's checksum is
    made to match the damaged file (so only the integrity check can catch it)."""
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    state = bytearray(members["state.db"])
    state[4096:4096 + 64] = b"\xff" * 64  # page 2: b-tree garbage
    members["state.db"] = bytes(state)
    if change == "rehash":
        import hashlib

        manifest = json.loads(members["manifest.json"])
        manifest["files"]["state.db"]["sha256"] = hashlib.sha256(state).hexdigest()
        members["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(target, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("change", ["checksum", "rehash"])
def test_a_damaged_backup_is_refused_before_anything_is_replaced(tmp_path: Path, change: str) -> None:
    store = AlertStore(store_path(tmp_path / "src"))
    store.close()
    Registry(registry_path(tmp_path / "src")).close()
    good = tmp_path / "good.tar.gz"
    backup(tmp_path / "src", good)
    bad = tmp_path / "bad.tar.gz"
    rewrite(good, bad, change)
    target = tmp_path / "target"
    error = BackupError if change == "checksum" else StorageError
    with pytest.raises(error, match="checksum" if change == "checksum" else "integrity check failed"):
        restore(bad, target)
    assert sorted(p.name for p in target.iterdir()) == ["citywatch.lock"]  # nothing restored, no debris
    restore(good, target)
    assert sorted(p.name for p in target.glob("*.db")) == ["registry.db", "state.db"]
