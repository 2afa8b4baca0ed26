"""Smart gas detectors in rented housing and restaurants: combustible gas in %LEL (and CO).

Alarm levels after GB/T 50493-2019: level-1 (low) and level-2 (high). `gas_level` is a life-safety
rule. Gas leaks build up over minutes: a step faster than 40 %LEL a minute is a suspected sensor fault.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationInfo, field_validator

from citywatch.i18n import N_, NP_
from citywatch.ingest.simkind import Incident, Sim, SimDevice, SimKind, clamp, rented_home
from citywatch.kindspec import KindSpec, Measure, PayloadField, Threshold
from citywatch.section import Section, below

if TYPE_CHECKING:  # the dashboard and report modules load when a dashboard or report is made
    from citywatch.charts import SensorReport
    from citywatch.dashboards.queries import Target
    from citywatch.dashboards.widgets import RowSpec


class GasRules(Section):
    """`rules.gas`: the alarm levels, % of the lower explosive limit."""

    level1_pct: float = Field(25.0, gt=0, le=100)
    level2_pct: float = Field(50.0, gt=0, le=100, validate_default=True)  # checked against the field above
    hysteresis_pct: float = Field(5.0, ge=0)

    @field_validator("level2_pct")
    @classmethod
    def _levels_rise(cls, value: float, info: ValidationInfo) -> float:
        below("rules.gas", "level1_pct", info, "level2_pct", value)
        return value


class GasSlowRiseParams(Section):
    """`rules.learned.gas_slow_rise`: gas rising below the alarm level (CUSUM on the seasonal baseline)."""

    z_allowance: float = Field(1.0, ge=0)  # CUSUM allowance k, in spreads
    cusum_h: float = Field(20.0, gt=0)  # CUSUM decision level, in spreads
    min_excess_pct: float = Field(2.0, ge=0)  # %LEL above this device's normal for the hour
    min_slope_pct_h: float = Field(1.0, ge=0)  # and still rising at least this fast


MIN_SPREAD = 0.1  # %LEL: about the resolution detectors report at


# -- its InfluxDB queries (dashboard panels and report figures) ------------------------------

def gas_by_district() -> Target:
    from citywatch.dashboards import queries as ql

    return ql.per_interval("gas", "max", "lel_pct", "lel_pct", "district")


def gas_top_devices(n: int = 10) -> Target:
    from citywatch.dashboards import queries as ql

    q = (f'SELECT top("lel_pct", "device", {n}) AS "lel_pct", "district", "grid" FROM "gas" '
         f'WHERE {ql.where(ql.TIME_FILTER, ql.WHERE_VARS)}')
    return ql.Target("A", q, ("device", "lel_pct", "district", "grid"))


def dashboard_row() -> RowSpec:
    from grafana_foundation_sdk.builders import bargauge
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.models import common as cm

    from citywatch.dashboards.widgets import PanelSpec, RowSpec, threshold_steps, timeseries_panel

    gas = GasRules()
    return RowSpec("Gas", [
        PanelSpec(timeseries_panel("Gas %LEL by district", f"Highest %LEL per district; level-1 alarm at "
                                   f"{gas.level1_pct:g}%, level-2 at {gas.level2_pct:g}% (GB/T 50493-2019).",
                                   "percent", ((None, "green"), (gas.level1_pct, "orange"), (gas.level2_pct, "red"))),
                  [gas_by_district()], 16, 8),
        PanelSpec(bargauge.Panel().title("Highest gas readings").description("Top devices by %LEL in the range.")
                  .unit("percent").min(0).max(100)
                  .thresholds(threshold_steps((None, "green"), (gas.level1_pct, "orange"), (gas.level2_pct, "red")))
                  .orientation(cm.VizOrientation.HORIZONTAL).display_mode(cm.BarGaugeDisplayMode.BASIC)
                  .reduce_options(cb.ReduceDataOptions().values(True).calcs([]).fields("/^lel_pct$/")),
                  [gas_top_devices()], 8, 8),
    ])




def report(r: SensorReport) -> list[str]:
    """Its part of `citywatch report`: highest %LEL by district against the alarm levels."""
    from citywatch.charts import line_chart, num, series

    _, gas = r.tr.gettext, r.rules.section(GasRules)
    lines = [(gas.level1_pct, _("level 1 ({limit}%)", limit=num(gas.level1_pct)), "#f59e0b"),
             (gas.level2_pct, _("level 2 ({limit}%)", limit=num(gas.level2_pct)), "#dc2626")]
    return [r.heading(_("Gas: highest %LEL by district")),
            line_chart("chart-gas", _("Gas %LEL by district"), series(r.rows["gas"], "lel_pct", "district"),
                       r.start, r.end, r.tz, "%LEL", lines, y_min=0, tr=r.tr)]


class GasSim(SimKind):
    """Simulated gas detectors in rented flats: a low baseline with a bump at lunch and dinner (cooking),
    CO on some; a leak builds up over minutes past level-2, holds, and disperses."""

    slots = (0, 7, 12, 15)
    incidents = {"gas_leak": ("gas_level",)}
    valid_fields = {"lel_pct": 1.2}
    too_big = ("lel_pct", 150.0)

    def __init__(self, sim: Sim) -> None:
        super().__init__(sim)
        self.rules = sim.rules.section(GasRules)
        self._random = sim.rng.random
        self._hour = sim.local_hour
        self._level = [(0.0, 0.0, False)] * len(sim.devices)  # per device: baseline, cooking bump (%LEL), has CO

    @staticmethod
    def address(rng: random.Random, number: int, street: str) -> str:
        return rented_home(rng, number, street)

    def setup(self, i: int, device: SimDevice, rng: random.Random) -> None:
        self._level[i] = (rng.uniform(0.2, 1.2), rng.uniform(0.3, 1.0), rng.random() < 0.3)

    def normal(self, i: int, t: float) -> dict[str, Any]:
        base, cooking, co = self._level[i]
        h = self._hour(t)
        rhythm = 0.9 * math.exp(-((h - 11.8) ** 2) / 0.8) + 1.1 * math.exp(-((h - 18.3) ** 2) / 1.0)
        lel = base + cooking * rhythm + (self._random() - 0.5) * 0.6
        fields: dict[str, Any] = {"lel_pct": round(clamp(lel, 0.0, 3.0), 1)}
        if co:
            fields["co_ppm"] = round(self._random() * 4.0, 1)
        return fields

    def script(self, name: str, i: int, k0: int, k_min: int, k_max: int, rng: random.Random) -> Incident:
        if name != "gas_leak":
            return super().script(name, i, k0, k_min, k_max, rng)
        uniform = rng.uniform
        up, hold, down = rng.randint(8, 12), rng.randint(3, 5), rng.randint(6, 10)
        inc = Incident(name, i, k0, up + hold + down)
        base, _, co = self._level[i]
        peak = min(95.0, self.rules.level2_pct + uniform(8.0, 25.0))
        for s in range(inc.n):
            if s < up:
                v = base + (peak - base) * ((s + 1) / up) ** 1.5
            elif s < up + hold:
                v = peak + uniform(-2.0, 2.0)
            else:
                frac = (s - up - hold + 1) / down
                v = peak * (1.0 - frac) ** 2 + base * frac
            fields: dict[str, Any] = {"lel_pct": round(clamp(v, 0.0, 100.0), 1)}
            if co:
                fields["co_ppm"] = round(uniform(0.0, 4.0), 1)
            inc.values[s] = fields
        inc.detail = {"peak": max(v["lel_pct"] for v in inc.values if v)}
        return inc


SPEC = KindSpec(
    name="gas",
    label=NP_("kind", "gas"),
    payload=(
        PayloadField(NP_("reading field", "lel_pct"), float,
                     "combustible gas, % of the lower explosive limit", ge=0, le=100),
        PayloadField(NP_("reading field", "co_ppm"), float,
                     "carbon monoxide, ppm", required=False, ge=0, le=10000),
    ),
    chart_field="lel_pct",
    chart_unit="% LEL",
    measure=Measure("lel_pct", MIN_SPREAD, max_step_per_min=40.0, rest_value=0.0),
    settings=GasRules,
    learned_settings={"gas_slow_rise": GasSlowRiseParams},
    thresholds=(Threshold("gas.level1_pct", "level1_pct", below="gas.level2_pct"),
                Threshold("gas.level2_pct", "level2_pct")),
    rules="citywatch.detectors.gas",
    safety_rules=frozenset({"gas_level"}),
    hazard_group=(NP_("hazard group", "gas"), ("gas_*",)),
    rule_labels=(NP_("rule", "gas_level"), NP_("rule", "gas_slow_rise")),
    messages={
        "gas_level": N_("combustible gas at {value}% LEL (level-{level} alarm at {threshold}%)"),
        "gas_slow_rise": N_("gas rising below the alarm level: {value}% LEL, {excess} above this detector's "
                            "normal for the hour"),
    },
    dashboard_row=dashboard_row,
    report_figures={"gas": gas_by_district},
    report=report,


    simulator=GasSim,
)
