"""InfluxDB line protocol for pipeline output, formatted directly (this runs on the hot path).

The schema is documented in `citywatch.sinks.influx`. `device_status` gets a point per
announcement (field `online`) and one per reading that reports battery and/or rssi (fields
`battery`, `rssi`, at the reading's event time); both carry the same tags (device, district,
grid, kind), so one series per device holds its whole health history, and both carry the
device's `lat`, `lon` when it has coordinates (the dashboards' map). `alerts` points carry
`opened_at` (the age of an open alert is now - opened_at) and the device's `lat`, `lon`.

`cases` gets one point per finished case (its `closed` or `resolved` transition), at that time: the
loop's figures for that case as `citywatch.loop.cases` defines them, so Grafana's panels and GET /kpis
agree. Tags: city, community, device, district, grid, kind, outcome (closed_verified,
closed_confirmed, resolved_by_person, resolved_condition_cleared), rule. Fields: alert_id, time_to_close_s,
time_to_ack_s and time_to_rectify_s (when the case has them), escalation_level, reopened, dispatched
(0/1), and 0/1 flags present only where they apply: within_review, within_response, closed_at_grid,
reopened_after_rectification (so their mean is the share).

InfluxDB stores times from 1677-09-21 to 2262-04-11 (int64 ns) and InfluxDB 2.x refuses a whole
batch for one point outside that: `lines_for` renders such points into `Lines.out_of_range`, which
the sink keeps in influx-rejected/ instead of sending.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from citywatch.loop.cases import case_figures, place
from citywatch.model import TERMINAL_STATUSES, Device, Output, Reading, Transition

# InfluxDB's time range (ns since the epoch): 1677-09-21T00:12:43.145224194Z .. 2262-04-11T23:47:16.854775806Z
MIN_NS = -9223372036854775806
MAX_NS = 9223372036854775806

_TAG = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\=", "\\": "/", "\n": r"\ ", "\r": r"\ "})
_STR = str.maketrans({'"': r"\"", "\\": r"\\"})


def _tags(pairs: tuple[tuple[str, str | None], ...]) -> str:
    return "".join(f",{k}={v.translate(_TAG)}" for k, v in pairs if v)


@lru_cache(maxsize=65536)
def _device_tags(device_id: str, district: str, grid: str, kind: str, zone: str | None) -> str:
    return _tags((("device", device_id), ("district", district), ("grid", grid), ("kind", kind),
                  ("zone", zone)))


@lru_cache(maxsize=65536)
def _alert_tags(device_id: str, district: str, grid: str, kind: str, rule: str, severity: str,
                transition: str) -> str:
    return _tags((("device", device_id), ("district", district), ("grid", grid), ("kind", kind),
                  ("rule", rule), ("severity", severity), ("transition", transition)))


@lru_cache(maxsize=1024)
def _key(name: str) -> str:
    return name.translate(_TAG)


@lru_cache(maxsize=65536)
def _location(lat: float | None, lon: float | None) -> str:
    """`,lat=..,lon=..` of a device with coordinates (the dashboards' map), else ''."""
    if lat is None or lon is None:
        return ""
    return f",lat={float(lat)!r},lon={float(lon)!r}"


def _ns(ts: float) -> int:
    return round(ts * 1_000_000) * 1000


def _field(key: str, v: Any) -> str | None:
    """One `key=value`; None for values line protocol cannot carry (None, NaN, inf, containers)."""
    t = type(v)
    if t is float:
        return f"{_key(key)}={v!r}" if v - v == 0.0 else None
    if t is bool:
        return f"{_key(key)}={'true' if v else 'false'}"
    if t is int:
        return f"{_key(key)}={float(v)!r}"
    if t is str:
        return f'{_key(key)}="{v.translate(_STR)}"'
    return None


def _health_fields(reading: Reading) -> str:
    """`battery=..,rssi=..` of a reading (either may be missing); '' when it reports neither."""
    battery, rssi = reading.battery, reading.rssi
    if battery is None:
        if rssi is None:
            return ""
        return f"rssi={float(rssi)!r}" if rssi - rssi == 0 else ""
    b = f"battery={float(battery)!r}" if battery - battery == 0 else ""
    if rssi is None or rssi - rssi != 0:
        return b
    return f"{b},rssi={float(rssi)!r}" if b else f"rssi={float(rssi)!r}"


def _reading_line(reading: Reading, device: Device, health: str, ts: int) -> str | None:
    fields = [f for k, v in reading.values.items() if (f := _field(k, v)) is not None]
    if health:
        fields.append(health)
    if reading.seq is not None:
        fields.append(f"seq={reading.seq}i")
    if not fields:
        return None
    tags = _device_tags(reading.device_id, device.district, device.grid, reading.kind, device.zone_class)
    return f"{reading.kind}{tags} {','.join(fields)} {ts}"


def reading_line(reading: Reading, device: Device) -> str | None:
    """The kind measurement's point: reported values, battery/rssi when present, seq."""
    return _reading_line(reading, device, _health_fields(reading), _ns(reading.ts))


def health_line(reading: Reading, device: Device) -> str | None:
    """The `device_status` point of a reading that reports battery and/or rssi (None if neither)."""
    health = _health_fields(reading)
    if not health:
        return None
    tags = _device_tags(reading.device_id, device.district, device.grid, reading.kind, None)
    return f"device_status{tags} {health}{_location(device.lat, device.lon)} {_ns(reading.ts)}"


def transition_line(tr: Transition) -> str:
    a = tr.alert
    where = a.device
    tags = _alert_tags(a.device_id, where.get("district") or "", where.get("grid") or "", a.kind, a.rule,
                       a.severity, tr.transition)
    fields = [f'alert_id="{a.id.translate(_STR)}"', f"opened_at={float(a.opened_at)!r}"]
    lat, lon = where.get("lat"), where.get("lon")
    if isinstance(lat, int | float) and isinstance(lon, int | float):
        fields.append(f"lat={float(lat)!r},lon={float(lon)!r}")
    fields.append(f'status="{a.status.translate(_STR)}"')
    value = a.value
    if isinstance(value, int | float) and not isinstance(value, bool):
        f = _field("value", float(value))
    elif value is not None:
        f = _field("value_text", str(value).lower() if type(value) is bool else str(value))
    else:
        f = None
    if f:
        fields.append(f)
    if a.threshold is not None and (f := _field("threshold", float(a.threshold))):
        fields.append(f)
    fields.append(f"count={a.count}i")
    fields.append(f"open={0 if a.status in TERMINAL_STATUSES else 1}i")
    if (f := _field("age_s", float(tr.at - a.opened_at))) is not None:
        fields.append(f)
    return f"alerts{tags} {','.join(fields)} {_ns(tr.at)}"


@lru_cache(maxsize=65536)
def _case_tags(device_id: str, city: str, district: str, community: str, grid: str, kind: str, rule: str,
               outcome: str) -> str:
    return _tags((("city", city), ("community", community), ("device", device_id), ("district", district),
                  ("grid", grid), ("kind", kind), ("outcome", outcome), ("rule", rule)))


def _flag(key: str, value: bool | None) -> str:
    return "" if value is None else f",{key}={int(value)}i"


def case_line(tr: Transition) -> str | None:
    """The `cases` point of a finished case (None for any other transition)."""
    a = tr.alert
    case = case_figures(a) if tr.transition in TERMINAL_STATUSES else None
    if case is None:
        return None
    tags = _case_tags(a.device_id, *place(a.device), a.kind, a.rule, case.outcome)
    fields = f'alert_id="{a.id.translate(_STR)}",time_to_close_s={float(case.time_to_close_s)!r}'
    if case.time_to_ack_s is not None:
        fields += f",time_to_ack_s={float(case.time_to_ack_s)!r}"
    if case.time_to_rectify_s is not None:
        fields += f",time_to_rectify_s={float(case.time_to_rectify_s)!r}"
    fields += (f",escalation_level={a.escalation_level}i,reopened={a.reopened}i,dispatched={int(case.dispatched)}i"
               + _flag("within_review", case.within_review) + _flag("within_response", case.within_response)
               + _flag("closed_at_grid", case.closed_at_grid)
               + _flag("reopened_after_rectification", case.reopened_after_rectification))
    return f"cases{tags} {fields} {_ns(case.finished_at)}"


def status_line(device: Device, status: str, at: float) -> str:
    tags = _device_tags(device.id, device.district, device.grid, device.kind, None)
    online = "true" if status == "online" else "false"
    return f"device_status{tags} online={online}{_location(device.lat, device.lon)} {_ns(at)}"


class Lines(list[str]):
    """What `lines_for` renders: the lines to send, and `out_of_range`, points whose time InfluxDB
    cannot store (the sink keeps them aside, counted, instead of losing the batch they are in)."""

    __slots__ = ("out_of_range",)

    def __init__(self) -> None:
        super().__init__()
        self.out_of_range: list[str] = []


def lines_for(out: Output) -> Lines:
    """Everything one pipeline batch produced, as line protocol (see the module docstring).

    Per reading: its kind point, then (when it reports battery or rssi) its `device_status` point."""
    lines = Lines()
    ok, aside = lines.append, lines.out_of_range.append
    for r, d in out.accepted:
        health = _health_fields(r)
        ts = _ns(r.ts)
        append = ok if MIN_NS <= ts <= MAX_NS else aside
        if (line := _reading_line(r, d, health, ts)) is not None:
            append(line)
        if health:
            tags = _device_tags(r.device_id, d.district, d.grid, r.kind, None)
            append(f"device_status{tags} {health}{_location(d.lat, d.lon)} {ts}")
    for t in out.transitions:
        append = ok if MIN_NS <= _ns(t.at) <= MAX_NS else aside
        append(transition_line(t))
        if t.transition in TERMINAL_STATUSES and (line := case_line(t)) is not None:
            append(line)
    for d, s, at in out.statuses:
        (ok if MIN_NS <= _ns(at) <= MAX_NS else aside)(status_line(d, s, at))
    return lines


# -- the sink ------------------------------------------------------------------------------------
