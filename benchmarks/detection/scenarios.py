"""Labelled scenarios for each kind, crafted on top of the city simulator's normal data.

The simulator (incidents off) gives a city whose daily rhythms carry no incident. On chosen
devices, after at least two days of normal data (the learned detectors' warm-up), a scenario
rewrites that device's messages for a while: a slow gas leak below level-1, a fast leak ramp, a
night louder than the street's normal though under the limit, a night over the limit, a storm's
water rise, sensors stuck or jumping, an overstay, a flapping or stuck bay, brute force, far more
users than tenants, an unlock at an hour the door never sees, a dropout, a battery draining, a
device chattering. Every device without a scenario is a negative. Each scenario lists the rules
that must open an alert (`expect`) and those that may (`allow`, neither credited nor blamed).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from citywatch.config import RuleSettings
from citywatch.detectors.baseline import LocalTime
from citywatch.ingest.simulator import Simulator, make_devices
from citywatch.model import Device

T0 = 1_795_000_000.0
DAY = 86400.0
Payload = dict[str, Any]
Transform = Callable[[Payload, float], list[Payload]]


@dataclass
class Scenario:
    name: str
    device: Device
    start: float
    end: float
    expect: tuple[str, ...]
    allow: tuple[str, ...] = ()
    transform: Transform | None = None  # rewrites a payload inside [start, end): 0..n payloads
    whole_run: Transform | None = None  # rewrites every payload of the device (a door that never opens at night)
    state: dict[str, Any] = field(default_factory=dict)


_clock = LocalTime()


def _local_hour(ts: float) -> float:
    return _clock.position(ts)[0]


def _next_local(ts: float, hour: float) -> float:
    """The first time at or after `ts` whose local hour is `hour`."""
    t = ts
    while abs(_local_hour(t) - hour) > 1 / 120:
        t += 60.0
    return t


# -- scenario builders ------------------------------------------------------------------------


def gas_slow_leak(d: Device, start: float, rng: random.Random) -> Scenario:
    rate = rng.uniform(3.0, 6.0)  # %LEL per hour, for three hours: stays below level-1

    def t(p: Payload, ts: float) -> list[Payload]:
        return [{**p, "lel_pct": round(min(p["lel_pct"] + rate * (ts - start) / 3600, 24.0), 1)}]
    return Scenario("gas_slow_leak", d, start, start + 3 * 3600, ("gas_slow_rise",), transform=t)


def gas_leak_ramp(d: Device, start: float, rng: random.Random) -> Scenario:
    peak = rng.uniform(55, 75)

    def t(p: Payload, ts: float) -> list[Payload]:
        m = (ts - start) / 60
        v = p["lel_pct"] + peak * min(1.0, (m / 10) ** 1.5) if m < 15 else peak * max(0.0, 1 - (m - 15) / 10)
        return [{**p, "lel_pct": round(min(max(v, p["lel_pct"]), 99.0), 1)}]
    return Scenario("gas_leak_ramp", d, start, start + 25 * 60, ("gas_level",), ("gas_slow_rise",), transform=t)


def stuck(field_name: str, allow: tuple[str, ...] = (), at: float | None = None) -> Callable[..., Scenario]:
    def build(d: Device, start: float, rng: random.Random) -> Scenario:
        sc = Scenario(f"{d.kind}_stuck", d, start, start + rng.uniform(2, 3) * 3600, ("sensor_stuck",), allow)

        def t(p: Payload, ts: float) -> list[Payload]:
            frozen = sc.state.setdefault("v", at if at is not None else p[field_name])
            return [{**p, field_name: frozen}]
        sc.transform = t
        return sc
    return build


def jump(field_name: str, spike: float, allow: tuple[str, ...]) -> Callable[..., Scenario]:
    def build(d: Device, start: float, rng: random.Random) -> Scenario:
        def t(p: Payload, ts: float) -> list[Payload]:
            q = {**p, field_name: spike}
            if "lamax_db" in q:
                q["lamax_db"] = spike + 5
            return [q]
        return Scenario(f"{d.kind}_jump", d, start, start + 61, ("sensor_jump",), allow, transform=t)
    return build


def noise_unusual_night(d: Device, start: float, rng: random.Random) -> Scenario:
    rules = RuleSettings().noise
    night_limit = rules.limits[d.zone_class or rules.default_zone_class][1]
    start = _next_local(start, rng.uniform(1.0, 3.0))
    add = rng.uniform(9.0, 12.0)

    def t(p: Payload, ts: float) -> list[Payload]:
        laeq = min(p["laeq_db"] + add, night_limit - 1.5 + rng.uniform(-0.5, 0.5))
        return [{**p, "laeq_db": round(laeq, 1), "lamax_db": round(laeq + 5.0, 1)}]
    return Scenario("noise_unusual_night", d, start, start + rng.uniform(30, 60) * 60, ("noise_unusual_night",),
                    transform=t)


def noise_night_over_limit(d: Device, start: float, rng: random.Random) -> Scenario:
    rules = RuleSettings().noise
    night_limit = rules.limits[d.zone_class or rules.default_zone_class][1]
    start = _next_local(start, rng.uniform(0.5, 3.0))

    def t(p: Payload, ts: float) -> list[Payload]:
        laeq = night_limit + rng.uniform(5, 10)
        return [{**p, "laeq_db": round(laeq, 1), "lamax_db": round(night_limit + rules.night_burst_db + 5, 1)}]
    return Scenario("noise_night", d, start, start + 20 * 60, ("noise_limit", "noise_night_burst"),
                    ("noise_unusual_night",), transform=t)


def water_storm(d: Device, start: float, rng: random.Random) -> Scenario:
    rate = rng.uniform(1.0, 2.5)  # cm per minute
    peak = rng.uniform(30, 45)
    rise = peak / rate * 60

    def t(p: Payload, ts: float) -> list[Payload]:
        s = ts - start
        v = rate * s / 60 if s < rise else peak if s < rise + 600 else max(0.0, peak * (1 - (s - rise - 600) / 1800))
        return [{**p, "depth_cm": round(v, 1)}]
    return Scenario("water_storm", d, start, start + rise + 2400, ("water_depth", "water_fast_rise"), transform=t)


def parking_overstay(d: Device, start: float, rng: random.Random) -> Scenario:
    stay = ((d.max_stay_min or 120.0) + rng.uniform(20, 40)) * 60

    def t(p: Payload, ts: float) -> list[Payload]:
        return [{**p, "occupied": True}]
    return Scenario("parking_overstay", d, start, start + stay, ("parking_overstay",), transform=t)


def parking_flapping(d: Device, start: float, rng: random.Random) -> Scenario:
    def t(p: Payload, ts: float) -> list[Payload]:
        return [{**p, "occupied": int((ts - start) // 60) % 2 == 0}]
    return Scenario("parking_flapping", d, start, start + 20 * 60, ("parking_flapping",), transform=t)


def parking_stuck(d: Device, start: float, rng: random.Random) -> Scenario:
    def t(p: Payload, ts: float) -> list[Payload]:
        return [{**p, "occupied": False}]
    return Scenario("parking_stuck", d, start, start + 48 * 3600, ("parking_stuck",), transform=t)


def lock_brute_force(d: Device, start: float, rng: random.Random) -> Scenario:
    stranger = f"x{rng.getrandbits(32):08x}"

    def t(p: Payload, ts: float) -> list[Payload]:
        base = {k: v for k, v in p.items() if k not in ("seq", "user")}
        return [{**base, "ts": round(ts + 20 * j, 3), "event": "unlock_fail", "user": stranger} for j in range(3)]
    return Scenario("lock_brute_force", d, start, start + 120, ("lock_brute_force", "lock_unusual_failures"),
                    transform=t)


def lock_many_users(d: Device, start: float, rng: random.Random) -> Scenario:
    start = _next_local(start, 9.0)
    limit = int((d.tenants or 1) * 2) + 2
    sc = Scenario("lock_many_users", d, start, start + (limit + 3) * 1800 + 1, ("lock_many_users",))

    def t(p: Payload, ts: float) -> list[Payload]:
        slot = int((ts - start) // 1800)
        if sc.state.get("slot") == slot:
            return [p]
        sc.state["slot"] = slot
        return [{**p, "event": "unlock_ok", "user": f"visitor-{d.id}-{slot}"}]
    sc.transform = t
    return sc


def lock_unusual_hour(d: Device, start: float, rng: random.Random) -> Scenario:
    start = _next_local(start, rng.uniform(2.5, 4.0))

    def never_at_night(p: Payload, ts: float) -> list[Payload]:
        if p.get("event") == "unlock_ok" and _local_hour(ts) < 6.5:
            return [{k: v for k, v in p.items() if k != "user"} | {"event": "door_closed"}]
        return [p]

    def t(p: Payload, ts: float) -> list[Payload]:
        return [{**p, "event": "unlock_ok", "user": "tenant-night"}]
    return Scenario("lock_unusual_hour", d, start, start + 61, ("lock_unusual_hour",), ("lock_many_users",),
                    transform=t, whole_run=never_at_night)


def dropout(d: Device, start: float, rng: random.Random) -> Scenario:
    return Scenario("dropout", d, start, start + rng.uniform(15, 30) * 60, ("device_offline",),
                    ("reporting_interval",), transform=lambda p, ts: [])


def battery_drain(d: Device, start: float, rng: random.Random) -> Scenario:
    def t(p: Payload, ts: float) -> list[Payload]:
        return [{**p, "battery": round(max(1.0, p["battery"] - (ts - start) / 3600), 1)}]
    return Scenario("battery_drain", d, start, start + 36 * 3600, ("battery_drain",), ("battery_low",), transform=t)


def chatter(d: Device, start: float, rng: random.Random) -> Scenario:
    def t(p: Payload, ts: float) -> list[Payload]:
        base = {k: v for k, v in p.items() if k != "seq"}
        return [p] + [{**base, "ts": round(ts + 10 * j, 3)} for j in range(1, 6)]
    return Scenario("chatter", d, start, start + 2 * 3600, ("reporting_interval",), transform=t)


PLAN: dict[str, list[tuple[Callable[..., Scenario], int]]] = {
    "gas": [(gas_slow_leak, 4), (gas_leak_ramp, 3), (stuck("lel_pct"), 3),
            (jump("lel_pct", 95.0, ("gas_level",)), 3)],
    "noise": [(noise_unusual_night, 4), (noise_night_over_limit, 2), (stuck("laeq_db"), 2),
              (jump("laeq_db", 130.0, ("noise_limit", "noise_night_burst")), 2)],
    "water": [(water_storm, 4), (stuck("depth_cm", ("water_depth",), at=4.2), 2),
              (jump("depth_cm", 150.0, ("water_depth",)), 2)],
    "parking": [(parking_overstay, 3), (parking_flapping, 3), (parking_stuck, 3)],
    "lock": [(lock_brute_force, 3), (lock_many_users, 3), (lock_unusual_hour, 3)],
    "any": [(dropout, 4), (battery_drain, 3), (chatter, 3)],
}


def build(n_devices: int = 100, seed: int = 11, days: float = 5.0) -> tuple[list[Device], list[Scenario], float]:
    """Devices, scenarios (each on its own device, starting after two days) and the horizon (s)."""
    devices = make_devices(n_devices, seed=seed)
    rng = random.Random(f"citywatch-bench/{seed}")
    free = {kind: [d for d in devices if d.kind == kind] for kind in ("gas", "noise", "water", "parking", "lock")}
    for found in free.values():
        rng.shuffle(found)
    scenarios: list[Scenario] = []
    for kind, plan in PLAN.items():
        for builder, count in plan:
            for _ in range(count):
                pool = free[kind] if kind != "any" else free[rng.choice(["gas", "noise", "water", "parking", "lock"])]
                if builder is parking_overstay or builder is parking_flapping or builder is parking_stuck:
                    pool = [d for d in pool if not d.no_parking] or pool
                device = pool.pop()
                for found in free.values():
                    if device in found:
                        found.remove(device)
                late = 2.2 * DAY if builder is parking_stuck else 1.5 * DAY if builder is battery_drain else 1.0 * DAY
                start = T0 + 2 * DAY + rng.uniform(0, days * DAY - 2 * DAY - late)
                scenarios.append(builder(device, start, rng))
    return devices, scenarios, days * DAY


_decode = msgspec.json.decode
_encode = msgspec.json.encode


def messages(devices: list[Device], scenarios: list[Scenario], horizon: float,
             seed: int = 11) -> Iterator[tuple[str, bytes, float]]:
    """The simulator's messages in time order, rewritten by the scenarios."""
    by_device = {s.device.id: s for s in scenarios}
    sim = Simulator(devices, seed=seed, start=T0, incidents=False)
    pending: list[tuple[float, int, str, bytes]] = []
    order = 0
    for topic, payload, ts in sim.messages(horizon):
        while pending and pending[0][0] <= ts:
            t, _, ptopic, pbody = heapq.heappop(pending)
            yield ptopic, pbody, t
        device_id = topic.split("/")[2]
        sc = by_device.get(device_id)
        if sc is None:
            yield topic, payload, ts
            continue
        body: Payload = _decode(payload)
        out = sc.whole_run(body, ts) if sc.whole_run else [body]
        if sc.start <= ts < sc.end and sc.transform is not None:
            out = [q for p in out for q in sc.transform(p, ts)]
        for q in out:
            if q["ts"] == ts:
                yield topic, _encode(q), ts
            else:
                order += 1
                heapq.heappush(pending, (q["ts"], order, topic, _encode(q)))
    while pending:
        t, _, ptopic, pbody = heapq.heappop(pending)
        yield ptopic, pbody, t
