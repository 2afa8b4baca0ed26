"""The alert engine's streaks (hold, clear, flap history) live in each device's stored value, the same
bytes in both runners (streams/device_value.py), and the embedded store migrates older files.

tests/data/state_db_v3 holds a state.db written by the embedded runner of the release before (streaks
in their own table `alert_keys`, schema version 3), stopped in the middle of a pending, a clear and a
flap streak, and the transitions that release gave next after a restart. Loaded into this release,
the streaks are folded into the device values and the runner goes on exactly as that release did.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
from pathlib import Path
from typing import Any

import msgspec

from citywatch.config import Settings
from citywatch.devices.registry import Registry, registry_path
from citywatch.ingest.collector import Message
from citywatch.model import Device, KeyState, Output
from citywatch.sinks.store import SCHEMA_VERSION, AlertStore, store_path
from citywatch.streams.device_value import DeviceValue, decode_value, encode_value
from citywatch.streams.embedded import EmbeddedRunner
from citywatch.streams.faust_app import WorkerCore
from tests.conftest import make_settings
from tests.helpers import T0, DictDevices

V3 = Path(__file__).parent / "data" / "state_db_v3"
FIXTURE = json.loads((V3 / "fixture.json").read_text())
DEVICES = [msgspec.convert(d, Device) for d in FIXTURE["devices"]]
NEXT = [(topic, payload.encode(), received_at) for topic, payload, received_at in FIXTURE["next"]]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def data_dir(tmp_path: Path, state_db: bytes | None = None, **sections: Any) -> Settings:
    """A data dir with the fixture's devices registered (and `state_db` as its state.db)."""
    settings = make_settings(tmp_path, **FIXTURE["settings"], **sections)
    if state_db is not None:
        store_path(tmp_path).write_bytes(state_db)
    registry = Registry(registry_path(tmp_path))
    registry.add_many([(d, None) for d in DEVICES])
    registry.close()
    return settings


def v3_state_db(tmp_path: Path, sql: str = "") -> Settings:
    """The fixture's state.db in a data dir, changed by `sql` first (before any migration)."""
    raw = tmp_path / "raw.db"
    raw.write_bytes(gzip.decompress((V3 / "state.db.gz").read_bytes()))
    if sql:
        with sqlite3.connect(raw) as conn:
            conn.executescript(sql)
        conn.close()
    return data_dir(tmp_path, raw.read_bytes())


def drive(runner: EmbeddedRunner, clock: Clock, messages: list[tuple[str, bytes, float]]) -> list[list[Any]]:
    """Each message one batch through the runner's own path (process, tick, commit); the transitions."""
    got: list[list[Any]] = []

    def heard(out: Output) -> None:
        got.extend([t.alert.device_id, t.alert.rule, t.transition, round(t.at, 3)] for t in out.transitions)

    runner.listeners.append(heard)

    async def go() -> None:
        stop = asyncio.Event()
        for mid, (topic, payload, received_at) in enumerate(messages):
            clock.now = received_at
            await runner._handle([Message(0, mid, 1, topic, payload, received_at)], received_at, True, stop)

    asyncio.run(go())
    return got


def crash(runner: EmbeddedRunner) -> None:
    """Stop as a crash does: what was committed stays, nothing is flushed."""
    for close in (runner.delivery.close, runner.store.close, runner.registry.close, runner.lock.release):
        close()


def stored_values(settings: Settings) -> dict[str, DeviceValue]:
    store = AlertStore(store_path(settings.data_dir))
    try:
        return {device_id: decode_value(raw) for device_id, raw in store.device_values().items()}
    finally:
        store.close()


def test_the_fixture_was_stopped_in_the_middle_of_every_kind_of_streak() -> None:
    rows = {(device_id, rule): KeyState(**body) for device_id, rule, body in FIXTURE["alert_keys"]}
    assert rows[("noise-pending", "noise_limit")].pending is not None
    assert rows[("gas-clearing", "gas_level")].clearing == 1
    assert len(rows[("gas-cycles", "gas_level")].cycles) == 3
    assert len(rows[("gas-flapping", "gas_level")].cycles) == 3
    with gzip.open(V3 / "state.db.gz") as f:
        assert int.from_bytes(f.read(100)[60:64], "big") == 3  # the header's user_version: schema 3


def test_a_state_db_written_by_the_previous_release_goes_on_as_it_would_have(tmp_path: Path) -> None:
    settings = v3_state_db(tmp_path)
    with sqlite3.connect(store_path(tmp_path)) as conn:
        records_before = dict(conn.execute("SELECT device_id, body FROM device_state").fetchall())
    conn.close()
    clock = Clock(FIXTURE["restart_at"])
    runner = EmbeddedRunner(settings, clock=clock)  # opens the store: migrated
    conn = runner.store.conn
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'alert_keys'").fetchone() is None
    values = {device_id: decode_value(raw) for device_id, raw in runner.store.device_values().items()}
    assert {device_id: value.state for device_id, value in values.items()} == records_before  # records as they were
    folded = sorted([device_id, rule, json.loads(msgspec.json.encode(key_state))]
                    for device_id, value in values.items() for rule, key_state in value.alerts.items())
    assert folded == FIXTURE["alert_keys"]  # every streak, in its device's value
    try:
        assert drive(runner, clock, NEXT) == FIXTURE["next_transitions"]
    finally:
        crash(runner)


def test_without_its_streaks_the_same_state_db_would_go_on_otherwise(tmp_path: Path) -> None:
    """The comparison above can fail: the streaks decide the next transitions."""
    settings = v3_state_db(tmp_path, "DELETE FROM alert_keys")
    clock = Clock(FIXTURE["restart_at"])
    runner = EmbeddedRunner(settings, clock=clock)
    try:
        got = drive(runner, clock, NEXT)
    finally:
        crash(runner)
    expected = FIXTURE["next_transitions"]
    assert ["noise-pending", "noise_limit", "opened", expected[0][3]] not in got  # the pending streak is gone
    assert [t[:3] for t in got if t[0] == "gas-cycles"][0] == ["gas-cycles", "gas_level", "opened"]  # no flapping


def test_streaks_of_a_device_without_a_stored_record_get_a_value_of_their_own(tmp_path: Path) -> None:
    settings = v3_state_db(tmp_path, "DELETE FROM device_state WHERE device_id = 'noise-pending'")
    values = stored_values(settings)
    assert values["noise-pending"].state == b""
    assert values["noise-pending"].alerts["noise_limit"].pending == (1, T0 + 13 * 60)


def test_a_streak_change_alone_is_committed_with_its_batch_and_survives_a_crash(tmp_path: Path) -> None:
    """With state_checkpoint_s, quiet devices' records wait; a device whose streak or alert changed is
    written with its batch, as the alert_keys table was: a crash right after the batch keeps it."""
    settings = data_dir(tmp_path, ingest={"state_checkpoint_s": 3600.0})
    noise, gas = DEVICES[0], DEVICES[1]

    def reading(device: Device, minute: int, **fields: float) -> tuple[str, bytes, float]:
        ts = T0 + 60 * minute
        body = json.dumps({"ts": ts, "seq": minute, **fields}).encode()
        return f"citywatch/{device.kind}/{device.id}/telemetry", body, ts + 0.5

    clock = Clock(T0)
    runner = EmbeddedRunner(settings, clock=clock)
    assert drive(runner, clock, [reading(noise, 0, laeq_db=50.0, lamax_db=55.0), reading(gas, 0, lel_pct=5.0),
                                 reading(noise, 1, laeq_db=70.0, lamax_db=72.0)]) == []  # noise_limit pending
    crash(runner)
    values = stored_values(settings)
    assert gas.id not in values  # quiet: waits for the checkpoint
    assert values[noise.id].alerts["noise_limit"].pending == (1, T0 + 60)  # written with its batch
    clock.now = T0 + 121
    runner = EmbeddedRunner(settings, clock=clock)
    try:
        got = drive(runner, clock, [reading(noise, 2, laeq_db=70.0, lamax_db=72.0)])
    finally:
        crash(runner)
    assert got == [[noise.id, "noise_limit", "opened", T0 + 120]]  # the second loud reading in a row


def test_both_runners_store_the_same_value_the_faust_one_with_its_open_alert(tmp_path: Path) -> None:
    settings = data_dir(tmp_path)
    clock = Clock(FIXTURE["restart_at"])
    embedded = EmbeddedRunner(settings, clock=clock)
    faust = WorkerCore(settings, DictDevices({d.id: d for d in DEVICES}), {}, partitions=1, clock=clock)
    first = [(t, p, at) for t, p, at in NEXT if at < T0 + 30 * 60]  # streaks, an open alert, a flapping one
    try:
        drive(embedded, clock, first)
    finally:
        crash(embedded)
    clock.now = FIXTURE["restart_at"]
    assert faust.pipeline.deadman is not None  # built now, started at the same time as the embedded one
    for topic, payload, received_at in first:
        out = Output()
        faust.process(topic, payload, received_at, out)
        faust.tick(received_at, out)
        faust.commit()
    embedded_values = stored_values(settings)
    assert set(embedded_values) == {key.decode() for key in faust.table}
    some_alert = some_streak = False
    for key, raw in faust.table.items():
        value = decode_value(raw)
        some_alert |= any(k.alert is not None for k in value.alerts.values())
        for key_state in value.alerts.values():
            key_state.alert = None
        value.alerts = {rule: k for rule, k in value.alerts.items() if k.pending or k.clearing or k.cycles}
        some_streak |= bool(value.alerts)
        assert encode_value(value) == encode_value(embedded_values[key.decode()]), key
    assert some_alert and some_streak
