"""The InfluxQL behind every dashboard panel, written against the schema in `citywatch.sinks.influx`.

InfluxQL, because InfluxDB 1.8+, 2.x (v1 `/query` with a DBRP mapping) and 3.x all serve it. The
queries use Grafana's template syntax, which `substitute` expands the way Grafana does for the
InfluxDB data source (tests and the situation report run them through it):

* `$timeFilter`            the dashboard's time range (`time >= ...ms and time <= ...ms`)
* `$__interval`            the GROUP BY time bucket Grafana picks for the panel width
* `${__to:date:seconds}`   the end of the range in epoch seconds: "now" for a live dashboard
* `$district`, `$grid`, `$kind`  template variables, matched as regexes `=~ /^$var$/`; "All" is `.*`

"Current state" panels (open alerts, the map's alert layer, offline devices) look at the latest
transition of each (device, rule) in the `OPEN_LOOKBACK` before the end of the range, not just
inside it: an alert opened two days ago and still open belongs on today's map.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DATASOURCE_UID = "citywatch-influxdb"
DATASOURCE: dict[str, str] = {"type": "influxdb", "uid": DATASOURCE_UID}

TIME_FILTER = "$timeFilter"
INTERVAL = "$__interval"
RANGE_END_S = "${__to:date:seconds}"
OPEN_LOOKBACK = "30d"
OPEN_WINDOW = f"time > {RANGE_END_S}s - {OPEN_LOOKBACK} AND time <= {RANGE_END_S}s"
VARIABLE_NAMES: tuple[str, ...] = ("district", "grid", "kind")
WHERE_VARS = " AND ".join(f'"{name}" =~ /^${name}$/' for name in VARIABLE_NAMES)
OPENINGS = "/^(opened|flapping)$/"  # transitions that start a case


@dataclass(frozen=True)
class Target:
    """One InfluxQL query of a panel and the result columns the panel reads (tags included)."""

    ref_id: str
    query: str
    columns: tuple[str, ...]
    format: str = "table"  # "table" | "time_series"
    alias: str | None = None  # Grafana series alias ($tag_x), time series only

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"datasource": dict(DATASOURCE), "query": self.query, "rawQuery": True,
                                "refId": self.ref_id, "resultFormat": self.format}
        if self.alias:
            body["alias"] = self.alias
        return body


# -- template variables ---------------------------------------------------------------------------

VARIABLE_QUERIES: dict[str, str] = {
    "district": 'SHOW TAG VALUES FROM "device_status" WITH KEY = "district"',
    "grid": 'SHOW TAG VALUES FROM "device_status" WITH KEY = "grid" WHERE "district" =~ /^$district$/',
    "kind": 'SHOW TAG VALUES FROM "device_status" WITH KEY = "kind"',
}


def _where(*conditions: str) -> str:
    return " AND ".join(c for c in conditions if c)


def _is(key: str, value: str) -> str:
    return f"\"{key}\" = '{value}'"


def _matches(key: str, regex: str) -> str:
    return f'"{key}" =~ {regex}'


# -- alert state ----------------------------------------------------------------------------------

_LATEST_COLUMNS = ('"alert_id"', '"status"', '"severity"', '"opened_at"', '"value"', '"threshold"', '"lat"',
                   '"lon"', '"kind"', '"district"', '"grid"')


def latest_alerts(condition: str = "") -> str:
    """Per (device, rule): the latest transition in the look-back window, with `open` 1/0."""
    return (f'SELECT last("open") AS "open", {", ".join(_LATEST_COLUMNS)} FROM "alerts" '
            f'WHERE {_where(OPEN_WINDOW, WHERE_VARS, condition)} GROUP BY "device", "rule"')


def _age(unit_s: float = 3600.0) -> str:
    """Age of an alert at the end of the range, in units of `unit_s` seconds."""
    age = f'{RANGE_END_S} - "opened_at"'
    return f"({age}) / {unit_s:g}" if unit_s != 1 else age


def open_alerts_table() -> Target:
    q = (f'SELECT {_age()} AS "age_h", "severity", "status", "kind", "district", "grid", "value", "threshold", '
         f'"alert_id" FROM ({latest_alerts()}) WHERE "open" = 1 GROUP BY "device", "rule"')
    return Target("A", q, ("device", "rule", "age_h", "severity", "status", "kind", "district", "grid", "value",
                           "threshold", "alert_id"))


def open_alerts_count(ref_id: str = "A", condition: str = "", alias: str = "open_alerts") -> Target:
    q = f'SELECT count("open") AS "{alias}" FROM ({latest_alerts(condition)}) WHERE "open" = 1'
    return Target(ref_id, q, (alias,))


def overdue_count(deadline_s: float, unacknowledged_only: bool, alias: str) -> Target:
    """Open alerts older than a deadline (review: still unacknowledged; response: not resolved)."""
    status = " AND \"status\" = 'open'" if unacknowledged_only else ""
    inner = f'SELECT {_age(1)} AS "age_s", "status" FROM ({latest_alerts()}) WHERE "open" = 1'
    q = f'SELECT count("age_s") AS "{alias}" FROM ({inner}) WHERE "age_s" > {deadline_s:g}{status}'
    return Target("A", q, (alias,))


def map_devices() -> Target:
    q = ('SELECT last("lat") AS "lat", last("lon") AS "lon", last("online") AS "online", '
         'last("battery") AS "battery", last("rssi") AS "rssi" FROM "device_status" '
         f'WHERE {_where(TIME_FILTER, WHERE_VARS)} GROUP BY "device", "kind", "district", "grid"')
    return Target("A", q, ("device", "kind", "district", "grid", "lat", "lon", "online", "battery", "rssi"))


def map_alerts() -> Target:
    q = (f'SELECT "lat", "lon", "severity", "status", "kind", {_age()} AS "age_h", "alert_id" '
         f'FROM ({latest_alerts()}) WHERE "open" = 1 GROUP BY "device", "rule"')
    return Target("B", q, ("device", "rule", "lat", "lon", "severity", "status", "kind", "age_h", "alert_id"))


def offline_devices() -> Target:
    q = (f'SELECT {_age()} AS "offline_h", "status", "kind", "district", "grid", "value" AS "silent_s", '
         f'"alert_id" FROM ({latest_alerts(_is("rule", "device_offline"))}) '
         'WHERE "open" = 1 GROUP BY "device"')
    return Target("A", q, ("device", "offline_h", "status", "kind", "district", "grid", "alert_id"))


# -- closed loop ----------------------------------------------------------------------------------

def _alerts_where(*conditions: str) -> str:
    return _where(TIME_FILTER, WHERE_VARS, *conditions)


def response_times(transition: str, prefix: str) -> Target:
    """Median and 90th percentile of age_s on `acknowledged` (time to acknowledge) or `resolved`."""
    q = (f'SELECT median("age_s") AS "{prefix}_median_s", percentile("age_s", 90) AS "{prefix}_p90_s", '
         f'count("age_s") AS "{prefix}_count" FROM "alerts" WHERE {_alerts_where(_is("transition", transition))}')
    return Target("A", q, (f"{prefix}_median_s", f"{prefix}_p90_s", f"{prefix}_count"))


def within_deadline(transition: str, deadline_s: float, name: str) -> list[Target]:
    """Two counts Grafana divides (joinByField + calculateField): within the deadline / all."""
    cond = _is("transition", transition)
    in_time = f'"age_s" <= {deadline_s:g}'
    within = f'SELECT count("age_s") AS "{name}_within" FROM "alerts" WHERE {_alerts_where(cond, in_time)}'
    total = f'SELECT count("age_s") AS "{name}_total" FROM "alerts" WHERE {_alerts_where(cond)}'
    return [Target("A", within, (f"{name}_within",)), Target("B", total, (f"{name}_total",))]


def escalations() -> Target:
    q = f'SELECT count("alert_id") AS "escalations" FROM "alerts" WHERE {_alerts_where(_is("transition", "escalated"))}'
    return Target("A", q, ("escalations",))


def alerts_by(*tags: str) -> Target:
    group = ", ".join(f'"{t}"' for t in tags)
    q = (f'SELECT count("alert_id") AS "alerts" FROM "alerts" WHERE {_alerts_where(_matches("transition", OPENINGS))} '
         f'GROUP BY {group}')
    return Target("A", q, (*tags, "alerts"))


def alerts_over_time() -> Target:
    q = (f'SELECT count("alert_id") AS "alerts" FROM "alerts" WHERE {_alerts_where(_matches("transition", OPENINGS))} '
         f'GROUP BY time({INTERVAL}), "kind" fill(none)')
    return Target("A", q, ("time", "kind", "alerts"), "time_series", "$tag_kind")


def response_times_over_time() -> list[Target]:
    out = []
    for ref, transition, name in (("A", "acknowledged", "acknowledge_s"), ("B", "resolved", "resolve_s")):
        q = (f'SELECT mean("age_s") AS "{name}" FROM "alerts" '
             f'WHERE {_alerts_where(_is("transition", transition))} GROUP BY time({INTERVAL}) fill(none)')
        out.append(Target(ref, q, ("time", name), "time_series"))
    return out


# -- per kind -------------------------------------------------------------------------------------

def per_interval(measurement: str, agg: str, field_: str, alias: str, by: str | None, *conditions: str,
                  ref_id: str = "A") -> Target:
    group = f'GROUP BY time({INTERVAL})' + (f', "{by}"' if by else "")
    where = _where(TIME_FILTER, WHERE_VARS, *conditions)
    q = f'SELECT {agg}("{field_}") AS "{alias}" FROM "{measurement}" WHERE {where} {group} fill(none)'
    return Target(ref_id, q, ("time", *((by,) if by else ()), alias), "time_series", f"$tag_{by}" if by else None)
























# -- device health --------------------------------------------------------------------------------

def devices_reporting() -> Target:
    inner = (f'SELECT last("battery") AS "battery" FROM "device_status" WHERE {_where(TIME_FILTER, WHERE_VARS)} '
             'GROUP BY "device"')
    return Target("A", f'SELECT count("battery") AS "devices" FROM ({inner})', ("devices",))


def health_by_district(field_: str) -> Target:
    return per_interval("device_status", "min", field_, field_, "district")


def device_health_table() -> Target:
    """Per device: the latest battery reading, the rssi of that reading, and its time (last seen)."""
    q = ('SELECT last("battery") AS "battery", "rssi" FROM "device_status" '
         f'WHERE {_where(TIME_FILTER, WHERE_VARS)} GROUP BY "device", "kind", "district", "grid"')
    return Target("A", q, ("time", "battery", "rssi", "device", "kind", "district", "grid"))


def offline_announcements() -> Target:
    return per_interval("device_status", "count", "online", "offline_announcements", None, '"online" = false')


# -- Grafana's substitution -----------------------------------------------------------------------

_VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)")


_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")


def escape_regex(value: str) -> str:
    """Grafana's regex escaping of a variable value (what InfluxDB's Go regexp then reads)."""
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def regex_value(value: str | Sequence[str] | None) -> str:
    """A multi-value variable's value inside `/^...$/` the way Grafana's InfluxDB data source
    writes it: All (None or "$__all") is the custom all value `.*`, unescaped; one value is
    regex-escaped; several become `(a|b)`."""
    if value is None or value == "$__all":
        return ".*"
    if isinstance(value, str):
        return escape_regex(value)
    escaped = [escape_regex(v) for v in value]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(query: str, *, time_filter: str, interval: str, range_end_s: float,
               variables: Mapping[str, str | Sequence[str] | None] | None = None) -> str:
    """Expand the Grafana syntax used above into plain InfluxQL."""
    values = {name: regex_value((variables or {}).get(name)) for name in VARIABLE_NAMES}
    special = {"timeFilter": time_filter, "__interval": interval, "__to": str(int(range_end_s))}

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in special:
            return special[name]
        if name in values:
            return values[name]
        raise KeyError(f"unknown template variable ${name} in {query!r}")

    return _VAR.sub(replace, query)


# The helpers each kind's own queries use (citywatch/kinds/<kind>.py).
where, is_, matches, alerts_where = _where, _is, _matches, _alerts_where
