"""Environmental noise monitors on streets and building sites: LAeq and LAmax in dB(A).

Limits by functional zone class and day/night after GB 3096-2008. No plausibility limit: a pile
driver starts within a second.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationInfo, field_validator

from citywatch.i18n import N_, NP_
from citywatch.ingest.simkind import Incident, Sim, SimDevice, SimKind
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


ZONE_CLASSES = (("1", 0.2), ("2", 0.45), ("3", 0.15), ("4a", 0.2))  # simulated monitors: zone class, share


class NoiseSim(SimKind):
    """Simulated street noise monitors: a daily profile (quiet night, morning ramp, rush hours), always a
    few dB under the zone's limits; an incident is loud for 10-20 readings, with bursts at night."""

    slots = (1, 9, 16)
    incidents = {"noise_night": ("noise_limit", "noise_night_burst")}
    variants = {"noise_day": ("noise_limit",)}
    valid_fields = {"laeq_db": 52.0, "lamax_db": 60.0}
    too_big = ("laeq_db", 200.0)

    def __init__(self, sim: Sim) -> None:
        super().__init__(sim)
        self.rules = sim.rules.section(NoiseRules)
        self._rng = sim.rng
        self._hour = sim.local_hour
        # per device: plateau, floor, day limit, night limit (dB(A))
        self._level = [(0.0, 0.0, 0.0, 0.0)] * len(sim.devices)

    @staticmethod
    def attributes(rng: random.Random) -> dict[str, Any]:
        return {"zone_class": rng.choices([z for z, _ in ZONE_CLASSES], [w for _, w in ZONE_CLASSES])[0]}

    def is_night(self, t: float) -> bool:
        hour = int(self._hour(t))
        return not (self.rules.day_start_hour <= hour < self.rules.night_start_hour)

    def limits(self, device: SimDevice) -> tuple[float, float]:
        """The device's day and night limits, dB(A): its zone class's, or its own thresholds."""
        rules = self.rules
        zone = device.zone_class or rules.default_zone_class
        day, night = rules.limits.get(zone, rules.limits[rules.default_zone_class])
        day = device.thresholds.get("noise.day_db", day) if device.thresholds else day
        night = device.thresholds.get("noise.night_db", night) if device.thresholds else night
        return float(day), float(night)

    def setup(self, i: int, device: SimDevice, rng: random.Random) -> None:
        day_limit, night_limit = self.limits(device)
        offset = rng.uniform(-3.0, 0.0)
        plateau, floor = day_limit - 7.0 + offset, night_limit - 8.0 + offset
        self._level[i] = (plateau, floor, day_limit, night_limit)

    def normal(self, i: int, t: float) -> dict[str, Any]:
        plateau, floor, day_limit, night_limit = self._level[i]
        h = self._hour(t)
        if h < 5.0:
            profile = 0.0
        elif h < 7.0:
            profile = (h - 5.0) / 2.0
        elif h < 20.0:
            profile = 1.0 + (0.15 if 7.5 <= h < 9.0 or 17.0 <= h < 19.0 else 0.0)
        elif h < 22.0:
            profile = 1.0 - 0.4 * (h - 20.0)
        else:
            profile = 0.1 * (24.0 - h)
        rng = self._rng
        laeq = floor + profile * (plateau - floor) + rng.gauss(0.0, 1.2)
        if self.is_night(t):
            laeq = min(laeq, night_limit - 4.0)
            burst_cap = night_limit + self.rules.night_burst_db - 4.0
            lamax = min(laeq + 5.0 + rng.expovariate(0.3), burst_cap)
        else:
            laeq = min(laeq, day_limit - 4.0)
            lamax = laeq + 5.0 + rng.expovariate(0.3)
        laeq = max(laeq, 30.0)
        return {"laeq_db": round(laeq, 1), "lamax_db": round(max(lamax, laeq), 1)}

    def script(self, name: str, i: int, k0: int, k_min: int, k_max: int, rng: random.Random) -> Incident:
        """noise_night starts at night when the range has a night, else by day (logged as noise_day)."""
        if name != "noise_night":
            return super().script(name, i, k0, k_min, k_max, rng)
        uniform = rng.uniform
        step_time = self.sim.step_time
        device = self.devices[i]
        night_ks = [k for k in range(k_min, k_max + 1) if self.is_night(step_time(i, k))]
        if night_ks:
            k0 = rng.choice(night_ks)
        inc = Incident(name, i, k0, rng.randint(10, 20))
        any_night = False
        for s in range(inc.n):
            t = step_time(i, k0 + s)
            night = self.is_night(t)
            any_night = any_night or night
            day_limit, night_limit = self.limits(device)
            laeq = (night_limit if night else day_limit) + uniform(5.0, 10.0)
            lamax = (night_limit + self.rules.night_burst_db + uniform(3.0, 8.0) if night
                     else laeq + uniform(6.0, 12.0))
            inc.values[s] = {"laeq_db": round(laeq, 1), "lamax_db": round(lamax, 1)}
        inc.name = "noise_night" if self.is_night(step_time(i, k0)) else "noise_day"
        inc.rules = ("noise_limit", "noise_night_burst") if any_night else ("noise_limit",)
        inc.detail = {"peak": max(v["laeq_db"] for v in inc.values if v)}
        return inc


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


    simulator=NoiseSim,
)
