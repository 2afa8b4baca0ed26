"""A recent stretch of city life through the real pipeline: data to check dashboards and reports on.

`run_city` simulates `hours` of a seeded city ending about now, feeds every message through
`Pipeline.process` and `Pipeline.tick` exactly as the runners do, commits each simulated minute to
the alert store and the registry under `data_dir` (as `citywatch run` would), and returns the
InfluxDB line protocol the sink would have written.

Besides the simulator's incidents, operators acknowledge and resolve alerts (most promptly, some
late, some never); the dispatch centre sends field teams to most gas, water, parking and lock alerts
(assigned, on site, rectified: the engine then verifies against the device's readings, and reopens
the case when the team rectified too early; a person confirms what no sensor can verify), some only
after the review deadline (escalated); and a few cases are planted so that "now" has every state a
dashboard shows:

* a lock forced open an hour into the run that nobody acknowledges (past both deadlines);
* a lock tampered with two hours in, acknowledged seven hours later and never resolved;
* a device that goes silent 40 min before the end, one that announces itself offline (MQTT last
  will) 30 min before it, and one whose battery reads 12% for the last hour;
* ponding (15 cm) from 3 h to 5 h that a team keeps "rectifying" every 20 min while the water stands
  (reopened each time) until it recedes, then verified; and a gas leak (30 %LEL) from 2 h to 10 h first
  assigned after 7 h (escalated past the review deadline), rectified too early, then verified.

Operators' decisions depend on the alert's device, rule and opening time relative to the start,
so the same seed gives the same story whatever the end time.
"""

from __future__ import annotations

import hashlib
import math
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
from citywatch.model import Alert, Device, Output
from citywatch.sinks.lineprotocol import lines_for
from citywatch.streams.device_value import DeviceValue, encode_value
from citywatch.streams.pipeline import Pipeline

STEP_S = 60.0
OPERATOR = "duty-officer"
DISPATCHER = "dispatch-centre"
# Rules the dispatch centre sends teams to (noise waits a day for verification: not in a day's run)
DISPATCHED_RULES = frozenset({"gas_level", "gas_slow_rise", "water_depth", "water_fast_rise", "parking_overstay",
                              "parking_forbidden", "lock_forced_open", "lock_tamper", "lock_brute_force",
                              "lock_door_ajar", "lock_jammed"})


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
    dispatch_actions: int = 0  # assigned, on_site, rectified and closed by people, in all
    open_alerts: list[Alert] = field(default_factory=list)  # unresolved at the end

    def chunks(self, size: int = 10000) -> Iterator[str]:
        """The line protocol as newline-joined bodies of at most `size` lines."""
        for i in range(0, len(self.lines), size):
            yield "\n".join(self.lines[i:i + size]) + "\n"


class _Devices(dict[str, Device]):
    def get(self, device_id: str, default: Any = None) -> Device | None:  # type: ignore[override]
        found: Device | None = super().get(device_id, default)
        return found


class _Operators:
    """People in the command centre: acknowledge most alerts (some late, some never), resolve
    many of the acknowledged ones. Deterministic per (device, rule, opening time - start)."""

    def __init__(self, engine: AlertEngine, start: float, ignored: str, late: str,
                 scripted: dict[tuple[str, str], tuple[float, float]] | None = None) -> None:
        self.engine = engine
        self.start = start
        self.ignored = ignored  # never acknowledged
        self.late = late  # acknowledged after 7 h, never resolved
        self.scripted = scripted or {}  # (device, rule) -> (assign after, rectify after) in seconds
        self.entered: dict[str, tuple[str, float]] = {}  # alert id -> (status, when the dispatch centre saw it)

    def _fraction(self, alert: Alert, salt: str) -> float:
        key = f"{salt}|{alert.device_id}|{alert.rule}|{round(alert.opened_at - self.start)}"
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64

    def act(self, now: float, out: Output, run: CityRun) -> None:
        for alert in list(self.engine.by_id.values()):
            if self._dispatched(alert):
                self._dispatch(alert, now, out, run)
            elif alert.status == "open":
                delay = self._ack_delay(alert)
                if delay is not None and now - alert.opened_at >= delay:
                    out.transitions.append(self.engine.acknowledge(alert.id, OPERATOR, now))
                    run.acknowledged += 1
            elif alert.status == "acknowledged" and alert.acked_at is not None:
                delay = self._resolve_delay(alert)
                if delay is not None and now - alert.acked_at >= delay:
                    out.transitions.append(self.engine.resolve(alert.id, OPERATOR, now))
                    run.resolved_by_people += 1

    def _dispatched(self, alert: Alert) -> bool:
        if (alert.device_id, alert.rule) in self.scripted:
            return True
        return (alert.rule in DISPATCHED_RULES and alert.device_id not in (self.ignored, self.late)
                and self._fraction(alert, "dispatch") < 0.6)

    def _dispatch(self, alert: Alert, now: float, out: Output, run: CityRun) -> None:
        """One step of the dispatch centre's work on `alert`, each after a delay in its current status:
        assign (most within 20 min, some past the review deadline), on site after 15 min, rectified
        after 5 min to 2 h (too early if the condition still holds: the engine reopens it), a person's
        confirmation 30 min after a rectification no sensor can verify (or an overdue verification)."""
        status, since = self.entered.get(alert.id, ("", now))
        if status != alert.status:
            self.entered[alert.id] = (alert.status, now)
            since = now
        waited = now - since
        u = self._fraction(alert, "assign")
        assign_s = 120.0 + u / 0.8 * 1080.0 if u < 0.8 else 6.5 * 3600.0 + (u - 0.8) / 0.2 * 2 * 3600.0
        rectify_s = 300.0 + self._fraction(alert, "rectify") * 6900.0
        assign_s, rectify_s = self.scripted.get((alert.device_id, alert.rule), (assign_s, rectify_s))
        step: tuple[str, dict[str, str]] | None = None
        if alert.status == "open":
            if waited >= assign_s:
                step = "assigned", {"assignee": f"grid team {alert.device.get('grid') or '-'}"}
        elif alert.status == "assigned" and waited >= 900.0:
            step = "on_site", {}
        elif alert.status == "on_site" and waited >= rectify_s:
            step = "rectified", {"note": "fixed on site"}
        elif alert.status in ("rectified", "verification_overdue") and waited >= 1800.0:
            step = "closed", {}
        if step is not None:
            action, details = step
            by = OPERATOR if action == "closed" else DISPATCHER
            out.transitions.append(self.engine.dispatch(alert.id, action, by, now, **details))
            run.dispatch_actions += 1

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

    def __init__(self, device: Device, since: float, fields: dict[str, Any] | None, once: bool = False,
                 until: float = math.inf) -> None:
        self.part = f"/{device.id}/"
        self.since = since
        self.until = until
        self.fields = fields  # None: drop the messages
        self.once = once
        self.done = False

    def apply(self, topic: str, payload: bytes, ts: float) -> bytes | None:
        if ts < self.since or ts >= self.until or self.done or self.part not in topic:
            return payload
        if self.once:
            self.done = True
        if self.fields is None:
            return None
        return payload_bytes({**msgspec.json.decode(payload), **self.fields})


def _in_hierarchy(device: Device) -> Device:
    """The simulated device in a community (about ten per district, by grid number) of the city."""
    number = int(device.grid[1:]) % 1000 if device.grid[1:].isdigit() else 0
    return msgspec.structs.replace(device, city="Jiaxing", community=f"{device.district} community {number // 20 + 1}")


def run_city(data_dir: Path | None = None, *, settings: Settings | None = None, n_devices: int = 150,
             hours: float = 24.0, seed: int = 7, end: float | None = None, incident_rate: float = 0.3,
             horizon_h: float = 20.0) -> CityRun:
    """Simulate and process `hours` ending at `end` (default: a minute ago). With `data_dir`, the
    registry and alert store there get the devices, alerts, transitions and device state."""
    settings = settings or Settings()
    end = float(end if end is not None else time.time() - 60.0)
    start = end - hours * 3600.0
    devices = [_in_hierarchy(d) for d in make_devices(n_devices, seed=seed)]
    sim = Simulator(devices, seed=seed, start=start, incident_rate=incident_rate, horizon_s=horizon_h * 3600.0,
                    rules=settings.rules, topic_prefix=settings.mqtt.topic_prefix)
    run = CityRun(devices=devices, start=start, end=end, incidents=list(sim.incidents_log))
    involved = {e["device_id"] for e in sim.incidents_log}
    spare = iter(d for d in devices if d.id not in involved)

    def pick(kind: str) -> Device:
        return next(d for d in spare if d.kind == kind)

    forced, tampered, dead, gone, draining = pick("lock"), pick("lock"), pick("water"), pick("parking"), pick("gas")
    ponding, leak = pick("water"), pick("gas")
    run.planted = {"ignored_forced_open": forced.id, "late_tamper": tampered.id, "silent": dead.id,
                   "last_will": gone.id, "low_battery": draining.id, "early_fix": ponding.id, "late_dispatch": leak.id}
    offline_at = end - 30 * 60.0
    plants = [_Plant(forced, start + 3600.0, {"event": "forced_open"}, once=True),
              _Plant(tampered, start + 7200.0, {"event": "tamper"}, once=True),
              _Plant(dead, end - 40 * 60.0, None), _Plant(gone, offline_at, None),
              _Plant(draining, end - 3600.0, {"battery": 12.0}),
              _Plant(ponding, start + 3 * 3600.0, {"depth_cm": 15.0}, until=start + 5 * 3600.0),
              _Plant(leak, start + 2 * 3600.0, {"lel_pct": 30.0}, until=start + 10 * 3600.0)]

    engine = AlertEngine(settings.alerts)
    pipeline = Pipeline(settings, _Devices({d.id: d for d in devices}), engine, started_at=start)
    operators = _Operators(engine, start, ignored=forced.id, late=tampered.id,
                           scripted={(ponding.id, "water_depth"): (600.0, 300.0),
                                     (leak.id, "gas_level"): (7 * 3600.0, 600.0)})
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
                store.commit(out, engine.take_dirty(), {device_id: encode_value(DeviceValue(state=encoded))
                                                        for device_id in pipeline.take_dirty()
                                                        if (encoded := pipeline.encode(device_id)) is not None})
            else:
                engine.take_dirty()
                pipeline.take_dirty()
            out = Output()
    finally:
        if store is not None:
            store.close()
        if registry is not None:
            registry.close()
    run.counters = dict(pipeline.counters)
    run.open_alerts = sorted(engine.by_id.values(), key=lambda a: a.opened_at)
    from citywatch.dashboards.silences_panel import scenario_lines  # road works: silences (loop/silences.py)

    run.lines.extend(scenario_lines(run.devices, end))
    return run
