"""Recent readings per device, in memory, for the alert page's chart.

Fed by the runner's listeners with each committed batch (`add_output`): for every accepted reading,
the kind's main value (gas %LEL, noise LAeq, water depth, parking occupied as 0/1; a lock's event as
text). Bounded twice: the last `per_device` readings of each device (a deque), and at most `devices`
devices, the one that reported least recently forgotten first (an OrderedDict used as an LRU). At the
defaults (200 x 5,000) that is at most a million small tuples, about 80 MB in the worst case; a
device seen once costs one entry. Nothing here is stored: after a restart charts start empty, and
the alert's own values (in the store) still tell what opened it.

Cost on the hot path: one dict lookup, one move_to_end and one deque append per reading, once per
committed batch, on the event loop (measured in tests/test_console.py: well under 1 us per reading).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any

# The value a chart shows for each kind (the field the kind's main rule reads).
MAIN_FIELD: dict[str, str] = {"gas": "lel_pct", "noise": "laeq_db", "water": "depth_cm", "parking": "occupied",
                              "lock": "event"}
UNITS: dict[str, str] = {"gas": "% LEL", "noise": "dB(A)", "water": "cm", "parking": "", "lock": ""}

Point = tuple[float, float | str]  # (event time, value: a number, or a lock's event)


def main_value(kind: str, values: dict[str, Any]) -> float | str | None:
    """The kind's main value of one reading, or None when it has none."""
    value = values.get(MAIN_FIELD.get(kind, ""))
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return value[:40]
    return None


class RecentReadings:
    """The last `per_device` readings of the last `devices` devices that reported."""

    def __init__(self, per_device: int = 200, devices: int = 5000) -> None:
        self.per_device = per_device
        self.max_devices = devices
        self._series: OrderedDict[str, deque[Point]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._series)

    @property
    def enabled(self) -> bool:
        return self.per_device > 0 and self.max_devices > 0

    def add(self, device_id: str, ts: float, value: float | str) -> None:
        series = self._series.get(device_id)
        if series is None:
            series = self._series[device_id] = deque(maxlen=self.per_device)
            if len(self._series) > self.max_devices:
                self._series.popitem(last=False)
        else:
            self._series.move_to_end(device_id)
        series.append((ts, value))

    def add_all(self, readings: Iterable[tuple[str, str, float, dict[str, Any]]]) -> None:
        """(device id, kind, event time, values) of accepted readings."""
        if not self.enabled:
            return
        for device_id, kind, ts, values in readings:
            value = main_value(kind, values)
            if value is not None:
                self.add(device_id, ts, value)

    def add_output(self, out: Any) -> None:
        """The runner's listener: the readings a committed batch accepted (pipeline.Output)."""
        if self.enabled and out.accepted:
            self.add_all((r.device_id, r.kind, r.ts, r.values) for r, _ in out.accepted)

    def series(self, device_id: str) -> list[Point]:
        """This device's recent readings, oldest first (a copy), sorted by event time."""
        return sorted(self._series.get(device_id, ()), key=lambda p: p[0])
