"""Silences and maintenance windows on the city operations dashboard: a table of the silences in
force or scheduled at the end of the dashboard's range, from the `silences` measurement the runner
writes (`citywatch.loop.silence_book.silence_line`: one point per silence at its start, `end_s` the
time it stops holding, rewritten when a person ends it early).

Its tags are the silence's single-valued matchers (device, grid, community, district, city, kind,
rule), so the dashboard's district / grid / kind variables narrow it; a silence that does not name
one of them (or names several values) is listed under "All" only.
"""

from __future__ import annotations

from collections.abc import Sequence

from citywatch.dashboards import queries as q
from citywatch.dashboards import widgets as w
from citywatch.dashboards.queries import Target
from citywatch.loop.silence_book import silence_line
from citywatch.loop.silences import Silence
from citywatch.model import Device

MEASUREMENT = "silences"
LOOKBACK = "90d"  # silences.max_days: a silence in force at the range's end started within this
AHEAD = "90d"  # scheduled ones start within this after it
WINDOW = (f"time > {q.RANGE_END_S}s - {LOOKBACK} AND time < {q.RANGE_END_S}s + {AHEAD} "
          f'AND "end_s" > {q.RANGE_END_S}')


def silences_in_force() -> Target:
    """Silences holding (or about to hold) webhooks at the end of the range; Time is the start."""
    query = ('SELECT "scope", "reason", "author", "end_s" * 1000 AS "ends", "covers_safety", "silence" '
             f'FROM "{MEASUREMENT}" WHERE {q._where(WINDOW, q.WHERE_VARS)}')
    return Target("A", query, ("time", "scope", "reason", "author", "ends", "covers_safety", "silence"))


def silences_panel() -> w.PanelSpec:
    panel = (w.table_panel("Silences and maintenance windows",
                      "Silences in force or scheduled at the end of the range (`citywatch silences`): alerts in "
                      "scope are detected and shown but their webhooks are held until the end. Life-safety alarms "
                      "are held only by a one-device silence (covers_safety).", "ends", desc=False)
             .override_by_name("Time", w.override(unit="dateTimeAsIso", displayName="starts"))
             .override_by_name("ends", w.override(unit="dateTimeAsIso"))
             .with_transformation(w.organize(order=("Time", "ends", "scope", "reason", "author", "covers_safety",
                                                     "silence"))))
    return w.PanelSpec(panel, [silences_in_force()], 24, 6)


def planted(devices: Sequence[Device], end: float) -> list[Silence]:
    """Silences for the simulated city (citywatch.dashboards.scenario): road works on the first noise
    device's grid, in force at `end` (2 h before to 4 h after); one ended early and one whose end
    passed (neither listed at `end`)."""
    grid = next(d.grid for d in devices if d.kind == "noise")

    def works(silence_id: str, matchers: dict[str, list[str]], start: float, stop: float) -> Silence:
        return Silence(id=silence_id, matchers=matchers, starts_at=end + start, ends_at=end + stop,
                       reason="road works", author="works-office", created_at=end - 3 * 3600.0)

    ended = works("si_ended_early", {"grid": [grid]}, -7200.0, 3600.0)
    ended.ended_at, ended.ended_by = end - 3600.0, "works-office"
    return [works("si_roadworks", {"grid": [grid], "kind": ["noise"]}, -7200.0, 4 * 3600.0), ended,
            works("si_expired", {"district": [devices[0].district]}, -5 * 3600.0, -600.0)]


def scenario_lines(devices: Sequence[Device], end: float) -> list[str]:
    return [silence_line(s) for s in planted(devices, end)]
