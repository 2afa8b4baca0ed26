"""Recent readings per device, in memory, for the alert page's chart.

Fed by the runner's listeners with each committed batch (`add_output`): for every accepted reading,
the kind's main value (its chart field: gas %LEL, noise LAeq, water depth, parking occupied as 0/1,
a lock's event as its index among the kind's codes). Each device's last `per_device` readings sit in a ring of two float
arrays (16 bytes a reading, allocated once per device and reused when the device is forgotten).

Which devices: the `devices` that reported most recently (an LRU), and besides them, up to `devices`
devices with an unfinished alert, which are never pushed out by other devices' traffic: in a city
of a million devices the recent ones change every second, but the device whose alert someone opens
keeps its readings from the moment its alert opened. At the defaults (200 x 5,000, twice) that is at
most 32 MB. Nothing is stored: after a restart charts start empty, and the alert's own values (in
the store) still tell what opened it.

Cost on the hot path: once per committed batch, about a microsecond per reading on the event loop
(tests/test_console.py measures it).
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, get_args

from citywatch.kinds import specs
from citywatch.model import TERMINAL_STATUSES

# The value a chart shows for each kind (the field the kind's main rule reads).
MAIN_FIELD: dict[str, str] = {name: kind.chart_field for name, kind in specs().items()}
UNITS: dict[str, str] = {name: kind.chart_unit for name, kind in specs().items()}
# A coded chart field (a Literal, e.g. a lock's event): its codes in declared order, each stored as its index.
CODES: dict[str, tuple[str, ...]] = {name: get_args(kind.chart_type) for name, kind in specs().items()
                                     if get_args(kind.chart_type)}
_CODE_INDEX = {name: {code: float(i) for i, code in enumerate(codes)} for name, codes in CODES.items()}

Point = tuple[float, float]  # (event time, value)


def main_value(kind: str, values: dict[str, Any]) -> float | None:
    """The kind's main value of one reading as a number, or None when it has none."""
    value = values.get(MAIN_FIELD.get(kind, ""))
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return _CODE_INDEX.get(kind, {}).get(value)
    return None


def code_of(kind: str, value: float) -> str:
    """The code (e.g. the lock event) a stored value of a coded kind stands for."""
    codes = CODES.get(kind, ())
    index = int(value)
    return codes[index] if 0 <= index < len(codes) else "?"


class _Ring:
    """The last `capacity` (time, value) pairs."""

    __slots__ = ("ts", "values", "next", "count")

    def __init__(self, capacity: int) -> None:
        self.ts = array("d", bytes(8 * capacity))
        self.values = array("d", bytes(8 * capacity))
        self.next = 0
        self.count = 0

    def add(self, ts: float, value: float) -> None:
        i = self.next
        self.ts[i] = ts
        self.values[i] = value
        self.next = (i + 1) % len(self.ts)
        if self.count < len(self.ts):
            self.count += 1

    def clear(self) -> _Ring:
        self.next = self.count = 0
        return self

    def points(self) -> list[Point]:
        cap = len(self.ts)
        first = (self.next - self.count) % cap
        return [(self.ts[(first + k) % cap], self.values[(first + k) % cap]) for k in range(self.count)]


class RecentReadings:
    """The last `per_device` readings of the last `devices` devices that reported, and of up to
    `devices` devices with an unfinished alert."""

    def __init__(self, per_device: int = 200, devices: int = 5000) -> None:
        self.per_device = per_device
        self.max_devices = devices
        self._recent: OrderedDict[str, _Ring] = OrderedDict()  # least recently reporting first
        self._alerting: dict[str, _Ring] = {}  # devices with an unfinished alert: kept
        self._open: dict[str, set[str]] = {}  # device -> its unfinished alerts

    def __len__(self) -> int:
        return len(self._recent) + len(self._alerting)

    @property
    def enabled(self) -> bool:
        return self.per_device > 0 and self.max_devices > 0

    def _ring(self) -> _Ring:
        """A ring for a newly seen device: the least recently reporting one's, when the LRU is full."""
        if len(self._recent) >= self.max_devices:
            return self._recent.popitem(last=False)[1].clear()
        return _Ring(self.per_device)

    def add(self, device_id: str, ts: float, value: float) -> None:
        ring = self._alerting.get(device_id)
        if ring is None:
            ring = self._recent.get(device_id)
            if ring is None:
                ring = self._recent[device_id] = self._ring()
            else:
                self._recent.move_to_end(device_id)
        ring.add(ts, value)

    def alert(self, device_id: str, alert_id: str, finished: bool) -> None:
        """An alert of the device changed: while it has one unfinished, its readings are kept."""
        if not self.enabled:
            return
        mine = self._open.get(device_id)
        if finished:
            if mine is not None:
                mine.discard(alert_id)
                if not mine:
                    del self._open[device_id]
                    ring = self._alerting.pop(device_id, None)
                    if ring is not None:  # back among the others, as the most recent
                        self._recent[device_id] = ring
                        if len(self._recent) > self.max_devices:
                            self._recent.popitem(last=False)
            return
        if mine is None:
            if len(self._open) >= self.max_devices:
                return  # more alerting devices than we keep: this one stays among the recent ones
            mine = self._open[device_id] = set()
            ring = self._recent.pop(device_id, None)
            self._alerting[device_id] = ring if ring is not None else _Ring(self.per_device)
        mine.add(alert_id)

    def add_all(self, readings: Iterable[tuple[str, str, float, dict[str, Any]]]) -> None:
        """(device id, kind, event time, values) of accepted readings. `add` inlined: this runs for every
        reading the runner commits."""
        if not self.enabled:
            return
        alerting, recent, field_of, new_ring = self._alerting, self._recent, MAIN_FIELD, self._ring
        for device_id, kind, ts, values in readings:
            raw = values.get(field_of.get(kind, ""))
            if raw.__class__ is float:
                value = raw
            else:
                found = main_value(kind, values)
                if found is None:
                    continue
                value = found
            ring = alerting.get(device_id)
            if ring is None:
                ring = recent.get(device_id)
                if ring is None:
                    ring = recent[device_id] = new_ring()
                else:
                    recent.move_to_end(device_id)
            i = ring.next
            ring.ts[i] = ts
            ring.values[i] = value
            ring.next = (i + 1) % len(ring.ts)
            if ring.count < len(ring.ts):
                ring.count += 1

    def add_output(self, out: Any) -> None:
        """The runner's listener: the alerts that changed, then the readings a committed batch accepted
        (so the reading that opened an alert is kept with it)."""
        if not self.enabled:
            return
        for t in out.transitions:
            self.alert(t.alert.device_id, t.alert_id, t.alert.status in TERMINAL_STATUSES)
        if out.accepted:
            self.add_all((r.device_id, r.kind, r.ts, r.values) for r, _ in out.accepted)

    def series(self, device_id: str) -> list[Point]:
        """This device's recent readings, sorted by event time (a copy)."""
        ring = self._alerting.get(device_id) or self._recent.get(device_id)
        return sorted(ring.points()) if ring is not None else []
