"""Residential smoke alarms in rented housing: obscuration in % per metre and the alarm flag, with
`test`, `tamper` and `low_battery` events.

A photoelectric alarm sounds at about 2-4 %/m (GB 20517-2006 / EN 14604 response range).
`smoke_alarm` and `smoke_tamper` are life-safety rules. No plausibility limit: a flaming fire fills
a room with smoke in seconds. In clean air the chamber reads about 0 (a constant 0 is normal).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from citywatch.i18n import N_, NP_
from citywatch.ingest.simkind import Incident, Sim, SimKind, clamp, rented_home
from citywatch.kindspec import KindSpec, Measure, PayloadField, Threshold
from citywatch.section import Section, below

if TYPE_CHECKING:  # the dashboard and report modules load when a dashboard or report is made
    from citywatch.charts import SensorReport
    from citywatch.dashboards.queries import Target
    from citywatch.dashboards.widgets import RowSpec


class SmokeRules(Section):
    """`rules.smoke`: `alarm_pct_per_m` opens smoke_alarm from the reading alone, whatever the
    device's own alarm flag says; `pre_alarm_pct_per_m` warns of smoke building up below it."""

    pre_alarm_pct_per_m: float = Field(1.5, gt=0)
    alarm_pct_per_m: float = Field(4.0, gt=0, validate_default=True)  # checked against the field above
    hysteresis_pct_per_m: float = Field(0.3, ge=0)

    @field_validator("alarm_pct_per_m")
    @classmethod
    def _alarm_above_pre_alarm(cls, value: float, info: ValidationInfo) -> float:
        below("rules.smoke", "pre_alarm_pct_per_m", info, "alarm_pct_per_m", value)
        return value


def dashboard_row() -> RowSpec:
    from citywatch.dashboards.widgets import PanelSpec, RowSpec, timeseries_panel

    smoke = SmokeRules()
    return RowSpec("Smoke", [
        PanelSpec(timeseries_panel("Smoke obscuration by district", f"Densest smoke per district (rented housing "
                                   f"smoke alarms): pre-alarm from {smoke.pre_alarm_pct_per_m:g} %/m, alarm from "
                                   f"{smoke.alarm_pct_per_m:g} %/m.", "suffix: %/m",
                                   ((None, "green"), (smoke.pre_alarm_pct_per_m, "orange"),
                                    (smoke.alarm_pct_per_m, "red"))),
                  [_obscuration_figure()],
                  24, 8),
    ])


def _obscuration_figure() -> Target:
    from citywatch.dashboards import queries as q

    return q.per_interval("smoke", "max", "obscuration_pct_per_m", "obscuration_pct_per_m", "district")


def report(r: SensorReport) -> list[str]:
    """Its part of `citywatch report`: densest smoke by district against the pre-alarm and alarm levels."""
    from citywatch.charts import line_chart, num, series

    _, smoke = r.tr.gettext, r.rules.section(SmokeRules)
    lines = [(smoke.pre_alarm_pct_per_m, _("pre-alarm ({limit} %/m)", limit=num(smoke.pre_alarm_pct_per_m)),
              "#f59e0b"),
             (smoke.alarm_pct_per_m, _("alarm ({limit} %/m)", limit=num(smoke.alarm_pct_per_m)), "#dc2626")]
    return [r.heading(_("Smoke: densest obscuration by district")),
            line_chart("chart-smoke", _("Smoke obscuration by district"),
                       series(r.rows["smoke"], "obscuration_pct_per_m", "district"), r.start, r.end, r.tz, "%/m",
                       lines, y_min=0, tr=r.tr)]


class SmokeSim(SimKind):
    """Simulated smoke alarms in rented flats: clean air (a little dust in the chamber); now and then a
    resident presses the test button. Incidents: a fire nobody clears, tampering."""

    slots = (5,)
    incidents = {"smoke_fire": ("smoke_rising", "smoke_alarm"), "smoke_tamper": ("smoke_tamper",)}
    valid_fields = {"obscuration_pct_per_m": 0.1, "alarm": False}
    too_big = ("obscuration_pct_per_m", 150.0)
    battery_event = {"obscuration_pct_per_m": 0.1, "alarm": False, "event": "low_battery"}

    def __init__(self, sim: Sim) -> None:
        super().__init__(sim)
        self.rules = sim.rules.section(SmokeRules)
        self._rng = sim.rng

    @staticmethod
    def address(rng: random.Random, number: int, street: str) -> str:
        return rented_home(rng, number, street)

    def normal(self, i: int, t: float) -> dict[str, Any]:
        rng = self._rng
        if rng.random() < 0.001:
            return {"obscuration_pct_per_m": round(rng.random() * 0.3, 2), "alarm": True, "event": "test"}
        return {"obscuration_pct_per_m": round(rng.random() * 0.3, 2), "alarm": False}

    def script(self, name: str, i: int, k0: int, k_min: int, k_max: int, rng: random.Random) -> Incident:
        if name == "smoke_fire":  # smoke builds up past the pre-alarm, the alarm sounds; nobody clears it
            up, hold = rng.randint(3, 6), rng.randint(2, 4)
            inc = Incident(name, i, k0, up + hold)
            alarm = self.rules.alarm_pct_per_m
            peak = alarm + rng.uniform(2.0, 8.0)
            for s in range(inc.n):
                v = peak * ((s + 1) / up) ** 1.5 if s < up else peak + rng.uniform(-1.0, 1.0)
                v = round(clamp(v, 0.0, 100.0), 2)
                inc.values[s] = {"obscuration_pct_per_m": v, "alarm": v >= alarm}
            inc.detail = {"peak": max(v["obscuration_pct_per_m"] for v in inc.values if v)}
        elif name == "smoke_tamper":
            inc = Incident(name, i, k0, 1)
            inc.values = [{"obscuration_pct_per_m": 0.0, "alarm": False, "event": "tamper"}]
        else:
            return super().script(name, i, k0, k_min, k_max, rng)
        return inc


SPEC = KindSpec(
    name="smoke",
    label=NP_("kind", "smoke"),
    payload=(
        PayloadField(NP_("reading field", "obscuration_pct_per_m"), float,
                     "smoke obscuration in the chamber, % per metre", ge=0, le=100),
        PayloadField("alarm", bool, "the alarm is sounding"),
        PayloadField("event", Literal["test", "tamper", "low_battery"], "test button pressed, removed from its "
                     "base or opened, battery low", required=False),
    ),
    chart_field="obscuration_pct_per_m",
    chart_unit="%/m",
    measure=Measure("obscuration_pct_per_m", 0.05, rest_value=0.0),
    settings=SmokeRules,
    thresholds=(Threshold("smoke.pre_alarm_pct_per_m", "pre_alarm_pct_per_m", below="smoke.alarm_pct_per_m"),
                Threshold("smoke.alarm_pct_per_m", "alarm_pct_per_m")),
    rules="citywatch.detectors.smoke",
    safety_rules=frozenset({"smoke_alarm", "smoke_tamper"}),
    hazard_group=(NP_("hazard group", "fire"), ("smoke_*",)),
    rule_labels=(NP_("rule", "smoke_alarm"), NP_("rule", "smoke_rising"), NP_("rule", "smoke_tamper")),
    messages={
        "smoke_alarm": N_("smoke alarm sounding"),
        "smoke_alarm.level": N_("smoke at {value} %/m (alarm from {threshold} %/m)"),
        "smoke_rising": N_("smoke building up: {value} %/m (pre-alarm from {threshold} %/m)"),
        "smoke_tamper": N_("smoke alarm tampered with (removed from its base or opened)"),
    },
    dashboard_row=dashboard_row,
    report_figures={"smoke": _obscuration_figure},
    report=report,


    simulator=SmokeSim,
)
