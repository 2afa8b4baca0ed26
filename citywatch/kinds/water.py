"""Waterlogging gauges at underpasses and low roads: water depth above the road in cm.

Levels light, moderate, severe (vehicles stall above about 25 cm); `water_depth` is a life-safety
rule. Water rises over minutes: a step faster than 50 cm a minute is a suspected sensor fault.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationInfo, field_validator

from citywatch.i18n import N_, NP_
from citywatch.ingest.simkind import Incident, Sim, SimKind
from citywatch.kindspec import KindSpec, Measure, PayloadField, Threshold
from citywatch.section import Section, below

if TYPE_CHECKING:  # the dashboard and report modules load when a dashboard or report is made
    from citywatch.charts import SensorReport
    from citywatch.dashboards.queries import Target
    from citywatch.dashboards.widgets import RowSpec


class WaterRules(Section):
    """`rules.water`: depth levels, cm above the road."""

    light_cm: float = Field(3.0, ge=0)
    moderate_cm: float = Field(10.0, ge=0, validate_default=True)  # checked against the field above
    severe_cm: float = Field(25.0, ge=0, validate_default=True)  # checked against the field above
    hysteresis_cm: float = Field(1.0, ge=0)

    @field_validator("moderate_cm")
    @classmethod
    def _moderate_above_light(cls, value: float, info: ValidationInfo) -> float:
        below("rules.water", "light_cm", info, "moderate_cm", value)
        return value

    @field_validator("severe_cm")
    @classmethod
    def _severe_above_moderate(cls, value: float, info: ValidationInfo) -> float:
        below("rules.water", "moderate_cm", info, "severe_cm", value)
        return value


class WaterRiseParams(Section):
    """`rules.learned.water_rise`: water rising fast before it reaches a level."""

    rise_cm_per_10min: float = Field(5.0, gt=0)
    min_span_s: float = Field(240.0, gt=0)  # the rise is measured over at least this span
    window_s: float = Field(600.0, gt=0)
    z: float = Field(6.0, gt=0)  # and is this many spreads beyond the gauge's normal 10-min change
    warmup: int = Field(120, ge=1)  # readings before it may alert


MIN_SPREAD = 0.5  # cm


# -- its InfluxDB queries (dashboard panels and report figures) ------------------------------

def water_depth() -> Target:
    from citywatch.dashboards import queries as ql

    return ql.per_interval("water", "max", "depth_cm", "depth_cm", "district")


def water_rise() -> Target:
    """Fastest rise per district: derivative per device (cm per 10 min), then the max of those."""
    from citywatch.dashboards import queries as ql

    inner = (f'SELECT derivative(max("depth_cm"), 10m) AS "rise_cm_10min" FROM "water" '
             f'WHERE {ql.where(ql.TIME_FILTER, ql.WHERE_VARS)} GROUP BY time({ql.INTERVAL}), "device", "district"')
    q = (f'SELECT max("rise_cm_10min") AS "rise_cm_10min" FROM ({inner}) WHERE {ql.TIME_FILTER} '
         f'GROUP BY time({ql.INTERVAL}), "district" fill(none)')
    return ql.Target("A", q, ("time", "district", "rise_cm_10min"), "time_series", "$tag_district")


def dashboard_row() -> RowSpec:
    from citywatch.dashboards.widgets import PanelSpec, RowSpec, timeseries_panel

    water = WaterRules()
    return RowSpec("Water", [
        PanelSpec(timeseries_panel("Water depth by district", f"Deepest ponding per district: light from "
                                   f"{water.light_cm:g} cm, moderate {water.moderate_cm:g}, severe "
                                   f"{water.severe_cm:g}.", "suffix: cm",
                                   ((None, "green"), (water.light_cm, "yellow"), (water.moderate_cm, "orange"),
                                    (water.severe_cm, "red"))),
                  [water_depth()], 12, 8),
        PanelSpec(timeseries_panel("Water rise rate", "Fastest rise per district, cm per 10 min (early warning).",
                                   "suffix: cm/10 min"), [water_rise()], 12, 8),
    ])






def report(r: SensorReport) -> list[str]:
    """Its part of `citywatch report`: deepest ponding against the levels; fastest rise."""
    from citywatch.charts import line_chart, series

    _, water, tr = r.tr.gettext, r.rules.section(WaterRules), r.tr
    levels = [(water.light_cm, tr.pgettext("water level", "light"), "#ca8a04"),
              (water.moderate_cm, tr.pgettext("water level", "moderate"), "#f59e0b"),
              (water.severe_cm, tr.pgettext("water level", "severe"), "#dc2626")]
    return [r.heading(_("Water: deepest ponding by district")),
            line_chart("chart-water", _("Water depth by district"), series(r.rows["water"], "depth_cm", "district"),
                       r.start, r.end, r.tz, _("cm"), levels, y_min=0, tr=tr),
            r.heading(_("Water: fastest rise (cm per 10 min) by district")),
            line_chart("chart-water-rise", _("Water rise rate"),
                       series(r.rows["water_rise"], "rise_cm_10min", "district"), r.start, r.end, r.tz,
                       _("cm/10 min"), tr=tr)]


class WaterSim(SimKind):
    """Simulated waterlogging gauges: a dry road with now and then a splash; a storm floods the gauge
    past the severe level and drains."""

    slots = (2, 10, 17)
    incidents = {"water_storm": ("water_depth",)}
    valid_fields = {"depth_cm": 0.0}
    too_big = ("depth_cm", 2000.0)

    def __init__(self, sim: Sim) -> None:
        super().__init__(sim)
        self.rules = sim.rules.section(WaterRules)
        self._rng = sim.rng

    @staticmethod
    def address(rng: random.Random, number: int, street: str) -> str:
        underpass = rng.random() < 0.4
        return f"{'Underpass near ' if underpass else ''}No. {number} {street}"

    def normal(self, i: int, t: float) -> dict[str, Any]:
        rng = self._rng
        return {"depth_cm": round(rng.random() * 0.8, 1) if rng.random() < 0.03 else 0.0}

    def script(self, name: str, i: int, k0: int, k_min: int, k_max: int, rng: random.Random) -> Incident:
        if name != "water_storm":
            return super().script(name, i, k0, k_min, k_max, rng)
        rise, hold, drain = rng.randint(6, 12), rng.randint(3, 6), rng.randint(10, 20)
        inc = Incident(name, i, k0, rise + hold + drain)
        peak = self.rules.severe_cm + rng.uniform(3.0, 15.0)
        for s in range(inc.n):
            if s < rise:
                v = peak * ((s + 1) / rise) ** 1.2
            elif s < rise + hold:
                v = peak + rng.uniform(-1.5, 1.5)
            else:
                v = peak * (1.0 - (s - rise - hold + 1) / drain) ** 1.5
            inc.values[s] = {"depth_cm": round(max(0.0, v), 1)}
        inc.detail = {"peak": max(v["depth_cm"] for v in inc.values if v)}
        return inc


SPEC = KindSpec(
    name="water",
    label=NP_("kind", "water"),
    payload=(PayloadField(NP_("reading field", "depth_cm"), float, "water depth above the road, cm", ge=0, le=1000),),
    chart_field="depth_cm",
    chart_unit="cm",
    measure=Measure("depth_cm", MIN_SPREAD, max_step_per_min=50.0, rest_value=0.0),
    settings=WaterRules,
    learned_settings={"water_rise": WaterRiseParams},
    thresholds=(Threshold("water.light_cm", "light_cm", below="water.moderate_cm"),
                Threshold("water.moderate_cm", "moderate_cm", below="water.severe_cm"),
                Threshold("water.severe_cm", "severe_cm")),
    rules="citywatch.detectors.water",
    safety_rules=frozenset({"water_depth"}),
    hazard_group=(NP_("hazard group", "water"), ("water_*",)),
    rule_labels=(NP_("rule", "water_depth"), NP_("rule", "water_fast_rise")),
    messages={
        "water_depth": N_("{level} waterlogging: {value} cm (from {threshold} cm)"),
        "water_fast_rise": N_("water rising fast: {value} cm, up {rate} cm per 10 min"),
    },
    words={"level": ("water level", frozenset({NP_("water level", "light"), NP_("water level", "moderate"),
                                               NP_("water level", "severe")}))},
    dashboard_row=dashboard_row,
    report_figures={"water": water_depth, "water_rise": water_rise},
    report=report,


    simulator=WaterSim,
)
