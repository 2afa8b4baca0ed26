"""A kind's simulator profile: what the simulator (citywatch/ingest/simulator.py) does per kind.

A kind's file (citywatch/kinds/<kind>.py) subclasses `SimKind` and names the class in its `SPEC`
(`simulator=`); the simulator keeps only what every kind shares (time, sequence numbers, battery,
signal, scheduling, the device_silent and battery_low incidents, the scenarios). The class says how
often the kind occurs among simulated devices, its address and attributes, and its bad-input
samples; an instance, one per kind per `Simulator`, owns the kind's per-device state (indexed by
the device's index in the simulator) and makes its normal readings and incident scripts.

This module imports nothing that leads back to the kind files (citywatch.model and citywatch.config
do, through citywatch.kinds): what a profile may use of the simulator and of a device is declared
here as protocols, which `Simulator` and `citywatch.model.Device` satisfy.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel

S = TypeVar("S", bound=BaseModel)

COMPOUNDS = ("Meiwan", "Jinxiu", "Lvyuan", "Xinghe", "Nanhu Garden", "Yuexiu", "Qinghe", "Heping")


class SimDevice(Protocol):
    """The attributes of a device (citywatch.model.Device) that profiles read."""

    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def zone_class(self) -> str | None: ...
    @property
    def tenants(self) -> int | None: ...
    @property
    def max_stay_min(self) -> float | None: ...
    @property
    def no_parking(self) -> bool: ...
    @property
    def thresholds(self) -> Mapping[str, float]: ...


class Rules(Protocol):
    """The rule settings (citywatch.config.RuleSettingsBase): a profile reads its `rules.<kind>` section."""

    def section(self, cls: type[S]) -> S: ...


class Sim(Protocol):
    """What a profile may use of the simulator running it (citywatch.ingest.simulator.Simulator)."""

    @property
    def devices(self) -> Sequence[SimDevice]: ...
    @property
    def start(self) -> float:
        """The simulated time the simulator starts at."""
    @property
    def rules(self) -> Rules: ...
    @property
    def rng(self) -> random.Random:
        """The random stream of normal readings (incident scripts get their own)."""
    def step_time(self, i: int, k: int) -> float:
        """The time of device `i`'s regular step `k`."""
    def interval(self, i: int) -> float:
        """Device `i`'s reporting interval, seconds."""
    def local_hour(self, t: float) -> float:
        """The local hour of day (0 <= h < 24, fractional) at time `t`."""
    def extra_reading(self, i: int, t: float) -> None:
        """Schedule an extra reading of device `i` at `t` between its regular ones (its fields: the
        running incident's `extra`)."""


class Incident:
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
        self.rules: tuple[str, ...] = ()  # empty: the rules the profile lists for the incident
        self.start = 0.0
        self.end = 0.0  # 0: the end of its last step
        self.extra: dict[str, Any] | None = None  # the fields of extra (burst) readings
        self.detail: dict[str, Any] = {}


def clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def rented_home(rng: random.Random, number: int, street: str) -> str:
    """A flat in a rented-housing compound (gas detectors, locks, smoke alarms)."""
    building, room = rng.randrange(1, 30), rng.randrange(1, 19) * 100 + rng.randrange(1, 5)
    compound = rng.choice(COMPOUNDS)
    return f"Room {room}, Bldg {building}, {compound} Compound, No. {number} {street}"


class SimKind:
    """The simulator profile of one kind; subclass it in the kind's file.

    Class attributes (read without a simulator, by make_devices and bad_messages):
    - `slots`: its positions in the cycle of kinds make_devices deals devices from (every kind's
      slots together must be 0 .. N-1, each once); the kind's share of devices is len(slots) / N.
    - `incidents`: incident name -> the rules that should fire, in the order incidents are scheduled;
      `script` makes each. `variants`: other names a script may log its incident under, with their
      rules (noise_night's script starting by day logs noise_day).
    - `valid_fields`: a valid reading's kind fields, the first one required (bad_messages builds bad
      input from it); `too_big`: a numeric field and a value over its limit (None: the kind has none);
      `bad_value`: fields with a value the schema refuses (None: no such case).
    - `battery_event`: the fields of the reading that reports a low battery (None: a normal reading).

    Normal readings stay clear of every default rule (no false alerts).
    """

    slots: ClassVar[tuple[int, ...]] = ()
    incidents: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    variants: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    valid_fields: ClassVar[Mapping[str, Any]] = {}
    too_big: ClassVar[tuple[str, float] | None] = None
    bad_value: ClassVar[Mapping[str, Any] | None] = None
    battery_event: ClassVar[Mapping[str, Any] | None] = None

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.devices = sim.devices

    # -- make_devices ----------------------------------------------------------------------------

    @staticmethod
    def address(rng: random.Random, number: int, street: str) -> str:
        """The device's address (before district and city)."""
        return f"No. {number} {street}"

    @staticmethod
    def attributes(rng: random.Random) -> dict[str, Any]:
        """The kind's own Device attributes (zone class, tenants, ...)."""
        return {}

    # -- the simulator ---------------------------------------------------------------------------

    def setup(self, i: int, device: SimDevice, rng: random.Random) -> None:
        """Set up device `i`'s state, drawing from the simulator's setup stream `rng`."""

    def normal(self, i: int, t: float) -> dict[str, Any]:
        """The kind fields of a normal reading of device `i` at `t` (draw from `sim.rng`)."""
        raise NotImplementedError

    def end_incident(self, i: int, name: str, t: float) -> None:
        """Device `i`'s incident `name` has sent its last scripted reading at `t`: resume normal state."""

    def candidates(self, name: str, found: list[int]) -> list[int]:
        """The devices (indices, shuffled) incident `name` may happen on, in the order to take them."""
        return found

    def script(self, name: str, i: int, k0: int, k_min: int, k_max: int, rng: random.Random) -> Incident:
        """Incident `name` on device `i` from regular step `k0` (drawn within k_min .. k_max by the
        simulator; a script may draw another from that range). Rules left empty: `incidents[name]`."""
        raise ValueError(f"unknown incident {name}")
