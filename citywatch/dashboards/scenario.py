"""A recent stretch of city life through the real pipeline: data to check dashboards and reports on.

`run_city` simulates `hours` of a seeded city ending about now, feeds every message through
`Pipeline.process` and `Pipeline.tick` exactly as the runners do, commits each simulated minute to
the alert store and the registry under `data_dir` (as `citywatch run` would), and returns the
InfluxDB line protocol the sink would have written.

Besides the simulator's incidents, operators acknowledge and resolve alerts (most promptly, some
late, some never), and a few cases are planted so that "now" has every state a dashboard shows:

* a lock forced open an hour into the run that nobody acknowledges (past both deadlines);
* a lock tampered with two hours in, acknowledged seven hours later and never resolved;
* a device that goes silent 40 min before the end, one that announces itself offline (MQTT last
  will) 30 min before it, and one whose battery reads 12% for the last hour.

Operators' decisions depend on the alert's device, rule and opening time relative to the start,
so the same seed gives the same story whatever the end time.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from citywatch.config import Settings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.ingest.simulator import Simulator, make_devices, payload_bytes
from citywatch.ingest.topics import status_topic
from citywatch.model import Alert, Device
from citywatch.sinks.lineprotocol import lines_for
from citywatch.streams.pipeline import Output, Pipeline

STEP_S = 60.0
OPERATOR = "duty-officer"


@dataclass
class CityRun:
    devices: list[Device]
    start: float
    end: float
    lines: list[str] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    planted: dict[str, str] = field(default_factory=dict)  # role -> device id
    acknowledged: int = 0
    resolved_by_people: int = 0
    open_alerts: list[Alert] = field(default_factory=list)  # unresolved at the end

    def chunks(self, size: int = 10000) -> Iterator[str]:
        """The line protocol as newline-joined bodies of at most `size` lines."""
        for i in range(0, len(self.lines), size):
            yield "\n".join(self.lines[i:i + size]) + "\n"


class _Devices(dict[str, Device]):
    def get(self, device_id: str, default: Any = None) -> Device | None:  # type: ignore[override]
        return super().get(device_id, default)


class _Operators:
    """People in the command centre: acknowledge most alerts (some late, some never), resolve
    many of the acknowledged ones. Deterministic per (device, rule, opening time - start)."""

    def __init__(self, engine: AlertEngine, start: float, ignored: str, late: str) -> None:
        self.engine = engine
        self.start = start
        self.ignored = ignored  # never acknowledged
        self.late = late  # acknowledged after 7 h, never resolved

    def _fraction(self, alert: Alert, salt: str) -> float:
        key = f"{salt}|{alert.device_id}|{alert.rule}|{round(alert.opened_at - self.start)}"
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64

    def act(self, now: float, out: Output, run: CityRun) -> None:
        for alert in list(self.engine.by_id.values()):
            if alert.status == "open":
                delay = self._ack_delay(alert)
                if delay is not None and now - alert.opened_at >= delay:
                    out.transitions.append(self.engine.acknowledge(alert.id, OPERATOR, now))
                    run.acknowledged += 1
            elif alert.status == "acknowledged" and alert.acked_at is not None:
                delay = self._resolve_delay(alert)
                if delay is not None and now - alert.acked_at >= delay:
                    out.transitions.append(self.engine.resolve(alert.id, OPERATOR, now))
                    run.resolved_by_people += 1

    def _ack_delay(self, alert: Alert) -> float | None:
        if alert.device_id == self.ignored:
            return None
        if alert.device_id == self.late:
            return 7 * 3600.0
        u = self._fraction(alert, "ack")
        if u < 0.15:
            return None  # nobody picks it up
        if u < 0.75:
            return 120.0 + (u - 0.15) / 0.6 * 43 * 60.0  # 2 .. 45 min
        return 3600.0 + (u - 0.75) / 0.25 * 8 * 3600.0  # 1 .. 9 h: some past the 6 h review deadline

    def _resolve_delay(self, alert: Alert) -> float | None:
        if alert.device_id in (self.ignored, self.late):
            return None
        u = self._fraction(alert, "resolve")
        if u < 0.25:
            return None
        return 900.0 + (u - 0.25) / 0.75 * 10 * 3600.0


class _Plant:
    """Rewrites or drops one device's messages from a given time on."""

    def __init__(self, device: Device, since: float, fields: dict[str, Any] | None, once: bool = False) -> None:
        self.part = f"/{device.id}/"
        self.since = since
        self.fields = fields  # None: drop the messages
        self.once = once
        self.done = False

    def apply(self, topic: str, payload: bytes, ts: float) -> bytes | None:
        if ts < self.since or self.done or self.part not in topic:
            return payload
        if self.once:
            self.done = True
        if self.fields is None:
            return None
        return payload_bytes({**msgspec.json.decode(payload), **self.fields})


def run_city(data_dir: Path | None = None, *, settings: Settings | None = None, n_devices: int = 150,
             hours: float = 24.0, seed: int = 7, end: float | None = None, incident_rate: float = 0.3,
             horizon_h: float = 20.0) -> CityRun:
    """Simulate and process `hours` ending at `end` (default: a minute ago). With `data_dir`, the
    registry and alert store there get the devices, alerts, transitions and device state."""
    settings = settings or Settings()
    end = float(end if end is not None else time.time() - 60.0)
    start = end - hours * 3600.0
    devices = make_devices(n_devices, seed=seed)
    sim = Simulator(devices, seed=seed, start=start, incident_rate=incident_rate, horizon_s=horizon_h * 3600.0,
                    rules=settings.rules, topic_prefix=settings.mqtt.topic_prefix)
    run = CityRun(devices=devices, start=start, end=end, incidents=list(sim.incidents_log))
    involved = {e["device_id"] for e in sim.incidents_log}
    spare = iter(d for d in devices if d.id not in involved)

    def pick(kind: str) -> Device:
        return next(d for d in spare if d.kind == kind)

    forced, tampered, dead, gone, draining = pick("lock"), pick("lock"), pick("water"), pick("parking"), pick("gas")
    run.planted = {"ignored_forced_open": forced.id, "late_tamper": tampered.id, "silent": dead.id,
                   "last_will": gone.id, "low_battery": draining.id}
    offline_at = end - 30 * 60.0
    plants = [_Plant(forced, start + 3600.0, {"event": "forced_open"}, once=True),
              _Plant(tampered, start + 7200.0, {"event": "tamper"}, once=True),
              _Plant(dead, end - 40 * 60.0, None), _Plant(gone, offline_at, None),
              _Plant(draining, end - 3600.0, {"battery": 12.0})]

    engine = AlertEngine(settings.alerts)
    pipeline = Pipeline(settings, _Devices({d.id: d for d in devices}), engine, started_at=start)
    operators = _Operators(engine, start, ignored=forced.id, late=tampered.id)
    registry = store = None
    if data_dir is not None:
        from citywatch.devices.registry import Registry, registry_path
        from citywatch.sinks.store import AlertStore, store_path

        registry = Registry(registry_path(data_dir))
        registry.add_many([(d, None) for d in devices])
        store = AlertStore(store_path(data_dir))
    prefix = settings.mqtt.topic_prefix
    try:
        out = Output()
        for d in devices:  # retained "online" as each device connects
            pipeline.process(status_topic(d.kind, d.id, prefix), b"online", start, out)
        t = start
        announced = False
        while t < end:
            step_end = min(t + STEP_S, end)
            for topic, payload, ts in sim.messages(step_end - t):
                kept: bytes | None = payload
                for plant in plants:
                    if kept is not None:
                        kept = plant.apply(topic, kept, ts)
                if kept is not None:
                    pipeline.process(topic, kept, ts, out)
            t = step_end
            if not announced and t >= offline_at:
                announced = True
                pipeline.process(status_topic(gone.kind, gone.id, prefix), b"offline", offline_at, out)
            pipeline.tick(t, out)
            operators.act(t, out, run)
            run.lines.extend(lines_for(out))
            if store is not None:
                store.commit(out, engine.take_dirty(), pipeline.take_dirty_states())
            else:
                engine.take_dirty()
                pipeline.take_dirty_states()
            out = Output()
    finally:
        if store is not None:
            store.close()
        if registry is not None:
            registry.close()
    run.counters = dict(pipeline.counters)
    run.open_alerts = sorted(engine.by_id.values(), key=lambda a: a.opened_at)
    return run
