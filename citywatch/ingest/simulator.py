"""A deterministic simulator of a city's devices, its bad input, and a publisher to an MQTT broker.

- `make_devices(n, seed)`: a realistic, seeded mix of the five kinds with districts, grids,
  addresses and coordinates around Jiaxing.
- `Simulator(devices, seed, start)`: per device, a reading every `interval_s` (each device with
  its own phase) with daily rhythms and noise, plus scripted incidents (gas leak, night noise,
  storm water, parking overstay and no-parking, forced open / tamper / brute force / door ajar /
  jammed locks, a device going silent, low battery) listed in `incidents_log` together with the
  rules that should fire. Same seed and start, same messages, however the run is chunked.
- scenarios over many devices at once: `Storm` (a district's water gauges rising within minutes of
  each other) and `RoadWorks` (a street's noise monitors loud in working hours for days), with
  `storm_gauges` and `street_monitors` to make devices for them.
- `bad_messages(devices, seed, now)`: one message per kind of bad input, with the dead-letter
  reason the pipeline gives it.
- publishing to a broker lives in `citywatch.ingest.publisher`.

Normal readings stay clear of every default rule (no false alerts), so what the pipeline reports
beyond `incidents_log` is a false positive. Rule thresholds come from `RuleSettings`.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from citywatch.config import RuleSettings, RuleSettingsBase
from citywatch.ingest.topics import status_topic, telemetry_topic
from citywatch.kinds.gas import GasRules
from citywatch.kinds.lock import LockRules
from citywatch.kinds.noise import NoiseRules
from citywatch.kinds.parking import ParkingRules
from citywatch.kinds.smoke import SmokeRules
from citywatch.kinds.water import WaterRules
from citywatch.model import KINDS, Device

__all__ = [
    "INCIDENT_TYPES", "RoadWorks", "Scenario", "Simulator", "Storm", "bad_messages", "make_devices", "payload_bytes",
    "status_messages", "storm_gauges", "street_monitors",
]

# -- devices ---------------------------------------------------------------------------------------

# 20 slots: gas 20%, noise 15%, water 15%, parking 30%, lock 15%, smoke 5%; every kind within the first six.
_KIND_CYCLE = ("gas", "noise", "water", "parking", "lock", "smoke", "parking", "gas", "parking", "noise",
               "water", "lock", "gas", "parking", "parking", "gas", "noise", "water", "lock", "parking")
JIAXING = (30.75, 120.75)
_MAX_OFFSET_DEG = 0.15
_DISTRICTS = (  # name, centre (lat, lon): Jiaxing-like, compressed to within ~0.1 deg of the city
    ("Nanhu", 30.748, 120.790), ("Xiuzhou", 30.790, 120.712), ("Jingkai", 30.722, 120.728),
    ("Gaoxin", 30.772, 120.688), ("Wangdian", 30.822, 120.742), ("Fengqiao", 30.700, 120.812),
)
_STREETS = ("Zhongshan Rd", "Jianguo Rd", "Qinyi Rd", "Changsheng Rd", "Hongbo Rd", "Ziyang St",
            "Huancheng Rd", "Chengnan Rd", "Zhonghuan Rd", "Dongsheng Rd", "Nanxi Rd", "Xiuzhou Ave",
            "Jiahang Rd", "Yuehe St", "Shaoxing Rd", "Yaqing Rd")
_COMPOUNDS = ("Meiwan", "Jinxiu", "Lvyuan", "Xinghe", "Nanhu Garden", "Yuexiu", "Qinghe", "Heping")
_ZONE_CLASSES = (("1", 0.2), ("2", 0.45), ("3", 0.15), ("4a", 0.2))
_MAX_STAYS = (60.0, 90.0, 120.0, 120.0, 180.0, 240.0)


def _clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def make_devices(n: int, seed: int = 1, prefix: str = "sim", interval_s: float = 60.0) -> list[Device]:
    """`n` devices of all five kinds (gas 25%, noise 15%, water 15%, parking 30%, lock 15%), ids
    `<prefix>-<kind>-<i:06d>`, spread over a handful of districts around Jiaxing, each in the grid
    hierarchy (grid, community: its street, district, city). Deterministic."""
    rng = random.Random(f"citywatch-sim/devices/{seed}")
    zone_names = [z for z, _ in _ZONE_CLASSES]
    zone_weights = [w for _, w in _ZONE_CLASSES]
    devices = []
    for i in range(n):
        kind = _KIND_CYCLE[i % len(_KIND_CYCLE)]
        d = rng.randrange(len(_DISTRICTS))
        district, clat, clon = _DISTRICTS[d]
        lat = _clamp(clat + rng.gauss(0, 0.02), JIAXING[0] - _MAX_OFFSET_DEG, JIAXING[0] + _MAX_OFFSET_DEG)
        lon = _clamp(clon + rng.gauss(0, 0.02), JIAXING[1] - _MAX_OFFSET_DEG, JIAXING[1] + _MAX_OFFSET_DEG)
        grid = f"G{d * 1000 + rng.randrange(1, 200):04d}"
        street = rng.choice(_STREETS)
        number = rng.randrange(1, 400)
        attrs: dict[str, Any] = {}
        if kind in ("gas", "lock", "smoke"):  # rented housing
            building, room = rng.randrange(1, 30), rng.randrange(1, 19) * 100 + rng.randrange(1, 5)
            compound = rng.choice(_COMPOUNDS)
            address = f"Room {room}, Bldg {building}, {compound} Compound, No. {number} {street}"
        elif kind == "parking":
            address = f"Bay {rng.randrange(1, 120)}, No. {number} {street}"
        elif kind == "water":
            underpass = rng.random() < 0.4
            address = f"{'Underpass near ' if underpass else ''}No. {number} {street}"
        else:
            address = f"No. {number} {street}"
        if kind == "noise":
            attrs["zone_class"] = rng.choices(zone_names, zone_weights)[0]
        elif kind == "lock":
            attrs["tenants"] = rng.randint(1, 4)
        elif kind == "parking":
            no_parking = rng.random() < 0.05
            attrs["no_parking"] = no_parking
            attrs["max_stay_min"] = None if no_parking else rng.choice(_MAX_STAYS)
        devices.append(Device(
            id=f"{prefix}-{kind}-{i:06d}", kind=kind, district=district, grid=grid, community=street, city="Jiaxing",
            address=f"{address}, {district} District, Jiaxing", lat=round(lat, 6), lon=round(lon, 6),
            interval_s=interval_s, **attrs,
        ))
    return devices


# -- payloads --------------------------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode


def payload_bytes(payload: dict[str, Any]) -> bytes:
    """Compact JSON of one payload."""
    return _encode(payload)


def status_messages(devices: Iterable[Device], status: str = "online",
                    prefix: str = "citywatch") -> list[tuple[str, bytes]]:
    """(status topic, b"online") per device; publish them retained."""
    return [(status_topic(d.kind, d.id, prefix), status.encode()) for d in devices]


# -- incidents -------------------------------------------------------------------------------------

# incident name -> (device kind or None for any kind, rules that should fire). The noise script
# starts at night when the horizon has a night (noise_night), else by day (noise_day); the rules in
# `incidents_log` are exact (a day incident running into the night also bursts).
INCIDENT_TYPES: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "gas_leak": ("gas", ("gas_level",)),
    "noise_night": ("noise", ("noise_limit", "noise_night_burst")),
    "noise_day": ("noise", ("noise_limit",)),
    "water_storm": ("water", ("water_depth",)),
    "parking_overstay": ("parking", ("parking_overstay",)),
    "parking_forbidden": ("parking", ("parking_forbidden",)),
    "lock_forced_open": ("lock", ("lock_forced_open",)),
    "lock_tamper": ("lock", ("lock_tamper",)),
    "lock_brute_force": ("lock", ("lock_brute_force",)),
    "lock_door_ajar": ("lock", ("lock_door_ajar",)),
    "lock_jammed": ("lock", ("lock_jammed",)),
    "smoke_fire": ("smoke", ("smoke_rising", "smoke_alarm")),
    "smoke_tamper": ("smoke", ("smoke_tamper",)),
    "device_silent": (None, ("device_offline",)),
    "battery_low": (None, ("battery_low",)),
}

_SCRIPTS = tuple(name for name in INCIDENT_TYPES if name != "noise_day")


class _Incident:
    """A script for one device over regular steps k0 .. k0+n-1 (plus extra burst readings)."""

    __slots__ = ("name", "index", "k0", "n", "values", "battery", "silent", "rules", "start", "end",
                 "extra", "detail")

    def __init__(self, name: str, index: int, k0: int, n: int) -> None:
        self.name = name
        self.index = index
        self.k0 = k0
        self.n = n
        self.values: list[Any] = [None] * n  # per step: the fields to send, or None for normal ones
        self.battery: list[float] | None = None
        self.silent = False
        self.rules: tuple[str, ...] = ()
        self.start = 0.0
        self.end = 0.0
        self.extra: dict[str, Any] | None = None  # the fields of extra (burst) readings
        self.detail: dict[str, Any] = {}


# -- scenarios: many devices at once ---------------------------------------------------------------


@dataclass(frozen=True)
class Storm:
    """A cloudburst over one district: each of its water gauges starts rising at a moment drawn within
    `spread_s` after `start_s` (seconds after the simulator's start), rises for `rise_s`, holds its
    peak (drawn from `peak_cm`) for `hold_s`, then drains over `drain_s` (each drawn from its range)."""

    district: str
    start_s: float = 600.0
    spread_s: float = 1200.0
    peak_cm: tuple[float, float] = (12.0, 45.0)
    rise_s: tuple[float, float] = (300.0, 900.0)
    hold_s: tuple[float, float] = (600.0, 1800.0)
    drain_s: tuple[float, float] = (1200.0, 3600.0)


@dataclass(frozen=True)
class RoadWorks:
    """A road crew on one street for `days` days from `start_s`: the street's noise monitors (devices
    whose `community` is the street) read `over_db` above their day limit during the local working
    `hours` (start, end; end past 24 runs into the night), and normally otherwise."""

    street: str
    days: float = 5.0
    start_s: float = 0.0
    hours: tuple[float, float] = (8.0, 18.0)
    over_db: tuple[float, float] = (6.0, 14.0)


Scenario = Storm | RoadWorks


def storm_gauges(n: int, district: str = "Nanhu", grids: int = 8, prefix: str = "storm", seed: int = 1,
                 interval_s: float = 60.0) -> list[Device]:
    """`n` water gauges spread evenly over `grids` grids of `district` (ids `<prefix>-water-<i:06d>`,
    grids `S<district initial><g:03d>`), with coordinates around the district's centre."""
    rng = random.Random(f"citywatch-sim/storm-gauges/{seed}")
    _, clat, clon = next((d for d in _DISTRICTS if d[0] == district), (district, *JIAXING))
    out = []
    for i in range(n):
        g = i % max(1, grids)
        street = _STREETS[g % len(_STREETS)]
        underpass = "Underpass near " if rng.random() < 0.4 else ""
        out.append(Device(
            id=f"{prefix}-water-{i:06d}", kind="water", district=district, grid=f"S{district[:1]}{g:03d}",
            community=street, address=f"{underpass}No. {rng.randrange(1, 400)} {street}, {district} District, Jiaxing",
            lat=round(clat + rng.gauss(0, 0.01), 6), lon=round(clon + rng.gauss(0, 0.01), 6), interval_s=interval_s))
    return out


def street_monitors(n: int, street: str = "Jianguo Rd", district: str = "Nanhu", grid: str = "W0001",
                    prefix: str = "works", seed: int = 1, zone_class: str = "2",
                    interval_s: float = 60.0) -> list[Device]:
    """`n` noise monitors along one street (its name is their `community`), in one grid."""
    rng = random.Random(f"citywatch-sim/street-monitors/{seed}")
    _, clat, clon = next((d for d in _DISTRICTS if d[0] == district), (district, *JIAXING))
    return [Device(id=f"{prefix}-noise-{i:06d}", kind="noise", district=district, grid=grid, community=street,
                   address=f"No. {10 + 20 * i} {street}, {district} District, Jiaxing", zone_class=zone_class,
                   lat=round(clat + 0.001 * i, 6), lon=round(clon + rng.uniform(-0.0005, 0.0005), 6),
                   interval_s=interval_s) for i in range(n)]


# -- the simulator ---------------------------------------------------------------------------------

_GAS, _NOISE, _WATER, _PARKING, _LOCK, _SMOKE = range(6)
_KIND_CODE = {"gas": _GAS, "noise": _NOISE, "water": _WATER, "parking": _PARKING, "lock": _LOCK, "smoke": _SMOKE}


class Simulator:
    """Readings of `devices` over simulated time, in time order, with scripted incidents.

    Each device reports every `interval_s` at its own phase; incidents start between about five
    intervals after `start` and `horizon_s` after it, on roughly `incident_rate` of the devices (and
    at least one device per incident type that has a device to happen on). `scenarios` (Storm,
    RoadWorks) script every device they cover, which then takes no other incident. The simulator is
    stateful: `readings_at` and `messages` continue where the previous call stopped.
    """

    def __init__(self, devices: Sequence[Device], seed: int = 1, start: float | None = None,
                 incidents: bool = True, incident_rate: float = 0.01, *, horizon_s: float = 3600.0,
                 rules: RuleSettingsBase | None = None, timezone: str = "Asia/Shanghai",
                 topic_prefix: str = "citywatch", spread: bool = True,
                 scenarios: Sequence[Scenario] = ()) -> None:
        self.devices = list(devices)
        self.seed = seed
        self.start = float(time.time() if start is None else start)
        self.now = self.start
        self.rules = rules or RuleSettings()
        self._gas_rules, self._noise_rules = self.rules.section(GasRules), self.rules.section(NoiseRules)
        self._water_rules, self._smoke_rules = self.rules.section(WaterRules), self.rules.section(SmokeRules)
        self._parking_rules, self._lock_rules = self.rules.section(ParkingRules), self.rules.section(LockRules)
        self.topic_prefix = topic_prefix
        self.incidents_log: list[dict[str, Any]] = []
        self._zone = ZoneInfo(timezone)
        self._offsets: dict[int, float] = {}
        self._rng = random.Random(f"citywatch-sim/readings/{seed}")
        setup = random.Random(f"citywatch-sim/setup/{seed}")

        n = len(self.devices)
        self._topics = [telemetry_topic(d.kind, d.id, topic_prefix) for d in self.devices]
        self._kind = [_KIND_CODE[d.kind] for d in self.devices]
        self._iv = [float(d.interval_s) for d in self.devices]
        self._base = [self.start + (setup.random() * iv if spread else 0.0) for iv in self._iv]
        self._seq = [setup.randrange(0, 1000) for _ in range(n)]
        self._battery = [setup.uniform(80.0, 98.0) for _ in range(n)]
        self._drain = [setup.uniform(0.0005, 0.003) for _ in range(n)]
        self._rssi = [setup.uniform(-90.0, -70.0) for _ in range(n)]
        # kind-specific state: gas baseline / noise (plateau, floor, day limit, night limit) /
        # parking (occupied, next change) / lock (users, door open after an unlock)
        self._level: list[Any] = [None] * n
        self._co = [False] * n
        self._occupied = [False] * n
        self._next_change = [0.0] * n
        self._users: list[list[str]] = [[] for _ in range(n)]
        self._opened = [False] * n
        for i, d in enumerate(self.devices):
            kind = self._kind[i]
            if kind == _GAS:
                self._level[i] = (setup.uniform(0.2, 1.2), setup.uniform(0.3, 1.0))
                self._co[i] = setup.random() < 0.3
            elif kind == _NOISE:
                day_limit, night_limit = self._noise_limits(d)
                offset = setup.uniform(-3.0, 0.0)
                plateau, floor = day_limit - 7.0 + offset, night_limit - 8.0 + offset
                self._level[i] = (plateau, floor, day_limit, night_limit)
            elif kind == _PARKING:
                if not d.no_parking:
                    self._occupied[i] = setup.random() < 0.5
                    self._next_change[i] = self.start + setup.uniform(0, 45 * 60)
            elif kind == _LOCK:
                self._users[i] = [f"u{setup.getrandbits(32):08x}" for _ in range(max(1, d.tenants or 1))]

        self._incident: list[_Incident | None] = [None] * n
        # heap of (event time, device index, step); step < 0 marks an extra (burst) reading
        self._heap: list[tuple[float, int, int]] = [(self._base[i], i, 0) for i in range(n)]
        scripted = self._schedule_scenarios(scenarios, random.Random(f"citywatch-sim/scenarios/{seed}"))
        if incidents and n:
            self._schedule_incidents(random.Random(f"citywatch-sim/incidents/{seed}"), incident_rate,
                                     horizon_s, scripted)
        self.incidents_log.sort(key=lambda e: (e["start"], e["device_id"]))
        heapq.heapify(self._heap)
        self._fields: list[Callable[[int, float], dict[str, Any]]] = [
            self._gas, self._noise, self._water, self._parking, self._lock, self._smoke]

    # -- time helpers ----------------------------------------------------------------------------

    def _local_hour(self, t: float) -> float:
        bucket = int(t // 3600)
        offset = self._offsets.get(bucket)
        if offset is None:
            delta = datetime.fromtimestamp(bucket * 3600, self._zone).utcoffset()
            offset = self._offsets[bucket] = delta.total_seconds() if delta else 0.0
        return ((t + offset) % 86400.0) / 3600.0

    def _is_night(self, t: float) -> bool:
        hour = int(self._local_hour(t))
        return not (self._noise_rules.day_start_hour <= hour < self._noise_rules.night_start_hour)

    def _noise_limits(self, device: Device) -> tuple[float, float]:
        rules = self._noise_rules
        zone = device.zone_class or rules.default_zone_class
        day, night = rules.limits.get(zone, rules.limits[rules.default_zone_class])
        day = device.thresholds.get("noise.day_db", day) if device.thresholds else day
        night = device.thresholds.get("noise.night_db", night) if device.thresholds else night
        return float(day), float(night)

    def _t(self, i: int, k: int) -> float:
        return self._base[i] + k * self._iv[i]

    # -- normal readings -------------------------------------------------------------------------

    def _gas(self, i: int, t: float) -> dict[str, Any]:
        base, cooking = self._level[i]
        h = self._local_hour(t)
        rhythm = 0.9 * math.exp(-((h - 11.8) ** 2) / 0.8) + 1.1 * math.exp(-((h - 18.3) ** 2) / 1.0)
        lel = base + cooking * rhythm + (self._rng.random() - 0.5) * 0.6
        fields: dict[str, Any] = {"lel_pct": round(_clamp(lel, 0.0, 3.0), 1)}
        if self._co[i]:
            fields["co_ppm"] = round(self._rng.random() * 4.0, 1)
        return fields

    def _noise(self, i: int, t: float) -> dict[str, Any]:
        plateau, floor, day_limit, night_limit = self._level[i]
        h = self._local_hour(t)
        if h < 5.0:
            profile = 0.0
        elif h < 7.0:
            profile = (h - 5.0) / 2.0
        elif h < 20.0:
            profile = 1.0 + (0.15 if 7.5 <= h < 9.0 or 17.0 <= h < 19.0 else 0.0)
        elif h < 22.0:
            profile = 1.0 - 0.4 * (h - 20.0)
        else:
            profile = 0.1 * (24.0 - h)
        rng = self._rng
        laeq = floor + profile * (plateau - floor) + rng.gauss(0.0, 1.2)
        if self._is_night(t):
            laeq = min(laeq, night_limit - 4.0)
            burst_cap = night_limit + self._noise_rules.night_burst_db - 4.0
            lamax = min(laeq + 5.0 + rng.expovariate(0.3), burst_cap)
        else:
            laeq = min(laeq, day_limit - 4.0)
            lamax = laeq + 5.0 + rng.expovariate(0.3)
        laeq = max(laeq, 30.0)
        return {"laeq_db": round(laeq, 1), "lamax_db": round(max(lamax, laeq), 1)}

    def _water(self, i: int, t: float) -> dict[str, Any]:
        rng = self._rng
        return {"depth_cm": round(rng.random() * 0.8, 1) if rng.random() < 0.03 else 0.0}

    def _free_for(self, t: float) -> float:
        h = self._local_hour(t)
        mean = 40 * 60 if 7.0 <= h < 21.0 else 200 * 60
        return self._rng.expovariate(1.0 / mean) + 60.0

    def _parking(self, i: int, t: float) -> dict[str, Any]:
        device = self.devices[i]
        if device.no_parking:
            return {"occupied": False}
        if t >= self._next_change[i]:
            occupied = not self._occupied[i]
            self._occupied[i] = occupied
            if occupied:
                max_stay_s = (device.max_stay_min or self._parking_rules.max_stay_min) * 60.0
                stay = min(self._rng.expovariate(1.0 / (35 * 60)) + 120.0, 0.8 * max_stay_s - self._iv[i])
                self._next_change[i] = t + max(stay, 60.0)
            else:
                self._next_change[i] = t + self._free_for(t)
        return {"occupied": self._occupied[i]}

    def _lock(self, i: int, t: float) -> dict[str, Any]:
        if self._opened[i]:
            self._opened[i] = False
            return {"event": "door_closed"}
        rng = self._rng
        h = self._local_hour(t)
        r = rng.random()
        p_unlock = 0.12 if 6.5 <= h < 23.0 else 0.02
        if r < p_unlock:
            self._opened[i] = True
            return {"event": "unlock_ok", "user": rng.choice(self._users[i])}
        if r < p_unlock + 0.004:
            return {"event": "unlock_fail", "user": rng.choice(self._users[i])}
        return {"event": "door_closed"}

    def _smoke(self, i: int, t: float) -> dict[str, Any]:
        """Clean air (a little dust in the chamber); now and then a resident presses the test button."""
        rng = self._rng
        if rng.random() < 0.001:
            return {"obscuration_pct_per_m": round(rng.random() * 0.3, 2), "alarm": True, "event": "test"}
        return {"obscuration_pct_per_m": round(rng.random() * 0.3, 2), "alarm": False}

    # -- producing -------------------------------------------------------------------------------

    def _reading(self, i: int, t: float, k: int) -> dict[str, Any] | None:
        inc = self._incident[i]
        step = -1
        if inc is not None and (k < 0 or inc.k0 <= k < inc.k0 + inc.n):
            step = k - inc.k0 if k >= 0 else -1
            if inc.silent:
                return None
        else:
            inc = None
        seq = self._seq[i] + 1
        self._seq[i] = seq
        battery = self._battery[i] - self._drain[i]
        floor = self.rules.health.battery_clear_pct + 1.0
        if battery < floor:
            battery = floor
        self._battery[i] = battery
        rssi = round(self._rssi[i] + self._rng.gauss(0.0, 2.0))
        if inc is None:
            fields = self._fields[self._kind[i]](i, t)
        else:
            if k < 0:
                fields = dict(inc.extra or {})
            else:
                scripted = inc.values[step]
                fields = dict(scripted) if scripted is not None else self._fields[self._kind[i]](i, t)
                if inc.battery is not None:
                    battery = inc.battery[step]
                if step == inc.n - 1:
                    self._end_incident(i, inc, t)
        payload = {"ts": round(t, 3), "seq": seq, "battery": round(battery, 1), "rssi": rssi}
        payload.update(fields)
        return payload

    def _end_incident(self, i: int, inc: _Incident, t: float) -> None:
        kind = self._kind[i]
        if kind == _PARKING and inc.name.startswith("parking"):
            self._occupied[i] = False
            self._next_change[i] = t + self._free_for(t)
        elif kind == _LOCK:
            self._opened[i] = False
        if inc.name == "battery_low":
            self._battery[i] = 100.0  # replaced by the field team

    def _produce(self, until: float) -> Iterator[tuple[int, float, dict[str, Any]]]:
        heap = self._heap
        base = self._base
        iv = self._iv
        reading = self._reading
        replace, pop = heapq.heapreplace, heapq.heappop
        while heap and heap[0][0] <= until:
            t, i, k = heap[0]
            if k >= 0:
                replace(heap, (base[i] + (k + 1) * iv[i], i, k + 1))
            else:
                pop(heap)
            payload = reading(i, t, k)
            if payload is not None:
                yield i, t, payload
        if until > self.now:
            self.now = until

    def readings_at(self, t: float) -> list[tuple[Device, dict[str, Any]]]:
        """Every reading due up to and including `t` not produced yet, in time order: the payload
        dict of each device due (a silent device has none)."""
        devices = self.devices
        return [(devices[i], payload) for i, _, payload in self._produce(t)]

    @staticmethod
    def payload_bytes(payload: dict[str, Any]) -> bytes:
        """Compact JSON of one payload (as published)."""
        return _encode(payload)

    def messages(self, duration_s: float, step_s: float | None = None) -> Iterator[tuple[str, bytes, float]]:
        """(topic, payload bytes, event ts) in time order for the next `duration_s` simulated
        seconds. `step_s` only sets how far the clock advances per batch: the messages are the
        same whatever it is."""
        end = self.now + duration_s
        topics = self._topics
        encode = _encode
        if step_s is None or step_s <= 0:
            for i, _, payload in self._produce(end):
                yield topics[i], encode(payload), payload["ts"]
            return
        t_step = self.now
        while t_step < end:
            t_step = min(t_step + step_s, end)
            for i, _, payload in self._produce(t_step):
                yield topics[i], encode(payload), payload["ts"]

    # -- incident scripts ------------------------------------------------------------------------

    def _schedule_incidents(self, rng: random.Random, rate: float, horizon_s: float,
                            exclude: Iterable[int] = ()) -> None:
        skip = set(exclude)
        order = [i for i in range(len(self.devices)) if i not in skip]
        rng.shuffle(order)
        candidates: dict[str, list[int]] = {}
        for name in _SCRIPTS:
            kind = INCIDENT_TYPES[name][0]
            found = [i for i in order if kind is None or self.devices[i].kind == kind]
            if name == "parking_overstay":  # short-stay bays first, so the overstay ends sooner
                found = sorted((i for i in found if not self.devices[i].no_parking),
                               key=lambda i: self.devices[i].max_stay_min or 1e9)
            elif name == "parking_forbidden":
                found = [i for i in found if self.devices[i].no_parking]
            found.reverse()  # pop() from the end
            candidates[name] = found
        used: set[int] = set()

        def pick(name: str) -> int | None:
            found = candidates[name]
            while found:
                i = found.pop()
                if i not in used:
                    used.add(i)
                    return i
            return None

        wanted = max(0, round(rate * len(order)))
        chosen: list[tuple[str, int]] = []
        for name in _SCRIPTS:  # at least one of each type that can happen here
            i = pick(name)
            if i is not None:
                chosen.append((name, i))
        while len(chosen) < wanted:
            open_types = [name for name, found in candidates.items() if found]
            if not open_types:
                break
            name = rng.choice(open_types)
            i = pick(name)
            if i is not None:
                chosen.append((name, i))
        for name, i in chosen:
            inc = self._script(name, i, rng, horizon_s)
            self._incident[i] = inc
            device = self.devices[i]
            entry = {"device_id": device.id, "kind": device.kind, "incident": inc.name,
                     "start": round(inc.start, 3), "end": round(inc.end, 3), "rules": list(inc.rules)}
            entry.update(inc.detail)
            self.incidents_log.append(entry)
        self.incidents_log.sort(key=lambda e: (e["start"], e["device_id"]))

    def _schedule_scenarios(self, scenarios: Sequence[Scenario], rng: random.Random) -> set[int]:
        """Script every device each scenario covers; returns their indices."""
        scripted: set[int] = set()
        for scenario in scenarios:
            if isinstance(scenario, Storm):
                covered = [i for i, d in enumerate(self.devices)
                           if d.kind == "water" and d.district == scenario.district and i not in scripted]
                scripts = [self._storm(i, scenario, rng) for i in covered]
            else:
                covered = [i for i, d in enumerate(self.devices)
                           if d.kind == "noise" and d.community == scenario.street and i not in scripted]
                scripts = [self._road_works(i, scenario, rng) for i in covered]
            for i, inc in zip(covered, scripts, strict=True):
                self._incident[i] = inc
                device = self.devices[i]
                entry = {"device_id": device.id, "kind": device.kind, "incident": inc.name,
                         "start": round(inc.start, 3), "end": round(inc.end, 3), "rules": list(inc.rules),
                         "district": device.district, "grid": device.grid}
                entry.update(inc.detail)
                self.incidents_log.append(entry)
            scripted.update(covered)
        return scripted

    def _first_step(self, i: int, t: float) -> int:
        """The first regular step of device `i` at or after time `t`."""
        return max(0, int(math.ceil((t - self._base[i]) / self._iv[i] - 1e-9)))

    def _storm(self, i: int, storm: Storm, rng: random.Random) -> _Incident:
        iv = self._iv[i]
        k0 = self._first_step(i, self.start + storm.start_s + rng.uniform(0.0, storm.spread_s))
        rise, hold, drain = (max(1, round(rng.uniform(*span) / iv)) for span in (storm.rise_s, storm.hold_s,
                                                                                   storm.drain_s))
        inc = _Incident("storm", i, k0, rise + hold + drain)
        peak = rng.uniform(*storm.peak_cm)
        for s in range(inc.n):
            if s < rise:
                v = peak * ((s + 1) / rise) ** 1.2
            elif s < rise + hold:
                v = peak + rng.uniform(-1.0, 1.0)
            else:
                v = peak * (1.0 - (s - rise - hold + 1) / drain) ** 1.5
            inc.values[s] = {"depth_cm": round(_clamp(v, 0.0, 1000.0), 1)}
        inc.rules = ("water_depth",)
        inc.start, inc.end = self._t(i, k0), self._t(i, k0 + inc.n)
        inc.detail = {"peak": max(v["depth_cm"] for v in inc.values if v)}
        return inc

    def _road_works(self, i: int, works: RoadWorks, rng: random.Random) -> _Incident:
        iv = self._iv[i]
        k0 = self._first_step(i, self.start + works.start_s)
        inc = _Incident("road_works", i, k0, max(1, int(math.ceil(works.days * 86400.0 / iv))))
        day_limit, night_limit = self._noise_limits(self.devices[i])
        h0, h1 = works.hours
        at_night = False
        for s in range(inc.n):
            t = self._t(i, k0 + s)
            hour = self._local_hour(t)
            if not (h0 <= hour < h1 or h0 <= hour + 24.0 < h1):
                continue  # the crew is off: a normal reading
            laeq = day_limit + rng.uniform(*works.over_db)
            inc.values[s] = {"laeq_db": round(laeq, 1), "lamax_db": round(laeq + rng.uniform(6.0, 12.0), 1)}
            at_night = at_night or self._is_night(t)
        inc.rules = ("noise_limit", "noise_night_burst") if at_night else ("noise_limit",)
        inc.start, inc.end = self._t(i, k0), self._t(i, k0 + inc.n)
        inc.detail = {"street": works.street, "hours": list(works.hours), "night_limit": night_limit}
        return inc

    def _script(self, name: str, i: int, rng: random.Random, horizon_s: float) -> _Incident:
        device = self.devices[i]
        iv = self._iv[i]
        rules = self.rules
        k_min = int(math.ceil(rules.health.offline_intervals)) + 3
        k_max = max(k_min, int(horizon_s // iv))
        k0 = rng.randint(k_min, k_max)
        uniform = rng.uniform

        if name == "gas_leak":
            up, hold, down = rng.randint(8, 12), rng.randint(3, 5), rng.randint(6, 10)
            inc = _Incident(name, i, k0, up + hold + down)
            base = self._level[i][0]
            peak = min(95.0, self._gas_rules.level2_pct + uniform(8.0, 25.0))
            for s in range(inc.n):
                if s < up:
                    v = base + (peak - base) * ((s + 1) / up) ** 1.5
                elif s < up + hold:
                    v = peak + uniform(-2.0, 2.0)
                else:
                    frac = (s - up - hold + 1) / down
                    v = peak * (1.0 - frac) ** 2 + base * frac
                fields: dict[str, Any] = {"lel_pct": round(_clamp(v, 0.0, 100.0), 1)}
                if self._co[i]:
                    fields["co_ppm"] = round(uniform(0.0, 4.0), 1)
                inc.values[s] = fields
            inc.detail = {"peak": max(v["lel_pct"] for v in inc.values if v)}
        elif name == "noise_night":
            night_ks = [k for k in range(k_min, k_max + 1) if self._is_night(self._t(i, k))]
            if night_ks:
                k0 = rng.choice(night_ks)
            inc = _Incident(name, i, k0, rng.randint(10, 20))
            any_night = False
            for s in range(inc.n):
                t = self._t(i, k0 + s)
                night = self._is_night(t)
                any_night = any_night or night
                day_limit, night_limit = self._noise_limits(device)
                laeq = (night_limit if night else day_limit) + uniform(5.0, 10.0)
                lamax = (night_limit + self._noise_rules.night_burst_db + uniform(3.0, 8.0) if night
                         else laeq + uniform(6.0, 12.0))
                inc.values[s] = {"laeq_db": round(laeq, 1), "lamax_db": round(lamax, 1)}
            inc.name = "noise_night" if self._is_night(self._t(i, k0)) else "noise_day"
            inc.rules = ("noise_limit", "noise_night_burst") if any_night else ("noise_limit",)
            inc.detail = {"peak": max(v["laeq_db"] for v in inc.values if v)}
        elif name == "water_storm":
            rise, hold, drain = rng.randint(6, 12), rng.randint(3, 6), rng.randint(10, 20)
            inc = _Incident(name, i, k0, rise + hold + drain)
            peak = self._water_rules.severe_cm + uniform(3.0, 15.0)
            for s in range(inc.n):
                if s < rise:
                    v = peak * ((s + 1) / rise) ** 1.2
                elif s < rise + hold:
                    v = peak + uniform(-1.5, 1.5)
                else:
                    v = peak * (1.0 - (s - rise - hold + 1) / drain) ** 1.5
                inc.values[s] = {"depth_cm": round(max(0.0, v), 1)}
            inc.detail = {"peak": max(v["depth_cm"] for v in inc.values if v)}
        elif name in ("parking_overstay", "parking_forbidden"):
            if name == "parking_overstay":
                max_stay_s = (device.max_stay_min or self._parking_rules.max_stay_min) * 60.0
                occupied_steps = int(math.ceil((max_stay_s + uniform(10.0, 30.0) * 60.0) / iv)) + 1
            else:
                occupied_steps = rng.randint(4, 12)
            inc = _Incident(name, i, k0, occupied_steps + 2)
            inc.values = ([{"occupied": False}] + [{"occupied": True}] * occupied_steps
                          + [{"occupied": False}])
            inc.detail = {"occupied_min": round((occupied_steps - 1) * iv / 60.0, 1)}
        elif name == "lock_forced_open":
            inc = _Incident(name, i, k0, 2)
            inc.values = [{"event": "forced_open"}, {"event": "door_closed"}]
        elif name == "lock_tamper":
            inc = _Incident(name, i, k0, 1)
            inc.values = [{"event": "tamper"}]
        elif name == "lock_door_ajar":
            ajar = rng.randint(3, 8)
            inc = _Incident(name, i, k0, ajar + 2)
            inc.values = ([{"event": "unlock_ok", "user": rng.choice(self._users[i])}]
                          + [{"event": "door_ajar"}] * ajar + [{"event": "door_closed"}])
        elif name == "lock_jammed":
            jammed = rng.randint(2, 4)
            inc = _Incident(name, i, k0, jammed + 1)
            inc.values = [{"event": "jammed"}] * jammed + [{"event": "unlock_ok",
                                                            "user": rng.choice(self._users[i])}]
        elif name == "lock_brute_force":
            inc = self._brute_force(i, k0, rng)
        elif name == "smoke_fire":  # smoke builds up past the pre-alarm, the alarm sounds; nobody clears it
            up, hold = rng.randint(3, 6), rng.randint(2, 4)
            inc = _Incident(name, i, k0, up + hold)
            peak = self._smoke_rules.alarm_pct_per_m + uniform(2.0, 8.0)
            for s in range(inc.n):
                v = peak * ((s + 1) / up) ** 1.5 if s < up else peak + uniform(-1.0, 1.0)
                v = round(_clamp(v, 0.0, 100.0), 2)
                inc.values[s] = {"obscuration_pct_per_m": v, "alarm": v >= self._smoke_rules.alarm_pct_per_m}
            inc.detail = {"peak": max(v["obscuration_pct_per_m"] for v in inc.values if v)}
        elif name == "smoke_tamper":
            inc = _Incident(name, i, k0, 1)
            inc.values = [{"obscuration_pct_per_m": 0.0, "alarm": False, "event": "tamper"}]
        elif name == "device_silent":
            inc = _Incident(name, i, k0, int(math.ceil(rules.health.offline_intervals)) + rng.randint(3, 8))
            inc.silent = True
        elif name == "battery_low":
            inc = _Incident(name, i, k0, rng.randint(10, 20))
            low = rules.health.battery_low_pct - uniform(2.0, 4.0)
            inc.battery = [round(max(1.0, low - 0.1 * s), 1) for s in range(inc.n)]
            if device.kind == "lock":
                inc.values[0] = {"event": "low_battery"}
            elif device.kind == "smoke":
                inc.values[0] = {"obscuration_pct_per_m": 0.1, "alarm": False, "event": "low_battery"}
            inc.detail = {"battery": inc.battery[0]}
        else:  # pragma: no cover - INCIDENT_TYPES and this switch go together
            raise ValueError(f"unknown incident {name}")
        if not inc.rules:
            inc.rules = INCIDENT_TYPES[name][1]
        inc.start = self._t(i, inc.k0)
        if not inc.end:
            inc.end = self._t(i, inc.k0 + inc.n)
        return inc

    def _brute_force(self, i: int, k0: int, rng: random.Random) -> _Incident:
        """`fail_count + 2` failed unlocks a few seconds apart: regular reports plus extra ones."""
        iv = self._iv[i]
        gap = min(15.0, iv / 4.0)
        attacker = {"event": "unlock_fail", "user": f"x{rng.getrandbits(32):08x}"}
        start = self._t(i, k0)
        total = self._lock_rules.fail_count + 2
        fails, grid_steps, j = 0, 0, 0
        extras: list[float] = []
        while fails < total:
            offset = j * gap
            steps = offset / iv
            if abs(steps - round(steps)) < 1e-9:
                grid_steps = int(round(steps)) + 1
            else:
                extras.append(start + offset)
            fails += 1
            j += 1
        inc = _Incident("lock_brute_force", i, k0, grid_steps)
        inc.values = [attacker] * grid_steps
        inc.extra = attacker
        for t in extras:
            self._heap.append((t, i, -1))
        inc.detail = {"failures": total, "within_s": (j - 1) * gap}
        return inc


# -- bad input -------------------------------------------------------------------------------------

_VALID_FIELDS: dict[str, dict[str, Any]] = {
    "gas": {"lel_pct": 1.2}, "noise": {"laeq_db": 52.0, "lamax_db": 60.0}, "water": {"depth_cm": 0.0},
    "parking": {"occupied": False}, "lock": {"event": "door_closed"},
    "smoke": {"obscuration_pct_per_m": 0.1, "alarm": False},
}
_NUMERIC_FIELD = {"gas": ("lel_pct", 150.0), "noise": ("laeq_db", 200.0), "water": ("depth_cm", 2000.0),
                  "smoke": ("obscuration_pct_per_m", 150.0)}


def bad_messages(devices: Sequence[Device], seed: int = 1, now: float | None = None,
                 prefix: str = "citywatch") -> list[tuple[str, bytes, str]]:
    """(topic, payload, expected dead-letter reason) for every kind of bad input, on the given
    (registered) devices where a registered device is needed."""
    if not devices:
        raise ValueError("bad_messages needs at least one device")
    now = time.time() if now is None else now
    rng = random.Random(f"citywatch-sim/bad/{seed}")
    by_kind: dict[str, list[Device]] = {}
    for d in devices:
        by_kind.setdefault(d.kind, []).append(d)
    numeric = [k for k in ("gas", "noise", "water") if k in by_kind]
    kind = numeric[0] if numeric else sorted(by_kind)[0]
    dev = rng.choice(by_kind[kind])
    topic = telemetry_topic(kind, dev.id, prefix)
    ts = round(now - rng.uniform(1.0, 30.0), 3)
    good = {"ts": ts, "seq": rng.randrange(1, 1000), "battery": 88.0, "rssi": -75, **_VALID_FIELDS[kind]}
    field, too_big = _NUMERIC_FIELD.get(kind, ("battery", 150.0))
    required = next(iter(_VALID_FIELDS[kind]))

    def with_(**changes: Any) -> bytes:
        return _encode({**good, **changes})

    naive = datetime.fromtimestamp(ts).replace(microsecond=0).isoformat()  # no offset
    known = {d.id for d in devices}
    ghost = f"{dev.id.rsplit('-', 1)[0]}-ghost{rng.randrange(10**6):06d}"
    while ghost in known:
        ghost += "x"
    other = next((d for d in devices if d.id != dev.id), None)
    mismatch_id = other.id if other is not None else dev.id + "-other"
    bad_json = with_()[:-7]
    nan_payload = with_(**{field: 0.0}).replace(b'"%s":0.0' % field.encode(), b'"%s":NaN' % field.encode())
    missing = {k: v for k, v in good.items() if k != required}

    cases: list[tuple[str, bytes, str]] = [
        (topic, bad_json, "malformed_json"),
        (topic, b"not json at all", "malformed_json"),
        (topic, _encode([good]), "not_an_object"),
        (topic, _encode(missing), "missing_field"),
        (topic, with_(**{field: "high"}), "wrong_type"),
        (topic, with_(seq="seventeen"), "wrong_type"),
        (topic, nan_payload, "not_finite"),
        (topic, with_(**{field: too_big}), "out_of_range"),
        (topic, with_(battery=140.0), "out_of_range"),
        (topic, with_(pad="x" * 17000), "payload_too_large"),
        (f"{prefix}/radar/{dev.id}/telemetry", with_(), "unknown_kind"),
        (f"{prefix}/{kind}/{dev.id}", with_(), "bad_topic"),
        (topic, with_(device_id=mismatch_id), "topic_mismatch"),
        (topic, with_(kind="radar"), "topic_mismatch"),
        (topic, with_(ts=round(now + 3600.0, 3)), "future_timestamp"),
        (telemetry_topic(kind, ghost, prefix), with_(), "unknown_device"),
        (topic, with_(ts=naive), "bad_timestamp"),
        (status_topic(kind, dev.id, prefix), b"maybe", "bad_status"),
    ]
    other_kind = next((k for k in KINDS if k != kind), "noise")
    other_fields = {k: v for k, v in good.items() if k not in _VALID_FIELDS[kind]}
    cases.append((telemetry_topic(other_kind, dev.id, prefix),
                  _encode({**other_fields, **_VALID_FIELDS[other_kind]}), "kind_mismatch"))
    if "lock" in by_kind:
        lock = rng.choice(by_kind["lock"])
        cases.append((telemetry_topic("lock", lock.id, prefix),
                      _encode({"ts": ts, "event": "exploded"}), "bad_value"))
    return cases
