"""A registered device flooding us with messages we cannot use: a device health alert.

Counts dead letters per registered device per minute (received time). Past the limit the device is
flooding: one `device_flooding` alert (the engine keeps it one alert however long it lasts), which
clears after a whole minute under the limit. Only bad messages are counted, so normal traffic pays
nothing; memory holds only devices that sent a bad message within the last minute.
"""

from __future__ import annotations

from citywatch.model import Finding

FLOODING_RULE = "device_flooding"


class FloodWatch:
    def __init__(self, limit_per_min: int, window_s: float = 60.0) -> None:
        self.limit = limit_per_min
        self.window_s = window_s
        self.windows: dict[str, list[float]] = {}  # device id -> [window start, dead letters in it]
        self.flooding: dict[str, float] = {}  # device id -> last time it was over the limit

    def dead_letter(self, device_id: str, at: float) -> Finding | None:
        """Count one dead letter; the opening finding when this one crosses the limit."""
        window = self.windows.get(device_id)
        if window is None or at - window[0] >= self.window_s:
            window = self.windows[device_id] = [at, 0.0]
        window[1] += 1
        if window[1] <= self.limit:
            return None
        self.flooding[device_id] = at
        if window[1] != self.limit + 1:
            return None
        return Finding(FLOODING_RULE, True, "warning", int(window[1]), float(self.limit),
                       f"more than {self.limit} unusable messages within {self.window_s:g} s "
                       "(see citywatch deadletters)")

    def quiet(self, now: float) -> list[str]:
        """Devices that were flooding and have been under the limit for a whole window since."""
        calm = [d for d, last in self.flooding.items() if now - last >= self.window_s]
        for device_id in calm:
            del self.flooding[device_id]
        if len(self.windows) > 2 * len(self.flooding) + 64:
            self.windows = {d: w for d, w in self.windows.items() if now - w[0] < self.window_s}
        return calm
