"""Bounded storage on real SQLite files: dead letters sampled per source and counted exactly, old rows
purged, resolved alerts archived (crash safe, idempotent), space handed back, disk use reported."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from citywatch.cli import main
from citywatch.config import AlertSettings, RetentionSettings, WebhookSettings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.model import Alert, DeadLetter, Device, Finding, Output, Transition
from citywatch.sinks import retention as retention_module
from citywatch.sinks.outbox import Outbox
from citywatch.sinks.retention import Retention, archive_file, disk_usage, read_archive
from citywatch.sinks.store import STORED_BYTES, AlertStore, store_path
from citywatch.streams.device_value import DeviceValue, encode_value
from tests.helpers import T0

DAY = 86400.0
NO_CONFIG = {"CITYWATCH_CONFIG": os.devnull}  # not ./config.yaml of the working directory
UNSAMPLED = {"sample_burst": 10**9, "total_burst": 10**9}  # store every dead letter (purge tests)


def retention(**sections: Any) -> RetentionSettings:
    return RetentionSettings.model_validate(sections)


def dead(device: str, at: float, reason: str = "malformed_json", payload: bytes = b"{oops") -> DeadLetter:
    return DeadLetter(f"citywatch/gas/{device}/telemetry", payload, reason, "detail", at, len(payload))


def commit_dead(store: AlertStore, letters: list[DeadLetter]) -> None:
    out = Output()
    out.dead_letters.extend(letters)
    store.commit(out, [], {})


def stored_rows(path: Path, sql: str = "SELECT COUNT(*) FROM dead_letters") -> Any:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


# -- sampling ---------------------------------------------------------------------------------------------

def test_a_flood_from_one_device_stores_a_sample_and_counts_every_message(tmp_path: Path) -> None:
    store = AlertStore(store_path(tmp_path))  # default settings: burst 5, then one per 10 s
    commit_dead(store, [dead("gas-1", T0 + i * 0.001) for i in range(2000)])
    assert stored_rows(store.path) == 5
    assert store.dead_letter_counts() == {"malformed_json": 2000}
    assert store.sampled_out_counts() == {"malformed_json": 1995}
    assert store.counters()["dead_letters.sampled_out"] == 1995
    # 12 s later the device has earned one more stored sample; another device and another reason are not starved
    commit_dead(store, [dead("gas-1", T0 + 12 + i * 0.001) for i in range(100)]
                + [dead("gas-2", T0 + 12)] + [dead("gas-1", T0 + 12, reason="out_of_range")])
    assert stored_rows(store.path) == 5 + 1 + 1 + 1
    assert store.dead_letter_counts() == {"malformed_json": 2101, "out_of_range": 1}
    store.close()
    result = CliRunner(env=NO_CONFIG).invoke(main, ["--data-dir", str(tmp_path), "deadletters"])
    assert result.exit_code == 0, result.output
    assert "malformed_json: 2101 (2094 not stored: sampled), out_of_range: 1" in result.output


def test_spoofed_device_ids_are_bounded_by_the_shared_rate(tmp_path: Path) -> None:
    settings = retention(dead_letters={"total_per_s": 20, "total_burst": 200})
    store = AlertStore(store_path(tmp_path), retention=settings)
    commit_dead(store, [dead(f"spoof-{i}", T0 + i * 0.001, reason="unknown_device") for i in range(10_000)])
    stored = stored_rows(store.path)
    assert 200 <= stored <= 200 + 20 * 10 + 1  # burst + 10 s at 20/s
    assert store.dead_letter_counts() == {"unknown_device": 10_000}
    assert len(store.sampler.buckets) <= settings.dead_letters.sources
    store.close()


def test_older_files_get_their_per_reason_counts_once(tmp_path: Path) -> None:
    path = store_path(tmp_path)
    store = AlertStore(path, retention=retention(dead_letters=UNSAMPLED))
    commit_dead(store, [dead("gas-1", T0), dead("gas-2", T0, reason="out_of_range")])
    store.close()
    conn = sqlite3.connect(path)  # as a file written before the per-reason counters existed
    conn.execute("DELETE FROM counters WHERE name LIKE 'dead_letter%'")
    conn.execute("PRAGMA user_version=0")
    conn.commit()
    conn.close()
    for _ in range(2):
        store = AlertStore(path)
        assert store.dead_letter_counts() == {"malformed_json": 1, "out_of_range": 1}
        assert store.counters()[STORED_BYTES] == 2 * len(dead("gas-1", T0).topic) + 2 * len("{oops") + 2 * len("detail")
        store.close()


# -- purging ------------------------------------------------------------------------------------------------

def test_dead_letters_are_purged_by_age_rows_and_size_and_the_counts_stay_exact(tmp_path: Path) -> None:
    settings = retention(dead_letters={**UNSAMPLED, "max_age_days": 7, "max_rows": 300, "max_mb": 0.1})
    store = AlertStore(store_path(tmp_path), retention=settings)
    commit_dead(store, [dead(f"gas-{i}", T0 - 8 * DAY + i) for i in range(500)])  # too old
    commit_dead(store, [dead(f"gas-{i}", T0 - DAY + i) for i in range(500)])
    report = Retention(settings, tmp_path).run_once(T0)
    assert stored_rows(store.path) == 300  # 500 too old, then the oldest beyond 300 rows
    assert report.dead_letters_purged == 700
    assert stored_rows(store.path, "SELECT MIN(received_at) FROM dead_letters") == T0 - DAY + 200
    # size: 400 rows of ~1 KB exceed 0.1 MB; the newest ~100 stay
    commit_dead(store, [dead(f"big-{i}", T0 + i, payload=b"x" * 900) for i in range(400)])
    Retention(settings, tmp_path).run_once(T0 + 500)
    size = stored_rows(store.path, "SELECT SUM(length(payload) + length(topic) + length(detail)) FROM dead_letters")
    assert 0.09e6 < size <= 0.1e6
    assert stored_rows(store.path, "SELECT MIN(topic) FROM dead_letters").startswith("citywatch/gas/big-")
    assert store.dead_letter_counts() == {"malformed_json": 1400}
    assert store.counters()["dead_letters.purged"] == 1400 - stored_rows(store.path)
    assert store.counters()[STORED_BYTES] == size  # kept by commit and purge, never by scanning
    store.close()
    result = CliRunner(env=NO_CONFIG).invoke(main, ["--data-dir", str(tmp_path), "deadletters", "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert "malformed_json: 1400" in result.output


def test_a_pass_does_bounded_work_and_asks_to_be_run_again(tmp_path: Path) -> None:
    settings = retention(batch_rows=100, dead_letters={**UNSAMPLED, "max_age_days": 1})
    store = AlertStore(store_path(tmp_path), retention=settings)
    commit_dead(store, [dead(f"gas-{i}", T0 - 2 * DAY) for i in range(250)])
    ret = Retention(settings, tmp_path)
    assert [ret.run_once(T0 + k).dead_letters_purged for k in range(4)] == [100, 100, 50, 0]
    assert ret.next_at == T0 + 3 + settings.interval_s
    store.close()


def gas(n: int) -> Device:
    return Device(id=f"gas-{n}", kind="gas", district="north", grid="G1", address=f"{n} Main St", lat=30.0, lon=120.0)


def closed_alert(engine: AlertEngine, device: Device, at: float) -> list[Transition]:
    """opened, acknowledged and resolved at `at` (+ 60, + 120 s)."""
    opened = engine.apply(device, Finding("gas_level", True, severity="warning", value=30.0, threshold=25.0), at)
    assert opened is not None
    acked = engine.acknowledge(opened.alert_id, "ops", at + 60)
    return [opened, acked, engine.resolve(opened.alert_id, "ops", at + 120)]


def commit_transitions(store: AlertStore, transitions: list[Transition],
                       states: dict[str, bytes | None] | None = None) -> None:
    out = Output()
    out.transitions.extend(transitions)
    latest: dict[str, Alert] = {t.alert.id: t.alert for t in transitions}
    store.commit(out, latest.values(), states or {})


def test_delivered_outbox_rows_are_purged_after_their_age_and_pending_ones_never(tmp_path: Path) -> None:
    settings = retention(outbox={"delivered_days": 3, "dead_days": 30})
    outbox = Outbox(WebhookSettings(url="http://127.0.0.1:9/hook"))
    store = AlertStore(store_path(tmp_path), hooks=[outbox.enqueue], retention=settings)
    engine = AlertEngine(AlertSettings())
    commit_transitions(store, [t for n in range(4) for t in closed_alert(engine, gas(n), T0 - 40 * DAY)])
    conn = sqlite3.connect(store.path, isolation_level=None)
    ids = [row[0] for row in conn.execute("SELECT seq FROM webhook_outbox ORDER BY seq")]
    assert len(ids) == 12
    marks = {0: ("delivered", T0 - 4 * DAY), 1: ("delivered", T0 - 1 * DAY), 2: ("dead", T0 - 31 * DAY),
             3: ("dead", T0 - 2 * DAY)}  # per alert (3 rows each); the last alert's last row stays pending
    for i, seq in enumerate(ids[:-1]):
        status, at = marks[i // 3]
        conn.execute("UPDATE webhook_outbox SET status = ?, delivered_at = ?, last_attempt_at = ? WHERE seq = ?",
                     (status, at if status == "delivered" else None, at, seq))
    report = Retention(settings, tmp_path).run_once(T0)
    left = conn.execute("SELECT status, COUNT(*) FROM webhook_outbox GROUP BY status").fetchall()
    conn.close()
    assert report.outbox_purged == 6
    assert dict(left) == {"delivered": 3, "dead": 2, "pending": 1}
    store.close()


# -- archiving ----------------------------------------------------------------------------------------------

def archived_store(tmp_path: Path) -> tuple[AlertStore, dict[str, list[Transition]]]:
    """Alerts resolved 40 and 35 days ago (archived), 10 days ago (kept), one open since 50 days."""
    store = AlertStore(store_path(tmp_path))
    engine = AlertEngine(AlertSettings())
    cases = {"old": closed_alert(engine, gas(1), T0 - 40 * DAY),
             "older_day": closed_alert(engine, gas(2), T0 - 35 * DAY),
             "recent": closed_alert(engine, gas(3), T0 - 10 * DAY)}
    opened = engine.apply(gas(4), Finding("gas_level", True, severity="critical", value=60.0), T0 - 50 * DAY)
    assert opened is not None
    cases["open"] = [opened]
    commit_transitions(store, [t for ts in cases.values() for t in ts],
                       states={f"gas-{n}": encode_value(DeviceValue(state=msgspec.msgpack.encode({"count": n})))
                               for n in range(1, 5)})
    return store, cases


def day_of(at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, UTC).date().isoformat()


def test_resolved_alerts_move_to_compressed_archives_and_nothing_else_is_touched(tmp_path: Path) -> None:
    store, cases = archived_store(tmp_path)
    states_before = store.device_states()
    ret = Retention(RetentionSettings(), tmp_path)
    report = ret.run_once(T0)
    assert report.alerts_archived == 2 and not report.errors
    live = {a.id for a in store.alerts(None)}
    assert live == {cases["recent"][0].alert_id, cases["open"][0].alert_id}
    assert {t.alert_id for t in store.transitions()} == live
    assert store.device_states() == states_before  # device state is never retention's business
    for name, at in (("old", T0 - 40 * DAY), ("older_day", T0 - 35 * DAY)):
        path = archive_file(tmp_path, day_of(at + 120))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        (line,) = read_archive(path)
        assert line["alert"]["id"] == cases[name][0].alert_id and line["alert"]["status"] == "resolved"
        assert [t["transition"] for t in line["transitions"]] == ["opened", "acknowledged", "resolved"]
        assert [t["id"] for t in line["transitions"]] == [t.id for t in cases[name]]
    before = {p.name: p.read_bytes() for p in (tmp_path / "archive").iterdir()}
    assert ret.run_once(T0 + 60).alerts_archived == 0  # idempotent: nothing left, files unchanged
    assert {p.name: p.read_bytes() for p in (tmp_path / "archive").iterdir()} == before
    store.close()


@pytest.mark.parametrize("killed", ["before_the_rename", "after_the_rename"])
def test_archiving_killed_midway_loses_nothing_and_writes_nothing_twice(tmp_path: Path, killed: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store, cases = archived_store(tmp_path)
    real = retention_module.write_atomically

    def dies(path: Path, head: Path | None, data: bytes) -> None:
        if killed == "after_the_rename":
            real(path, head, data)
        raise OSError(f"killed {killed}")

    monkeypatch.setattr(retention_module, "write_atomically", dies)
    report = Retention(RetentionSettings(), tmp_path).run_once(T0)
    assert report.errors and report.alerts_archived == 0
    assert len(store.alerts(None)) == 4  # nothing deleted before its archive is safely on disk
    monkeypatch.setattr(retention_module, "write_atomically", real)
    assert Retention(RetentionSettings(), tmp_path).run_once(T0).alerts_archived == 2
    lines = [line for path in sorted((tmp_path / "archive").glob("*.jsonl.gz")) for line in read_archive(path)]
    assert sorted(line["alert"]["id"] for line in lines) == sorted(cases[n][0].alert_id for n in ("old", "older_day"))
    assert not list((tmp_path / "archive").glob(".*.tmp"))
    store.close()


def test_more_alerts_of_one_day_are_appended_as_gzip_members(tmp_path: Path) -> None:
    store = AlertStore(store_path(tmp_path))
    engine = AlertEngine(AlertSettings())
    base = T0 - 40 * DAY - (T0 - 40 * DAY) % DAY + 3600  # 01:00 UTC of one day
    commit_transitions(store, [t for n in range(5) for t in closed_alert(engine, gas(n), base + n)])
    ret = Retention(retention(batch_rows=10), tmp_path)
    ret.run_once(T0)
    commit_transitions(store, [t for n in range(5, 8) for t in closed_alert(engine, gas(n), base + 600 + n)])
    ret.run_once(T0)
    path = archive_file(tmp_path, day_of(base))
    assert [line["alert"]["device_id"] for line in read_archive(path)] == [f"gas-{n}" for n in range(8)]
    assert gzip.decompress(path.read_bytes()).count(b"\n") == 8
    store.close()


# -- space --------------------------------------------------------------------------------------------------

def test_purged_space_goes_back_to_the_file_system_and_the_wal_is_truncated(tmp_path: Path) -> None:
    settings = retention(batch_rows=10_000, vacuum_pages=100_000, dead_letters={**UNSAMPLED, "max_rows": 10})
    store = AlertStore(store_path(tmp_path), retention=settings)
    commit_dead(store, [dead(f"gas-{i}", T0 + i, payload=os.urandom(1800)) for i in range(6000)])
    wal = store.path.with_name("state.db-wal")
    assert wal.stat().st_size > 1e6
    Retention(settings, tmp_path).run_once(T0 + 10_000)  # the store's connection is idle: nothing blocks TRUNCATE
    assert wal.stat().st_size == 0
    assert store.path.stat().st_size < 1e6
    store.close()


def test_an_existing_file_without_auto_vacuum_is_switched_once_when_opened(tmp_path: Path) -> None:
    path = store_path(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
                 " payload BLOB NOT NULL, size INTEGER NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,"
                 " received_at REAL NOT NULL)")
    conn.execute("INSERT INTO dead_letters (topic, payload, size, reason, detail, received_at)"
                 " VALUES ('t', x'00', 1, 'malformed_json', '', 0)")
    conn.commit()
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    store = AlertStore(path)
    assert store.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert store.dead_letter_counts() == {"malformed_json": 1}
    store.close()


def test_disk_use_names_every_part_and_the_free_space(tmp_path: Path) -> None:
    store, _ = archived_store(tmp_path)
    ret = Retention(RetentionSettings(), tmp_path)
    ret.run_once(T0)
    (tmp_path / "influx-buffer").mkdir()
    (tmp_path / "influx-buffer" / "000001.lp").write_bytes(b"m v=1 1\n" * 100)
    usage = disk_usage(tmp_path)
    assert usage["state_db"] == store.path.stat().st_size > 0
    assert usage["archive"] == sum(p.stat().st_size for p in (tmp_path / "archive").iterdir()) > 0
    assert usage["influx_buffer"] == 800
    assert usage["fs_free"] > 0 and usage["fs_size"] >= usage["fs_free"]
    assert usage["data_dir_total"] >= usage["state_db"] + usage["archive"] + 800
    stats = ret.stats()
    assert stats["last_pass"]["alerts_archived"] == 2 and stats["totals"]["passes"] == 1
    store.close()
    result = CliRunner(env=NO_CONFIG).invoke(main, ["--data-dir", str(tmp_path), "storage", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["disk"]["archive"] == usage["archive"]
    assert report["alerts"] == {"open": 1, "resolved": 1}
