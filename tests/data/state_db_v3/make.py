"""Writes a state.db as the embedded runner of the release before issue 16 item 1 wrote it (store
schema version 3: the alert engine's streaks and flap history in their own table `alert_keys`), so
tests can load it with the current code: `python tests/data/state_db_v3/make.py`.

Run once with that release (commit d3e00c9); kept for the record. Five devices go through the
runner's own batch path (`EmbeddedRunner._handle`, one message a batch) for 14 simulated minutes and
stop in the middle of a streak: a pending noise_limit streak (hold 2 readings), a gas_level clear
streak (clear_readings 3), a flap history of three cycles with no alert open, a `flapping` alert
waiting for quiet (flap_quiet_min 5), and an open alert. Then state.db is copied (VACUUM INTO; kept
gzipped, `state.db.gz`: 180 kB of mostly empty pages), the runner restarts from it, and the next 30
minutes' messages give the transitions this release gives from there. `fixture.json` holds the
settings, the devices, the `alert_keys` rows, those messages and those transitions.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from citywatch.config import load_settings  # noqa: E402
from citywatch.devices.registry import Registry, registry_path  # noqa: E402
from citywatch.ingest.collector import Message  # noqa: E402
from citywatch.model import Device, Output  # noqa: E402
from citywatch.streams.embedded import EmbeddedRunner  # noqa: E402

T0 = 1_795_000_000.0  # tests/helpers.py: 19:06 in Asia/Shanghai, daytime (noise zone 2: 60 dB(A))
OVERRIDES: dict[str, Any] = {"alerts": {"clear_readings": 3, "flap_quiet_min": 5.0},
                             "rules": {"learned": {"enabled": False}}}
DEVICES = [Device(id="noise-pending", kind="noise", zone_class="2"), Device(id="gas-clearing", kind="gas"),
           Device(id="gas-cycles", kind="gas"), Device(id="gas-flapping", kind="gas"),
           Device(id="gas-open", kind="gas")]
HISTORY_MIN, NEXT_MIN = 14, 30


def value(device_id: str, minute: int) -> dict[str, float]:
    """What the device reports in that minute: the scripted streaks (gas: % LEL, alarm at 25)."""
    alarm = {"gas-clearing": {5, 6, 7, 8, 9, 10, 11, 12},  # open at 5; one clear reading at 13
             "gas-cycles": {0, 4, 8, 16},  # opens at 0, 4, 8, each resolved by 3 clear readings; flapping at 16
             "gas-flapping": {0, 4, 8, 12, 20},  # the fourth opening (12) flaps; quiet 5 min resolves it
             "gas-open": set(range(5, 40))}.get(device_id, set())
    if device_id == "noise-pending":
        return {"laeq_db": 70.0 if minute in (13, 14) else 50.0, "lamax_db": 72.0}
    return {"lel_pct": 30.0 if minute in alarm else 5.0}


def messages(first: int, last: int) -> list[tuple[str, bytes, float]]:
    out = []
    for minute in range(first, last):
        for i, device in enumerate(DEVICES):
            ts = T0 + 60 * minute + i
            body = {"ts": ts, "seq": minute, **value(device.id, minute)}
            out.append((f"citywatch/{device.kind}/{device.id}/telemetry", json.dumps(body).encode(), ts + 0.5))
    return out


class Clock:
    now = T0

    def __call__(self) -> float:
        return self.now


def drive(runner: EmbeddedRunner, clock: Clock, batch: list[tuple[str, bytes, float]]) -> list[list[Any]]:
    """Each message one batch through the runner's path (process, tick, commit); the transitions."""
    got: list[list[Any]] = []
    runner.listeners.append(lambda out: got.extend(transitions(out)))
    stop = asyncio.Event()

    async def go() -> None:
        for mid, (topic, payload, received_at) in enumerate(batch):
            clock.now = received_at
            await runner._handle([Message(0, mid, 1, topic, payload, received_at)], received_at, True, stop)

    asyncio.run(go())
    return got


def transitions(out: Output) -> list[list[Any]]:
    return [[t.alert.device_id, t.alert.rule, t.transition, round(t.at, 3)] for t in out.transitions]


def close(runner: EmbeddedRunner) -> None:
    """As a crash leaves it: committed batches only (nothing flushed at a stop)."""
    for done in (runner.delivery.close, runner.store.close, runner.registry.close, runner.lock.release):
        done()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        settings = load_settings(None, {"data_dir": data_dir, "api": {"port": 0}, **OVERRIDES})
        registry = Registry(registry_path(data_dir))
        registry.add_many([(d, None) for d in DEVICES])
        registry.close()
        clock = Clock()
        runner = EmbeddedRunner(settings, clock=clock)
        history = drive(runner, clock, messages(0, HISTORY_MIN))
        close(runner)
        with sqlite3.connect(data_dir / "state.db") as conn:
            conn.execute("VACUUM INTO ?", (str(data_dir / "copy.db"),))
            keys = conn.execute("SELECT device_id, rule, body FROM alert_keys ORDER BY 1, 2").fetchall()
        (HERE / "state.db.gz").write_bytes(gzip.compress((data_dir / "copy.db").read_bytes(), 9, mtime=0))
        clock.now = T0 + 60 * HISTORY_MIN - 1
        runner = EmbeddedRunner(settings, clock=clock)  # restarted from the store
        later = messages(HISTORY_MIN, HISTORY_MIN + NEXT_MIN)
        next_transitions = drive(runner, clock, later)
        close(runner)
        shutil.rmtree(data_dir, ignore_errors=True)
    (HERE / "fixture.json").write_text(json.dumps({
        "release": "d3e00c9",
        "settings": OVERRIDES,
        "devices": [msgspec.to_builtins(d) for d in DEVICES],
        "alert_keys": [[d, r, json.loads(b)] for d, r, b in keys],
        "history": history,
        "restart_at": T0 + 60 * HISTORY_MIN - 1,  # the restarted runner's clock at its start
        "next": [[topic, payload.decode(), received_at] for topic, payload, received_at in later],
        "next_transitions": next_transitions}, indent=1) + "\n")
    for device_id, rule, body in keys:
        print(device_id, rule, body.decode())
    print(len(next_transitions), "transitions next:", *next_transitions, sep="\n  ")


if __name__ == "__main__":
    main()
