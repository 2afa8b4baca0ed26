"""Parking sensors in street bays, no-parking bays and fire lanes: occupied or free."""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

from pydantic import Field

from citywatch.i18n import N_, NP_
from citywatch.ingest.simkind import Incident, Sim, SimDevice, SimKind
from citywatch.kindspec import KindSpec, PayloadField
from citywatch.section import Section

if TYPE_CHECKING:  # the dashboard and report modules load when a dashboard or report is made
    from citywatch.charts import SensorReport
    from citywatch.dashboards.queries import Target
    from citywatch.dashboards.widgets import RowSpec


class ParkingRules(Section):
    """`rules.parking`: the longest stay where a bay sets none (`max_stay_min` in the registry)."""

    max_stay_min: float = Field(120.0, gt=0)


class ParkingParams(Section):
    """`rules.learned.parking`: a sensor stuck on one state, or flapping between them."""

    stuck_min_h: float = Field(24.0, gt=0)  # no state change for at least this long ...
    stuck_expected_changes: float = Field(12.0, gt=0)  # ... when this many were expected
    flap_changes: int = Field(8, ge=3)  # this many state changes ...
    flap_window_s: float = Field(600.0, gt=0)  # ... within this long is a flapping sensor
    warmup_changes: int = Field(20, ge=1)  # state changes seen before the stuck detector may alert


# -- its InfluxDB queries (dashboard panels and report figures) ------------------------------

def _bays(ref_id: str, alias: str, *conditions: str) -> Target:
    from citywatch.dashboards import queries as ql

    where = ql.where(ql.TIME_FILTER, ql.WHERE_VARS, *conditions)
    inner = f'SELECT last("occupied") AS "bay" FROM "parking" WHERE {where} GROUP BY time({ql.INTERVAL}), "device"'
    q = f'SELECT count("bay") AS "{alias}" FROM ({inner}) WHERE {ql.TIME_FILTER} GROUP BY time({ql.INTERVAL}) fill(0)'
    return ql.Target(ref_id, q, ("time", alias), "time_series")


def parking_occupancy() -> list[Target]:
    """Bays reporting occupied / bays reporting, per interval (Grafana divides the two)."""
    return [_bays("A", "occupied_bays", '"occupied" = true'), _bays("B", "reporting_bays")]


def parking_overstays() -> Target:
    from citywatch.dashboards import queries as ql

    cond = ql.where(ql.matches("rule", "/^parking_(overstay|forbidden)$/"), ql.matches("transition", ql.OPENINGS))
    q = ('SELECT "value" AS "stayed_min", "threshold" AS "max_stay_min", "rule", "status", "device", "district", '
         f'"grid", "alert_id" FROM "alerts" WHERE {ql.alerts_where(cond)}')
    return ql.Target("A", q, ("time", "stayed_min", "max_stay_min", "rule", "device", "district", "grid", "alert_id"))


def dashboard_row() -> RowSpec:
    from citywatch.dashboards.widgets import PanelSpec, RowSpec, organize, ratio, table_panel, timeseries_panel

    return RowSpec("Parking", [
        PanelSpec(timeseries_panel("Parking occupancy", "Bays reporting occupied / bays reporting, per interval.",
                                   "percentunit").min(0).max(1)
                  .transformations(ratio("occupied_bays", "reporting_bays", "occupancy")),
                  parking_occupancy(), 12, 8),
        PanelSpec(table_panel("Overstays and no-parking", "Parking alerts opened in the range: minutes stayed "
                              "against the bay's limit; occupied no-parking bays.")
                  .with_transformation(organize(exclude=("alert_id",))),
                  [parking_overstays()], 12, 8),
    ])




def report(r: SensorReport) -> list[str]:
    """Its part of `citywatch report`: occupancy of the bays reporting."""
    from citywatch.charts import line_chart

    _ = r.tr.gettext
    occupied = {row["time"]: row["occupied_bays"] for row in r.rows["parking"] if row.get("_ref") == "A"}
    reporting = {row["time"]: row["reporting_bays"] for row in r.rows["parking"] if row.get("_ref") == "B"}
    occupancy = [(float(t), 100.0 * occupied.get(t, 0) / n) for t, n in sorted(reporting.items()) if n]
    return [r.heading(_("Parking: occupancy of reporting bays")),
            line_chart("chart-parking", _("Parking occupancy"), {_("occupancy"): occupancy}, r.start, r.end, r.tz,
                       "%", y_min=0, y_max=100, tr=r.tr)]


MAX_STAYS = (60.0, 90.0, 120.0, 120.0, 180.0, 240.0)  # simulated bays' limits, minutes


class ParkingSim(SimKind):
    """Simulated bays: stays of about half an hour, well under the bay's limit, free spells longer at
    night; 5% are no-parking bays that stay free. Incidents: an overstay, a car in a no-parking bay."""

    slots = (3, 6, 8, 13, 14, 19)
    incidents = {"parking_overstay": ("parking_overstay",), "parking_forbidden": ("parking_forbidden",)}
    valid_fields = {"occupied": False}

    def __init__(self, sim: Sim) -> None:
        super().__init__(sim)
        self.rules = sim.rules.section(ParkingRules)
        self._rng = sim.rng
        self._hour = sim.local_hour
        n = len(sim.devices)
        self._occupied = [False] * n
        self._next_change = [0.0] * n  # when the bay's state changes next

    @staticmethod
    def address(rng: random.Random, number: int, street: str) -> str:
        return f"Bay {rng.randrange(1, 120)}, No. {number} {street}"

    @staticmethod
    def attributes(rng: random.Random) -> dict[str, Any]:
        no_parking = rng.random() < 0.05
        return {"no_parking": no_parking, "max_stay_min": None if no_parking else rng.choice(MAX_STAYS)}

    def setup(self, i: int, device: SimDevice, rng: random.Random) -> None:
        if not device.no_parking:
            self._occupied[i] = rng.random() < 0.5
            self._next_change[i] = self.sim.start + rng.uniform(0, 45 * 60)

    def _free_for(self, t: float) -> float:
        h = self._hour(t)
        mean = 40 * 60 if 7.0 <= h < 21.0 else 200 * 60
        return self._rng.expovariate(1.0 / mean) + 60.0

    def normal(self, i: int, t: float) -> dict[str, Any]:
        device = self.devices[i]
        if device.no_parking:
            return {"occupied": False}
        if t >= self._next_change[i]:
            occupied = not self._occupied[i]
            self._occupied[i] = occupied
            if occupied:
                max_stay_s = (device.max_stay_min or self.rules.max_stay_min) * 60.0
                stay = min(self._rng.expovariate(1.0 / (35 * 60)) + 120.0, 0.8 * max_stay_s - self.sim.interval(i))
                self._next_change[i] = t + max(stay, 60.0)
            else:
                self._next_change[i] = t + self._free_for(t)
        return {"occupied": self._occupied[i]}

    def end_incident(self, i: int, name: str, t: float) -> None:
        if name.startswith("parking"):
            self._occupied[i] = False
            self._next_change[i] = t + self._free_for(t)

    def candidates(self, name: str, found: list[int]) -> list[int]:
        devices = self.devices
        if name == "parking_overstay":  # short-stay bays first, so the overstay ends sooner
            return sorted((i for i in found if not devices[i].no_parking), key=lambda i: devices[i].max_stay_min or 1e9)
        return [i for i in found if devices[i].no_parking]

    def script(self, name: str, i: int, k0: int, k_min: int, k_max: int, rng: random.Random) -> Incident:
        if name == "parking_overstay":
            iv = self.sim.interval(i)
            max_stay_s = (self.devices[i].max_stay_min or self.rules.max_stay_min) * 60.0
            occupied_steps = int(math.ceil((max_stay_s + rng.uniform(10.0, 30.0) * 60.0) / iv)) + 1
        elif name == "parking_forbidden":
            occupied_steps = rng.randint(4, 12)
        else:
            return super().script(name, i, k0, k_min, k_max, rng)
        inc = Incident(name, i, k0, occupied_steps + 2)
        inc.values = [{"occupied": False}] + [{"occupied": True}] * occupied_steps + [{"occupied": False}]
        inc.detail = {"occupied_min": round((occupied_steps - 1) * self.sim.interval(i) / 60.0, 1)}
        return inc


SPEC = KindSpec(
    name="parking",
    label=NP_("kind", "parking"),
    payload=(PayloadField("occupied", bool, "a vehicle is in the bay"),),
    device_attributes=("max_stay_min", "no_parking"),
    chart_field="occupied",
    settings=ParkingRules,
    learned_settings={"parking": ParkingParams},
    rules="citywatch.detectors.parking",
    hazard_group=(NP_("hazard group", "parking"), ("parking_*",)),
    rule_labels=(NP_("rule", "parking_overstay"), NP_("rule", "parking_forbidden"), NP_("rule", "parking_stuck"),
                 NP_("rule", "parking_flapping")),
    messages={
        "parking_overstay": N_("bay occupied for {value} min (allowed {threshold} min)"),
        "parking_forbidden": N_("vehicle in a no-parking bay or fire lane"),
        "parking_stuck": N_("sensor fault: parking sensor reported {state} without a change for {hours} h, "
                            "unusual for this bay"),
        "parking_flapping": N_("sensor fault: parking sensor flapping, {changes} changes within {minutes} min"),
    },
    words={"state": ("parking state", frozenset({NP_("parking state", "occupied"), NP_("parking state", "free")}))},
    dashboard_row=dashboard_row,
    report_figures={"parking": parking_occupancy},
    report=report,


    simulator=ParkingSim,
)
