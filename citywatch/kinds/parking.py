"""Parking sensors in street bays, no-parking bays and fire lanes: occupied or free."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from citywatch.i18n import N_, NP_
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
)
