"""A deterministic simulator of a city's devices, its bad input, and a publisher to an MQTT broker.

- `make_devices(n, seed)`: a realistic, seeded mix of the kinds with districts, grids,
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

What is particular to a kind (its share of devices, attributes, per-device state, normal readings,
incident scripts, bad-input samples) is its profile, declared in its file citywatch/kinds/<kind>.py
(`SPEC.simulator`, a citywatch.ingest.simkind.SimKind); this module does what all kinds share.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from citywatch.config import RuleSettings, RuleSettingsBase
from citywatch.ingest.simkind import Incident, SimKind, clamp
from citywatch.ingest.topics import status_topic, telemetry_topic
from citywatch.kinds import spec
from citywatch.kinds.noise import NoiseSim
from citywatch.model import KINDS, Device

__all__ = [
    "INCIDENT_TYPES", "RoadWorks", "Scenario", "Simulator", "Storm", "bad_messages", "make_devices", "payload_bytes",
    "status_messages", "storm_gauges", "street_monitors",
]

# -- devices ---------------------------------------------------------------------------------------


def _profile(kind: str) -> type[SimKind]:
    """The simulator profile of `kind` (KeyError: no such kind; ValueError: the kind is not simulated)."""
    profile = spec(kind).simulator
    if profile is None:
        raise ValueError(f"kind {kind!r} has no simulator profile (SPEC.simulator in citywatch/kinds/{kind}.py)")
    return profile


@cache
def _kind_cycle() -> tuple[str, ...]:
    """The kinds make_devices deals devices from, in turn: each simulated kind at the positions its
    profile's `slots` names (today 20 slots: gas 20%, noise 15%, water 15%, parking 30%, lock 15%,
    smoke 5%; every kind within the first six)."""
    placed = sorted((slot, kind) for kind in KINDS if spec(kind).simulator is not None for slot in _profile(kind).slots)
    if [slot for slot, _ in placed] != list(range(len(placed))):
        raise ValueError(f"the simulator profiles' slots must be 0 .. N-1, each once: {placed}")
    return tuple(kind for _, kind in placed)


def _simulated_kinds() -> tuple[str, ...]:
    """The simulated kinds in the order they first appear in the cycle (the order of their incidents)."""
    return tuple(dict.fromkeys(_kind_cycle()))


JIAXING = (30.75, 120.75)
_MAX_OFFSET_DEG = 0.15
_DISTRICTS = (  # name, centre (lat, lon): Jiaxing-like, compressed to within ~0.1 deg of the city
    ("Nanhu", 30.748, 120.790), ("Xiuzhou", 30.790, 120.712), ("Jingkai", 30.722, 120.728),
    ("Gaoxin", 30.772, 120.688), ("Wangdian", 30.822, 120.742), ("Fengqiao", 30.700, 120.812),
)
_STREETS = ("Zhongshan Rd", "Jianguo Rd", "Qinyi Rd", "Changsheng Rd", "Hongbo Rd", "Ziyang St",
            "Huancheng Rd", "Chengnan Rd", "Zhonghuan Rd", "Dongsheng Rd", "Nanxi Rd", "Xiuzhou Ave",
            "Jiahang Rd", "Yuehe St", "Shaoxing Rd", "Yaqing Rd")


def make_devices(n: int, seed: int = 1, prefix: str = "sim", interval_s: float = 60.0) -> list[Device]:
    """`n` devices of the simulated kinds, dealt in turn from the cycle of kinds (`_kind_cycle`), ids
    `<prefix>-<kind>-<i:06d>`, spread over a handful of districts around Jiaxing, each in the grid
    hierarchy (grid, community: its street, district, city); address style and kind attributes
    (zone class, tenants, bay limits) from the kind's profile. Deterministic."""
    rng = random.Random(f"citywatch-sim/devices/{seed}")
    cycle = _kind_cycle()
    profiles = {kind: _profile(kind) for kind in cycle}
    devices = []
    for i in range(n):
        kind = cycle[i % len(cycle)]
        profile = profiles[kind]
        d = rng.randrange(len(_DISTRICTS))
        district, clat, clon = _DISTRICTS[d]
        lat = clamp(clat + rng.gauss(0, 0.02), JIAXING[0] - _MAX_OFFSET_DEG, JIAXING[0] + _MAX_OFFSET_DEG)
        lon = clamp(clon + rng.gauss(0, 0.02), JIAXING[1] - _MAX_OFFSET_DEG, JIAXING[1] + _MAX_OFFSET_DEG)
        grid = f"G{d * 1000 + rng.randrange(1, 200):04d}"
        street = rng.choice(_STREETS)
        number = rng.randrange(1, 400)
        address = profile.address(rng, number, street)
        attrs = profile.attributes(rng)
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

# the incidents of every kind: a device goes silent, its battery runs low
_GENERIC_INCIDENTS: dict[str, tuple[str, ...]] = {"device_silent": ("device_offline",), "battery_low": ("battery_low",)}


def _incident_types() -> tuple[dict[str, tuple[str | None, tuple[str, ...]]], tuple[str, ...]]:
    """INCIDENT_TYPES and the incidents scheduled (all but the variants): kind by kind, then the generic ones."""
    declared: list[tuple[str, str | None, tuple[str, ...], bool]] = []  # name, kind, rules, scheduled
    for kind in _simulated_kinds():
        profile = _profile(kind)
        declared += [(name, kind, rules, True) for name, rules in profile.incidents.items()]
        declared += [(name, kind, rules, False) for name, rules in profile.variants.items()]
    declared += [(name, None, rules, True) for name, rules in _GENERIC_INCIDENTS.items()]
    types = {name: (kind, rules) for name, kind, rules, _ in declared}
    if len(types) < len(declared):
        raise ValueError(f"an incident name is declared twice: {[name for name, *_ in declared]}")
    return types, tuple(name for name, _, _, scheduled in declared if scheduled)


# incident name -> (device kind or None for any kind, rules that should fire), from the kinds' profiles
# (`incidents` and `variants`: e.g. the noise script starts at night when the horizon has a night,
# noise_night, else by day, noise_day); the rules in `incidents_log` are exact (a day incident running
# into the night also bursts).
INCIDENT_TYPES, _SCRIPTS = _incident_types()


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
        self.rules: RuleSettingsBase = rules or RuleSettings()
        self.topic_prefix = topic_prefix
        self.incidents_log: list[dict[str, Any]] = []
        self._zone = ZoneInfo(timezone)
        self._offsets: dict[int, float] = {}
        self.rng = random.Random(f"citywatch-sim/readings/{seed}")
        setup = random.Random(f"citywatch-sim/setup/{seed}")

        n = len(self.devices)
        self._topics = [telemetry_topic(d.kind, d.id, topic_prefix) for d in self.devices]
        self._iv = [float(d.interval_s) for d in self.devices]
        self._base = [self.start + (setup.random() * iv if spread else 0.0) for iv in self._iv]
        self._seq = [setup.randrange(0, 1000) for _ in range(n)]
        self._battery = [setup.uniform(80.0, 98.0) for _ in range(n)]
        self._drain = [setup.uniform(0.0005, 0.003) for _ in range(n)]
        self._rssi = [setup.uniform(-90.0, -70.0) for _ in range(n)]
        # the kinds' profiles (one each, owning its devices' state) and, per device, its normal readings
        self._profiles: dict[str, SimKind] = {kind: _profile(kind)(self) for kind in
                                              sorted({d.kind for d in self.devices})}
        normal = {kind: profile.normal for kind, profile in self._profiles.items()}
        self._normal: list[Callable[[int, float], dict[str, Any]]] = [normal[d.kind] for d in self.devices]
        for i, d in enumerate(self.devices):
            self._profiles[d.kind].setup(i, d, setup)

        self._incident: list[Incident | None] = [None] * n
        # heap of (event time, device index, step); step < 0 marks an extra (burst) reading
        self._heap: list[tuple[float, int, int]] = [(self._base[i], i, 0) for i in range(n)]
        scripted = self._schedule_scenarios(scenarios, random.Random(f"citywatch-sim/scenarios/{seed}"))
        if incidents and n:
            self._schedule_incidents(random.Random(f"citywatch-sim/incidents/{seed}"), incident_rate,
                                     horizon_s, scripted)
        self.incidents_log.sort(key=lambda e: (e["start"], e["device_id"]))
        heapq.heapify(self._heap)

    # -- what profiles use (citywatch.ingest.simkind.Sim) ----------------------------------------

    def local_hour(self, t: float) -> float:
        """The local hour of day (0 <= h < 24, fractional) at time `t`."""
        bucket = int(t // 3600)
        offset = self._offsets.get(bucket)
        if offset is None:
            delta = datetime.fromtimestamp(bucket * 3600, self._zone).utcoffset()
            offset = self._offsets[bucket] = delta.total_seconds() if delta else 0.0
        return ((t + offset) % 86400.0) / 3600.0

    def step_time(self, i: int, k: int) -> float:
        """The time of device `i`'s regular step `k`."""
        return self._base[i] + k * self._iv[i]

    def interval(self, i: int) -> float:
        """Device `i`'s reporting interval, seconds."""
        return self._iv[i]

    def extra_reading(self, i: int, t: float) -> None:
        """Schedule an extra reading of device `i` at `t` (its fields: the running incident's `extra`)."""
        self._heap.append((t, i, -1))

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
        rssi = round(self._rssi[i] + self.rng.gauss(0.0, 2.0))
        if inc is None:
            fields = self._normal[i](i, t)
        else:
            if k < 0:
                fields = dict(inc.extra or {})
            else:
                scripted = inc.values[step]
                fields = dict(scripted) if scripted is not None else self._normal[i](i, t)
                if inc.battery is not None:
                    battery = inc.battery[step]
                if step == inc.n - 1:
                    self._end_incident(i, inc, t)
        payload = {"ts": round(t, 3), "seq": seq, "battery": round(battery, 1), "rssi": rssi}
        payload.update(fields)
        return payload

    def _end_incident(self, i: int, inc: Incident, t: float) -> None:
        self._profiles[self.devices[i].kind].end_incident(i, inc.name, t)
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
            if kind is not None and kind in self._profiles:
                found = self._profiles[kind].candidates(name, found)
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

    def _storm(self, i: int, storm: Storm, rng: random.Random) -> Incident:
        iv = self._iv[i]
        k0 = self._first_step(i, self.start + storm.start_s + rng.uniform(0.0, storm.spread_s))
        rise, hold, drain = (max(1, round(rng.uniform(*span) / iv)) for span in (storm.rise_s, storm.hold_s,
                                                                                   storm.drain_s))
        inc = Incident("storm", i, k0, rise + hold + drain)
        peak = rng.uniform(*storm.peak_cm)
        for s in range(inc.n):
            if s < rise:
                v = peak * ((s + 1) / rise) ** 1.2
            elif s < rise + hold:
                v = peak + rng.uniform(-1.0, 1.0)
            else:
                v = peak * (1.0 - (s - rise - hold + 1) / drain) ** 1.5
            inc.values[s] = {"depth_cm": round(clamp(v, 0.0, 1000.0), 1)}
        inc.rules = ("water_depth",)
        inc.start, inc.end = self.step_time(i, k0), self.step_time(i, k0 + inc.n)
        inc.detail = {"peak": max(v["depth_cm"] for v in inc.values if v)}
        return inc

    def _road_works(self, i: int, works: RoadWorks, rng: random.Random) -> Incident:
        iv = self._iv[i]
        k0 = self._first_step(i, self.start + works.start_s)
        inc = Incident("road_works", i, k0, max(1, int(math.ceil(works.days * 86400.0 / iv))))
        noise = self._profiles["noise"]
        assert isinstance(noise, NoiseSim)
        day_limit, night_limit = noise.limits(self.devices[i])
        h0, h1 = works.hours
        at_night = False
        for s in range(inc.n):
            t = self.step_time(i, k0 + s)
            hour = self.local_hour(t)
            if not (h0 <= hour < h1 or h0 <= hour + 24.0 < h1):
                continue  # the crew is off: a normal reading
            laeq = day_limit + rng.uniform(*works.over_db)
            inc.values[s] = {"laeq_db": round(laeq, 1), "lamax_db": round(laeq + rng.uniform(6.0, 12.0), 1)}
            at_night = at_night or noise.is_night(t)
        inc.rules = ("noise_limit", "noise_night_burst") if at_night else ("noise_limit",)
        inc.start, inc.end = self.step_time(i, k0), self.step_time(i, k0 + inc.n)
        inc.detail = {"street": works.street, "hours": list(works.hours), "night_limit": night_limit}
        return inc

    def _script(self, name: str, i: int, rng: random.Random, horizon_s: float) -> Incident:
        device = self.devices[i]
        rules = self.rules
        k_min = int(math.ceil(rules.health.offline_intervals)) + 3
        k_max = max(k_min, int(horizon_s // self._iv[i]))
        k0 = rng.randint(k_min, k_max)
        profile = self._profiles[device.kind]
        if name == "device_silent":
            inc = Incident(name, i, k0, int(math.ceil(rules.health.offline_intervals)) + rng.randint(3, 8))
            inc.silent = True
        elif name == "battery_low":
            inc = Incident(name, i, k0, rng.randint(10, 20))
            low = rules.health.battery_low_pct - rng.uniform(2.0, 4.0)
            inc.battery = [round(max(1.0, low - 0.1 * s), 1) for s in range(inc.n)]
            inc.values[0] = profile.battery_event  # None: a normal reading
            inc.detail = {"battery": inc.battery[0]}
        else:
            inc = profile.script(name, i, k0, k_min, k_max, rng)
        if not inc.rules:
            inc.rules = INCIDENT_TYPES[name][1]
        inc.start = self.step_time(i, inc.k0)
        if not inc.end:
            inc.end = self.step_time(i, inc.k0 + inc.n)
        return inc


# -- bad input -------------------------------------------------------------------------------------

def bad_messages(devices: Sequence[Device], seed: int = 1, now: float | None = None,
                 prefix: str = "citywatch") -> list[tuple[str, bytes, str]]:
    """(topic, payload, expected dead-letter reason) for every kind of bad input, on the given
    (registered) devices where a registered device is needed. The bad telemetry is sent as a device of
    the first kind (in the cycle's order) with a numeric field, if any, from its profile's samples."""
    if not devices:
        raise ValueError("bad_messages needs at least one device")
    now = time.time() if now is None else now
    rng = random.Random(f"citywatch-sim/bad/{seed}")
    by_kind: dict[str, list[Device]] = {}
    for d in devices:
        by_kind.setdefault(d.kind, []).append(d)
    numeric = [k for k in _simulated_kinds() if k in by_kind and _profile(k).too_big is not None]
    kind = numeric[0] if numeric else sorted(by_kind)[0]
    profile = _profile(kind)
    dev = rng.choice(by_kind[kind])
    topic = telemetry_topic(kind, dev.id, prefix)
    ts = round(now - rng.uniform(1.0, 30.0), 3)
    good = {"ts": ts, "seq": rng.randrange(1, 1000), "battery": 88.0, "rssi": -75, **profile.valid_fields}
    field, too_big = profile.too_big or ("battery", 150.0)
    required = next(iter(profile.valid_fields))

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
    other_kind = next(k for k in KINDS if k != kind and spec(k).simulator is not None)
    other_fields = {k: v for k, v in good.items() if k not in profile.valid_fields}
    cases.append((telemetry_topic(other_kind, dev.id, prefix),
                  _encode({**other_fields, **_profile(other_kind).valid_fields}), "kind_mismatch"))
    for bad_kind in _simulated_kinds():
        bad_value = _profile(bad_kind).bad_value
        if bad_value is not None and bad_kind in by_kind:
            bad_dev = rng.choice(by_kind[bad_kind])
            cases.append((telemetry_topic(bad_kind, bad_dev.id, prefix), _encode({"ts": ts, **bad_value}), "bad_value"))
    return cases
