"""Environmental noise monitors on streets and building sites: LAeq and LAmax in dB(A).

Limits by functional zone class and day/night after GB 3096-2008. No plausibility limit: a pile
driver starts within a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, ValidationInfo, field_validator

from citywatch.i18n import N_, NP_
from citywatch.kindspec import KindSpec, Measure, PayloadField, Threshold
from citywatch.section import Section

if TYPE_CHECKING:  # the dashboard and report modules load when a dashboard or report is made
    from citywatch.charts import SensorReport
    from citywatch.dashboards.queries import Target
    from citywatch.dashboards.widgets import PanelSpec, RowSpec


class NoiseRules(Section):
    """`rules.noise`: GB 3096-2008 limits by functional zone class, [day, night] dB(A)."""

    limits: dict[str, tuple[float, float]] = {
        "0": (50, 40), "1": (55, 45), "2": (60, 50), "3": (65, 55), "4a": (70, 55), "4b": (70, 60),
    }
    default_zone_class: str = "2"
    day_start_hour: int = Field(6, ge=0, le=23)
    night_start_hour: int = Field(22, ge=0, le=23, validate_default=True)  # checked against the field above
    hysteresis_db: float = Field(3.0, ge=0)
    night_burst_db: float = Field(15.0, ge=0)

    @field_validator("night_start_hour")
    @classmethod
    def _day_and_night(cls, value: int, info: ValidationInfo) -> int:
        day = info.data.get("day_start_hour")
        if day == value:
            raise ValueError(f"rules.noise.day_start_hour ({day}) must differ from rules.noise.night_start_hour "
                             f"({value}): otherwise there is no day or no night")
        return value


class NoiseNightParams(Section):
    """`rules.learned.noise_night`: a street far louder than its own normal at night, under the limit."""

    z: float = Field(4.0, gt=0)  # spreads above this street's normal for the hour
    min_excess_db: float = Field(6.0, ge=0)  # and at least this many dB(A) above it
    sustain: int = Field(3, ge=1)  # consecutive readings (sustained, not a single loud second)


MIN_SPREAD = 0.3  # dB(A)


# -- its InfluxDB queries (dashboard panels and report figures) ------------------------------

def noise_by_zone() -> Target:
    from citywatch.dashboards import queries as ql

    t = ql.per_interval("noise", "max", "laeq_db", "laeq_db", "zone")
    return ql.Target(t.ref_id, t.query, t.columns, t.format, "zone $tag_zone")


def noise_exceedances() -> Target:
    from citywatch.dashboards import queries as ql

    cond = ql.where(ql.matches("rule", "/^noise_/"), ql.matches("transition", "/^(opened|updated|flapping)$/"))
    q = ('SELECT "value" AS "level_db", "threshold" AS "limit_db", "value" - "threshold" AS "over_db", "device", '
         f'"rule", "severity", "district", "grid" FROM "alerts" WHERE {ql.alerts_where(cond)}')
    return ql.Target("A", q, ("time", "level_db", "limit_db", "over_db", "device", "rule", "severity", "district",
                              "grid"))


def _by_zone() -> PanelSpec:
    from citywatch.dashboards.widgets import PanelSpec, override, thresholds_json, timeseries_panel

    panel = timeseries_panel("Noise LAeq by zone class", "Loudest LAeq per functional zone class; dashed lines: the "
                             "zone's night (orange) and day (red) limits, GB 3096-2008.", "dB")
    for zone, (day, night) in sorted(NoiseRules().limits.items()):
        panel = panel.override_by_name(f"zone {zone}", override(
            thresholds=thresholds_json((None, "green"), (night, "orange"), (day, "red")),
            custom__thresholdsStyle={"mode": "dashed"}))
    return PanelSpec(panel, [noise_by_zone()], 16, 8)


def dashboard_row() -> RowSpec:
    from citywatch.dashboards.widgets import PanelSpec, RowSpec, override, table_panel, thresholds_json

    return RowSpec("Noise", [
        _by_zone(),
        PanelSpec(table_panel("Noise exceedances", "LAeq (or LAmax for night bursts) against the limit in force "
                              "when the alert opened or rose.", "over_db")
                  .override_by_name("over_db", override(unit="dB", thresholds=thresholds_json(
                      (None, "orange"), (10, "red")), custom__cellOptions={"type": "color-text"})),
                  [noise_exceedances()], 8, 8),
    ])




def report(r: SensorReport) -> list[str]:
    """Its part of `citywatch report`: loudest LAeq by zone class, with each zone's day and night limits."""
    from citywatch.charts import line_chart, series

    _ = r.tr.gettext
    by_zone = series(r.rows["noise"], "laeq_db", "zone")
    limits = r.rules.section(NoiseRules).limits
    noise, lines = {}, []
    for zone in sorted(by_zone):
        name = _("zone {zone}", zone=zone)
        noise[name] = by_zone[zone]
        if zone in limits:
            day, night = limits[zone]
            lines += [(float(night), _("{zone} night", zone=name), "#f59e0b"),
                      (float(day), _("{zone} day", zone=name), "#dc2626")]
    return [r.heading(_("Noise: loudest LAeq by zone class, with each zone's day and night limits")),
            line_chart("chart-noise", _("Noise LAeq by zone class"), noise, r.start, r.end, r.tz, "dB(A)", lines,
                       tr=r.tr)]


SPEC = KindSpec(
    name="noise",
    label=NP_("kind", "noise"),
    payload=(
        PayloadField(NP_("reading field", "laeq_db"), float,
                     "A-weighted equivalent level, dB(A)", ge=0, le=160),
        PayloadField(NP_("reading field", "lamax_db"), float,
                     "A-weighted maximum level, dB(A)", required=False, ge=0, le=180),
    ),
    device_attributes=("zone_class",),
    chart_field="laeq_db",
    chart_unit="dB(A)",
    measure=Measure("laeq_db", MIN_SPREAD),
    settings=NoiseRules,
    learned_settings={"noise_night": NoiseNightParams},
    thresholds=(Threshold("noise.day_db", ""), Threshold("noise.night_db", "")),
    rules="citywatch.detectors.noise",
    hazard_group=(NP_("hazard group", "noise"), ("noise_*",)),
    rule_labels=(NP_("rule", "noise_limit"), NP_("rule", "noise_night_burst"), NP_("rule", "noise_unusual_night")),
    messages={
        "noise_limit": N_("LAeq {value} dB(A) over the {period} limit {threshold} dB(A)"),
        "noise_night_burst": N_("night burst LAmax {value} dB(A) over {threshold} dB(A)"),
        "noise_unusual_night": N_("LAeq {value} dB(A) at night: far above this street's normal for the hour, "
                                  "under the limit {limit} dB(A)"),
    },
    words={"period": ("noise period", frozenset({NP_("noise period", "day"), NP_("noise period", "night")}))},
    dashboard_row=dashboard_row,
    report_figures={"noise": noise_by_zone},
    report=report,
)
