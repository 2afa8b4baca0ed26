"""The simulator's output for a fixed seed, pinned by a hash: same seed, same devices, readings,
incidents and bad input, on every machine and after every refactoring (benchmarks and the detection
scores compare runs by seed). A change that alters the output on purpose updates the hashes here and
says so in its commit message."""

from __future__ import annotations

import hashlib
import json

from citywatch.ingest.simulator import (
    RoadWorks,
    Simulator,
    Storm,
    bad_messages,
    make_devices,
    storm_gauges,
    street_monitors,
)

START = 1_700_000_000.0  # 06:13:20 in Asia/Shanghai: the run sees the morning rise


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
        h.update(b"\n")
    return h.hexdigest()


def _log(sim: Simulator) -> bytes:
    return json.dumps(sim.incidents_log, sort_keys=True).encode()


def test_the_same_seed_gives_the_same_city() -> None:
    devices = make_devices(300, seed=3)
    sim = Simulator(devices, seed=3, start=START, horizon_s=7200)
    messages = [topic.encode() + b" " + payload for topic, payload, _ in sim.messages(7200)]
    assert len(messages) == 35_994  # 300 x 120 regular readings, less a silent device's, plus burst readings
    bad = [f"{topic} {reason} ".encode() + payload
           for topic, payload, reason in bad_messages(devices, seed=3, now=START)]
    assert {
        "devices": _digest([repr(d).encode() for d in devices]),
        "messages": _digest(messages),
        "incidents": _digest([_log(sim)]),
        "bad": _digest(bad),
    } == {
        "devices": "58cbf0a01f095b4fbd4072b6e693e94b0cc774451bdf9ee117eacdc99ecebbc3",
        "messages": "50a5a10398fb5187394b85d88905939fd22820d33a079625d2355866a477c20c",
        "incidents": "fad63d2e15c6eb4e9bef26b12c977ab8863ce7741513cf6c53c83e12a9bf8150",
        "bad": "055ecc6c8b3b02ae878219db8cd2412dda7a1313a10234faaaffcfb51da7876a",
    }


def test_the_same_seed_gives_the_same_scenarios() -> None:
    devices = storm_gauges(30, seed=2) + street_monitors(6, seed=2) + make_devices(100, seed=4, interval_s=30.0)
    sim = Simulator(devices, seed=4, start=START, horizon_s=7200, incident_rate=0.2,
                    scenarios=(Storm("Nanhu"), RoadWorks("Jianguo Rd", days=1.0)))
    messages = [topic.encode() + b" " + payload for topic, payload, _ in sim.messages(7200, step_s=600)]
    assert len(sim.incidents_log) == 59
    assert (_digest(messages), _digest([_log(sim)])) == (
        "e9f18d4c727a6de6bc652994492dde1d0aa6377ad5117e3ad53d2db41bab3aeb",
        "a5d1c72e88f43b4f8495fb322d431e9cfdcd6df1753568c08458b86a19128472",
    )
