"""`citywatch report`: a static situation report for the daily briefing and for people without Grafana.

One self-contained HTML file (inline CSS and SVG; no script, no network) with the figures of the
dashboards: open alerts against their deadlines, the city map, the closed loop (time to
acknowledge and resolve, share within deadlines, alerts by district, grid and kind), the loop's
figures over the cases finished in the period per district and grid (`citywatch.loop.kpis`, as
GET /kpis), device health and, when InfluxDB is configured and reachable, the per-kind sensor
charts, computed with the dashboards' own InfluxQL (`citywatch.dashboards.queries`).

Sources: the alert store and device registry under data_dir (always there: alerts, transitions,
last seen, coordinates) and InfluxDB (optional: readings, battery and signal over time).
"""

from __future__ import annotations

import html
import json
import math
import re
import statistics
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
import msgspec

from citywatch.config import Settings
from citywatch.dashboards import queries as q
from citywatch.errors import CitywatchError
from citywatch.loop import kpis
from citywatch.model import KINDS, SEVERITY_RANK, Alert, Device, Transition

SEVERITY_COLOURS = {"info": "#2563eb", "warning": "#f59e0b", "critical": "#dc2626"}
OK_COLOUR, OFFLINE_COLOUR, UNKNOWN_COLOUR = "#16a34a", "#6b7280", "#cbd5e1"
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563",
           "#65a30d")
MAX_MAP_POINTS = 20000  # beyond this, devices without alerts are sampled (alerts are always drawn)
OPENINGS = ("opened", "flapping")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class ReportError(CitywatchError):
    pass


def parse_duration(text: str) -> float:
    """'90m', '24h', '7d' -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ReportError(f"duration {text!r}: use a number and s, m, h, d or w (e.g. 24h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


# -- collecting ------------------------------------------------------------------------------------

@dataclass
class ReportData:
    generated_at: float
    start: float
    end: float
    timezone: str
    review_h: float
    response_h: float
    devices: list[Device]
    last_seen: dict[str, float]
    open_alerts: list[Alert]
    transitions: list[Transition]  # in the range
    influx: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    influx_note: str = ""
    loop: dict[str, dict[str, Any]] = field(default_factory=dict)  # the loop's figures by district and by grid

    # derived figures ---------------------------------------------------------------------------

    def openings(self) -> list[Alert]:
        return [t.alert for t in self.transitions if t.transition in OPENINGS]

    def ages(self, transition: str) -> list[float]:
        return [t.at - t.alert.opened_at for t in self.transitions if t.transition == transition]

    def within(self, transition: str) -> tuple[int, int]:
        """(within the alert's own deadline, all) for acknowledged or resolved transitions."""
        done = [t for t in self.transitions if t.transition == transition]
        if transition == "acknowledged":
            ok = sum(1 for t in done if t.at <= t.alert.review_deadline)
        else:
            ok = sum(1 for t in done if t.at <= t.alert.response_deadline)
        return ok, len(done)

    def overdue(self) -> tuple[list[Alert], list[Alert]]:
        """(unacknowledged past the review deadline, unresolved past the response deadline)."""
        now = self.end
        review = [a for a in self.open_alerts if a.status == "open" and now >= a.review_deadline]
        response = [a for a in self.open_alerts if now >= a.response_deadline]
        return review, response

    def open_by_device(self) -> dict[str, list[Alert]]:
        found: dict[str, list[Alert]] = defaultdict(list)
        for a in self.open_alerts:
            found[a.device_id].append(a)
        return found


def collect(settings: Settings, since_s: float, now: float | None = None, use_influx: bool = True) -> ReportData:
    """Read the alert store and registry (and InfluxDB when configured) for the last `since_s`."""
    from citywatch.devices.registry import Registry, registry_path
    from citywatch.sinks.store import AlertStore, store_path

    end = time.time() if now is None else now
    start = end - since_s
    data_dir = settings.data_dir
    if not data_dir.is_dir():
        raise ReportError(f"data_dir {data_dir} does not exist: nothing to report")
    registry = Registry(registry_path(data_dir))
    store = AlertStore(store_path(data_dir))
    try:
        devices = registry.all()
        decode_alert = msgspec.json.Decoder(Alert).decode
        decode_transition = msgspec.json.Decoder(Transition).decode
        open_alerts = [decode_alert(body) for (body,) in store.conn.execute(
            "SELECT body FROM alerts WHERE status NOT IN ('resolved', 'closed') ORDER BY opened_at")]
        transitions = [decode_transition(body) for (body,) in store.conn.execute(
            "SELECT body FROM transitions WHERE at >= ? AND at <= ? ORDER BY at, id", (start, end))]
        last_seen = {device_id: float(state["seen"]) for device_id, state in store.device_states().items()
                     if isinstance(state.get("seen"), int | float)}
        loop = {by: kpis.compute(store.conn, start, end, [by], data_dir) for by in ("district", "grid")}
    finally:
        store.close()
        registry.close()
    data = ReportData(generated_at=time.time(), start=start, end=end, timezone=settings.timezone,
                      review_h=settings.alerts.review_deadline_h, response_h=settings.alerts.response_deadline_h,
                      devices=devices, last_seen=last_seen, open_alerts=open_alerts, transitions=transitions,
                      loop=loop)
    if not use_influx:
        data.influx_note = "InfluxDB not used (--no-influx): sensor charts omitted."
    elif not settings.influx.url:
        data.influx_note = "InfluxDB not configured (influx.url): sensor charts omitted."
    else:
        try:
            data.influx = influx_figures(settings, start, end)
        except ReportError as exc:
            data.influx_note = f"InfluxDB unavailable, sensor charts omitted: {exc}"
    return data


# -- InfluxDB (the dashboards' queries) ------------------------------------------------------------

def influx_query(settings: Settings, query: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """InfluxQL on the v1-compatible /query endpoint (InfluxDB 1.x; 2.x with a DBRP mapping; 3.x).
    Rows of every series as dicts, tags included; times in epoch seconds."""
    influx = settings.influx
    assert influx.url is not None
    body = urllib.parse.urlencode({"db": influx.bucket, "q": query, "epoch": "s"}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if influx.token is not None:
        headers["Authorization"] = f"Token {influx.token.get_secret_value()}"
    request = urllib.request.Request(influx.url.rstrip("/") + "/query", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ReportError(f"HTTP {exc.code} from {influx.url}/query") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ReportError(f"{influx.url}: {getattr(exc, 'reason', exc)}") from None
    rows: list[dict[str, Any]] = []
    for result in payload.get("results", []):
        if "error" in result:
            raise ReportError(f"InfluxQL error: {result['error']}")
        for series in result.get("series", []):
            tags = series.get("tags", {})
            for values in series.get("values", []):
                rows.append({**tags, **dict(zip(series["columns"], values, strict=True))})
    return rows


def _interval(span_s: float) -> str:
    minutes = max(1, math.ceil(span_s / 96 / 60))
    return f"{minutes}m"


INFLUX_FIGURES: dict[str, Any] = {
    "gas": q.gas_by_district,
    "noise": q.noise_by_zone,
    "water": q.water_depth,
    "water_rise": q.water_rise,
    "parking": q.parking_occupancy,
    "lock": q.lock_events,
    "battery": lambda: q.health_by_district("battery"),
    "rssi": lambda: q.health_by_district("rssi"),
}


def influx_figures(settings: Settings, start: float, end: float) -> dict[str, list[dict[str, Any]]]:
    """Every figure's rows; a figure with several queries gets its rows tagged by `_ref`."""
    time_filter = f"time >= {int(start * 1000)}ms and time <= {math.ceil(end * 1000)}ms"
    out: dict[str, list[dict[str, Any]]] = {}
    for name, make in INFLUX_FIGURES.items():
        targets = make()
        rows: list[dict[str, Any]] = []
        for target in targets if isinstance(targets, list) else [targets]:
            text = q.substitute(target.query, time_filter=time_filter, interval=_interval(end - start),
                                range_end_s=end)
            rows += [{**row, "_ref": target.ref_id} for row in influx_query(settings, text)]
        out[name] = rows
    return out


# -- SVG -------------------------------------------------------------------------------------------

def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def _svg(chart_id: str, width: int, height: int, title: str, body: Iterable[str]) -> str:
    return (f'<svg id="{_e(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">'
            f"<title>{_e(title)}</title>" + "".join(body) + "</svg>")


def _empty(chart_id: str, title: str, message: str = "nothing in this period") -> str:
    return _svg(chart_id, 640, 60, title, [
        '<rect x="0" y="0" width="640" height="60" fill="#f8fafc" stroke="#e2e8f0"/>',
        f'<text x="320" y="35" text-anchor="middle" class="muted">{_e(message)}</text>'])


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [math.floor(low / step) * step]
    while ticks[-1] < high - step * 1e-6:
        ticks.append(ticks[-1] + step)
    return ticks


def bar_chart(chart_id: str, title: str, items: Sequence[tuple[str, float]], unit: str = "",
              colours: Sequence[str] | None = None, lines: Sequence[tuple[float, str, str]] = (),
              width: int = 640) -> str:
    """Horizontal bars (label, value); `lines` are reference values (value, label, colour)."""
    if not items:
        return _empty(chart_id, title)
    label_w = int(min(340, max(80, 12 + 6.2 * max(len(label) for label, _ in items))))
    bar_h, gap, top, right = 18, 6, 24, 60
    height = top + len(items) * (bar_h + gap) + 24
    high = max([v for _, v in items] + [v for v, _, _ in lines] + [1e-9])
    scale = (width - label_w - right) / high
    body = [f'<text x="{label_w}" y="14" class="axis">{_e(unit)}</text>']
    for i, (label, value) in enumerate(items):
        y = top + i * (bar_h + gap)
        colour = colours[i] if colours else PALETTE[0]
        w = max(1.0, value * scale)
        body.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" class="label">{_e(label)}</text>')
        body.append(f'<rect class="bar" x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}">'
                    f"<title>{_e(label)}: {_n(value)} {_e(unit)}</title></rect>")
        body.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 13}" class="value">{_n(value)}</text>')
    bottom = top + len(items) * (bar_h + gap)
    for value, label, colour in lines:
        x = label_w + value * scale
        body.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{bottom}" stroke="{colour}" '
                    'stroke-dasharray="5 3" stroke-width="1.5"/>')
        body.append(f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle" class="axis ref" fill="{colour}">'
                    f"{_e(label)}</text>")
    return _svg(chart_id, width, height, title, body)


def line_chart(chart_id: str, title: str, series: dict[str, list[tuple[float, float]]], start: float, end: float,
               tz: ZoneInfo, unit: str = "", lines: Sequence[tuple[float, str, str]] = (),
               y_min: float | None = None, y_max: float | None = None, width: int = 900, height: int = 260,
               colours: dict[str, str] | None = None, bars: bool = False) -> str:
    """Time series (name -> [(epoch s, value)]) over [start, end], with reference lines."""
    series = {k: sorted(v) for k, v in series.items() if v}
    if not series:
        return _empty(chart_id, title)
    left, right, top, bottom = 56, 150, 16, 28
    values = [v for pts in series.values() for _, v in pts] + [v for v, _, _ in lines]
    low = min(values) if y_min is None else y_min
    high = max(values) if y_max is None else y_max
    if high <= low:
        high = low + 1
    ticks = _ticks(low, high)
    low, high = min(low, ticks[0]), max(high, ticks[-1])
    pw, ph = width - left - right, height - top - bottom

    def x(t: float) -> float:
        return left + (t - start) / max(end - start, 1) * pw

    def y(v: float) -> float:
        return top + ph - (v - low) / (high - low) * ph

    body = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#e2e8f0"/>']
    for tick in ticks:
        if low <= tick <= high:
            body.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#f1f5f9"/>')
            body.append(f'<text x="{left - 4}" y="{y(tick) + 4:.1f}" text-anchor="end" class="axis">{_n(tick)}</text>')
    span = end - start
    step = next(s for s in (3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400) if span / s <= 12)
    t = math.ceil(start / step) * step
    while t <= end:
        label = datetime.fromtimestamp(t, tz).strftime("%H:%M" if step < 86400 else "%m-%d")
        body.append(f'<text x="{x(t):.1f}" y="{height - 10}" text-anchor="middle" class="axis">{label}</text>')
        t += step
    body.append(f'<text x="{left}" y="{top - 4}" class="axis">{_e(unit)}</text>')
    merged: dict[float, tuple[list[str], str]] = {}
    for value, label, colour in lines:  # one line per value, its labels joined
        merged.setdefault(value, ([], colour))[0].append(label)
    for value, (labels, colour) in sorted(merged.items()):
        label = "; ".join(labels)
        if low <= value <= high:
            body.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                        f'stroke="{colour}" stroke-dasharray="6 3" stroke-width="1.5"/>')
            body.append(f'<text x="{left + pw - 4}" y="{y(value) - 3:.1f}" text-anchor="end" class="axis ref" '
                        f'fill="{colour}">{_e(label)}</text>')
    n = len(series)
    for i, (name, pts) in enumerate(sorted(series.items())):
        colour = (colours or {}).get(name, PALETTE[i % len(PALETTE)])
        if bars:
            slot = pw / max(len({t for s in series.values() for t, _ in s}), 1)
            w = max(1.0, slot / n * 0.8)
            for t0, v in pts:
                bx = x(t0) + i * w
                body.append(f'<rect class="bar" x="{bx:.1f}" y="{y(v):.1f}" width="{w:.1f}" '
                            f'height="{max(0.5, y(low) - y(v)):.1f}" fill="{colour}"/>')
        else:
            path = " ".join(f"{'M' if j == 0 else 'L'}{x(t0):.1f},{y(v):.1f}" for j, (t0, v) in enumerate(pts))
            body.append(f'<path class="series" d="{path}" fill="none" stroke="{colour}" stroke-width="1.6">'
                        f"<title>{_e(name)}</title></path>")
        ly = top + 12 + i * 16
        body.append(f'<rect x="{left + pw + 12}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
                    f'<text x="{left + pw + 26}" y="{ly}" class="label">{_e(name)}</text>')
    return _svg(chart_id, width, height, title, body)


def city_map(chart_id: str, data: ReportData, width: int = 900, height: int = 560) -> str:
    """Devices by lat/lon: open alerts coloured by their worst severity (triangles), devices
    offline grey, the rest green (pale when never seen)."""
    placed = [d for d in data.devices if d.lat is not None and d.lon is not None]
    if not placed:
        return _empty(chart_id, "City map", "no device has coordinates")
    lats = [d.lat for d in placed if d.lat is not None]
    lons = [d.lon for d in placed if d.lon is not None]
    mid_lat = (min(lats) + max(lats)) / 2
    kx = math.cos(math.radians(mid_lat))
    span_x = max((max(lons) - min(lons)) * kx, 1e-3)
    span_y = max(max(lats) - min(lats), 1e-3)
    pad, legend_h = 30, 30
    scale = min((width - 2 * pad) / span_x, (height - 2 * pad - legend_h) / span_y)
    ox = (width - span_x * scale) / 2
    oy = legend_h + (height - legend_h - span_y * scale) / 2

    def xy(d: Device) -> tuple[float, float]:
        assert d.lat is not None and d.lon is not None
        return ox + (d.lon - min(lons)) * kx * scale, oy + (max(lats) - d.lat) * scale

    open_by_device = data.open_by_device()
    body = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f8fafc" stroke="#e2e8f0"/>']
    districts: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for d in placed:
        districts[d.district].append(xy(d))
    for name, pts in sorted(districts.items()):
        if name:
            cx, cy = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
            body.append(f'<text x="{cx:.1f}" y="{cy:.1f}" text-anchor="middle" class="district">{_e(name)}</text>')
    quiet = [d for d in placed if d.id not in open_by_device]
    step = max(1, math.ceil(len(quiet) / MAX_MAP_POINTS))
    for d in quiet[::step]:
        x, y = xy(d)
        colour = OK_COLOUR if d.id in data.last_seen else UNKNOWN_COLOUR
        body.append(f'<circle class="device" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}" fill-opacity="0.75">'
                    f"<title>{_e(d.id)} ({_e(d.kind)}, {_e(d.district)} {_e(d.grid)})</title></circle>")
    alerting = sorted((d for d in placed if d.id in open_by_device),
                      key=lambda d: max(SEVERITY_RANK.get(a.severity, 0) for a in open_by_device[d.id]))
    for d in alerting:
        x, y = xy(d)
        alerts = open_by_device[d.id]
        worst = max(alerts, key=lambda a: SEVERITY_RANK.get(a.severity, 0))
        offline = any(a.rule == "device_offline" for a in alerts)
        fill = OFFLINE_COLOUR if offline and len(alerts) == 1 else SEVERITY_COLOURS.get(worst.severity, "#000")
        rules = ", ".join(sorted({a.rule for a in alerts}))
        body.append(f'<path class="alert" d="M{x:.1f},{y - 8:.1f} L{x + 7:.1f},{y + 5:.1f} L{x - 7:.1f},{y + 5:.1f} Z" '
                    f'fill="{fill}" stroke="#111827" stroke-width="0.8">'
                    f"<title>{_e(d.id)}: {_e(rules)} ({_e(worst.severity)})</title></path>")
    legend = [("ok", OK_COLOUR, "circle"), ("never seen", UNKNOWN_COLOUR, "circle"), ("offline", OFFLINE_COLOUR, "tri")]
    legend += [(f"{s} alert", c, "tri") for s, c in SEVERITY_COLOURS.items()]
    lx = 12
    for label, colour, shape in legend:
        if shape == "circle":
            body.append(f'<circle cx="{lx + 5}" cy="16" r="5" fill="{colour}"/>')
        else:
            body.append(f'<path d="M{lx + 5},9 L{lx + 11},21 L{lx - 1},21 Z" fill="{colour}" stroke="#111827" '
                        'stroke-width="0.8"/>')
        body.append(f'<text x="{lx + 16}" y="20" class="label">{_e(label)}</text>')
        lx += 22 + 7 * len(label)
    return _svg(chart_id, width, height, "City map", body)


# -- HTML ------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;margin:24px;color:#0f172a;
     background:#fff;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e2e8f0;
     padding-bottom:4px} h3{font-size:15px;margin:18px 0 6px}
.meta,.muted,.note{color:#64748b;font-size:13px} .note{background:#fff7ed;border:1px solid #fed7aa;padding:6px 10px}
.kpis{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.kpi{border:1px solid #e2e8f0;border-radius:6px;padding:8px 12px;min-width:130px}
.kpi b{display:block;font-size:22px} .kpi span{font-size:12px;color:#475569}
.kpi.bad b{color:#dc2626} .kpi.warn b{color:#d97706} .kpi.good b{color:#16a34a}
table{border-collapse:collapse;font-size:12px;margin:6px 0 12px} th,td{border-bottom:1px solid #e2e8f0;
     padding:3px 8px;text-align:left} th{background:#f8fafc}
svg.chart{display:block;margin:6px 0 14px;max-width:100%;height:auto}
svg .axis{font-size:10px;fill:#64748b} svg .label{font-size:11px;fill:#334155} svg .value{font-size:10px;fill:#334155}
svg .ref{paint-order:stroke;stroke:#fff;stroke-width:3px}
svg .district{font-size:13px;fill:#94a3b8;font-weight:600} svg .muted{font-size:12px;fill:#94a3b8}
.sev-critical{color:#dc2626;font-weight:600} .sev-warning{color:#d97706} .sev-info{color:#2563eb}
@media print{body{margin:8mm}}
"""


def _fmt_age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _share(ok: int, total: int) -> str:
    return f"{100 * ok / total:.0f}%" if total else "-"


def _kpi(label: str, value: Any, tone: str = "") -> str:
    return f'<div class="kpi {tone}"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], raw_cols: frozenset[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if i in raw_cols else _e(c)}</td>" for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _series(rows: list[dict[str, Any]], value: str, by: str | None = None, ref: str | None = None,
            label: str = "{}") -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if ref is not None and row.get("_ref") != ref:
            continue
        v = row.get(value)
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[label.format(row.get(by, "")) if by else value].append((float(row["time"]), float(v)))
    return dict(out)


def _share_of(figure: dict[str, Any]) -> str:
    """`{n, count, share}` as "75% (3/4)", or "-" when it applies to no case."""
    return "-" if not figure["n"] else f"{100 * figure['share']:.0f}% ({figure['count']}/{figure['n']})"


def _pct(figure: dict[str, Any]) -> str:
    return "-" if not figure["n"] else f"{100 * figure['share']:.0f}%"


def _median(figure: dict[str, Any]) -> str:
    return "-" if figure["median"] is None else _fmt_age(figure["median"])


LOOP_HEADERS = ("opened", "finished", "closed at grid level", "ack/assigned within review",
                "closed within response", "reopened after rectification", "resolved without dispatch",
                "median to ack/assign", "median to rectify", "median to verified closure")
MAX_GRID_ROWS = 40


def _loop_cells(g: dict[str, Any]) -> tuple[Any, ...]:
    return (g["opened"], g["finished"], _share_of(g["closed_at_grid_level"]), _share_of(g["within_review"]),
            _share_of(g["within_response"]), _share_of(g["reopened_after_rectification"]),
            g["resolved_without_dispatch"], _median(g["time_to_ack_s"]), _median(g["time_to_rectify_s"]),
            _median(g["time_to_verified_close_s"]))


def _loop_section(data: ReportData) -> list[str]:
    """The loop's figures over the cases finished in the period: city tiles, then per district and grid."""
    if not data.loop:
        return []
    total, districts = data.loop["district"]["total"], data.loop["district"]["groups"]
    grid_share = total["closed_at_grid_level"]
    tone = "" if not grid_share["n"] else "good" if grid_share["share"] >= 0.9 else "warn"
    tiles = "".join([
        _kpi(f"closed at grid level ({grid_share['n']} closed)", _pct(grid_share), tone),
        _kpi("ack/assigned within review deadline", _pct(total["within_review"])),
        _kpi("closed within response deadline", _pct(total["within_response"])),
        _kpi("reopened after rectification", _pct(total["reopened_after_rectification"])),
        _kpi("median time to ack/assign", _median(total["time_to_ack_s"])),
        _kpi("median time to rectify", _median(total["time_to_rectify_s"])),
        _kpi("median time to verified closure", _median(total["time_to_verified_close_s"])),
        _kpi("cases finished", total["finished"]),
        _kpi("resolved without dispatch", total["resolved_without_dispatch"]),
    ])
    shares = [(g["key"]["district"] or "-", 100 * g["closed_at_grid_level"]["share"]) for g in districts
              if g["closed_at_grid_level"]["n"]]
    grids = sorted((g for g in data.loop["grid"]["groups"] if g["finished"] or g["opened"]),
                   key=lambda g: (-g["finished"], -g["opened"], tuple(g["key"].values())))
    more = len(grids) - MAX_GRID_ROWS
    return [
        '<p class="muted">Cases (alerts) finished in the period, closed or resolved; shares count only the cases '
        "each applies to (see GET /kpis). The city's aim: over 90% closed at the grid level.</p>",
        f'<div class="kpis">{tiles}</div>',
        "<h3>Closed at grid level by district</h3>",
        bar_chart("chart-grid-level", "Closed at grid level by district", shares, "% of closed cases",
                  [OK_COLOUR if v >= 90 else SEVERITY_COLOURS["warning"] if v >= 80 else SEVERITY_COLOURS["critical"]
                   for _, v in shares], lines=[(90.0, "90%", "#16a34a")]),
        "<h3>By district</h3>",
        _table(("district", *LOOP_HEADERS), [(g["key"]["district"] or "-", *_loop_cells(g)) for g in districts])
        if districts else '<p class="muted">No cases in this period.</p>',
        f"<h3>By grid (most cases first{f', top {MAX_GRID_ROWS}' if more > 0 else ''})</h3>",
        _table(("district", "community", "grid", *LOOP_HEADERS),
               [(g["key"]["district"] or "-", g["key"]["community"] or "-", g["key"]["grid"] or "-", *_loop_cells(g))
                for g in grids[:MAX_GRID_ROWS]]) if grids else '<p class="muted">No cases in this period.</p>',
        f'<p class="muted">{more} more grids: GET /kpis?by=grid lists them all.</p>' if more > 0 else "",
    ]


def _sensor_section(data: ReportData, settings: Settings, tz: ZoneInfo) -> list[str]:
    rows = data.influx
    rules = settings.rules
    if not rows:
        return [f'<p class="note">{_e(data.influx_note)}</p>'] if data.influx_note else []
    s, e = data.start, data.end
    parts = []
    gas = rules.gas
    parts.append("<h3>Gas: highest %LEL by district</h3>")
    parts.append(line_chart("chart-gas", "Gas %LEL by district", _series(rows["gas"], "lel_pct", "district"), s, e,
                            tz, "%LEL", [(gas.level1_pct, f"level 1 ({_n(gas.level1_pct)}%)", "#f59e0b"),
                                         (gas.level2_pct, f"level 2 ({_n(gas.level2_pct)}%)", "#dc2626")], y_min=0))
    noise = _series(rows["noise"], "laeq_db", "zone", label="zone {}")
    limits = rules.noise.limits
    noise_lines = []
    for name in sorted(noise):
        zone = name.removeprefix("zone ")
        if zone in limits:
            day, night = limits[zone]
            noise_lines += [(float(night), f"{name} night", "#f59e0b"), (float(day), f"{name} day", "#dc2626")]
    parts.append("<h3>Noise: loudest LAeq by zone class, with each zone's day and night limits</h3>")
    parts.append(line_chart("chart-noise", "Noise LAeq by zone class", noise, s, e, tz, "dB(A)", noise_lines))
    water = rules.water
    parts.append("<h3>Water: deepest ponding by district</h3>")
    parts.append(line_chart("chart-water", "Water depth by district", _series(rows["water"], "depth_cm", "district"),
                            s, e, tz, "cm", [(water.light_cm, "light", "#ca8a04"), (water.moderate_cm, "moderate",
                                                                                    "#f59e0b"),
                                             (water.severe_cm, "severe", "#dc2626")], y_min=0))
    parts.append("<h3>Water: fastest rise (cm per 10 min) by district</h3>")
    parts.append(line_chart("chart-water-rise", "Water rise rate", _series(rows["water_rise"], "rise_cm_10min",
                                                                            "district"), s, e, tz, "cm/10 min"))
    occupied = {r["time"]: r["occupied_bays"] for r in rows["parking"] if r.get("_ref") == "A"}
    reporting = {r["time"]: r["reporting_bays"] for r in rows["parking"] if r.get("_ref") == "B"}
    occupancy = [(float(t), 100.0 * occupied.get(t, 0) / n) for t, n in sorted(reporting.items()) if n]
    parts.append("<h3>Parking: occupancy of reporting bays</h3>")
    parts.append(line_chart("chart-parking", "Parking occupancy", {"occupancy": occupancy}, s, e, tz, "%",
                            y_min=0, y_max=100))
    lock: dict[str, list[tuple[float, float]]] = {}
    for target in q.lock_events():
        alias = target.columns[-1]
        lock.update(_series(rows["lock"], alias, ref=target.ref_id))
    parts.append("<h3>Locks: security-relevant events</h3>")
    parts.append(line_chart("chart-lock", "Lock events", lock, s, e, tz, "events", y_min=0, bars=True))
    return parts


def render_html(data: ReportData, settings: Settings) -> str:
    tz = ZoneInfo(data.timezone)

    def when(ts: float | None) -> str:
        return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M") if ts else "-"

    review_s, response_s = data.review_h * 3600, data.response_h * 3600
    past_review, past_response = data.overdue()
    critical = [a for a in data.open_alerts if a.severity == "critical"]
    offline = [a for a in data.open_alerts if a.rule == "device_offline"]
    low_battery = [a for a in data.open_alerts if a.rule == "battery_low"]
    acks, resolves = data.ages("acknowledged"), data.ages("resolved")
    ack_ok, ack_n = data.within("acknowledged")
    res_ok, res_n = data.within("resolved")
    openings = data.openings()
    escalations = sum(1 for t in data.transitions if t.transition == "escalated")
    by_id = {d.id: d for d in data.devices}
    span_h = (data.end - data.start) / 3600

    kpis = "".join([
        _kpi("open alerts", len(data.open_alerts), "warn" if data.open_alerts else "good"),
        _kpi("critical open", len(critical), "bad" if critical else "good"),
        _kpi(f"unacknowledged past {_n(data.review_h)} h", len(past_review), "bad" if past_review else "good"),
        _kpi(f"unresolved past {_n(data.response_h)} h", len(past_response), "bad" if past_response else "good"),
        _kpi("devices offline", len(offline), "warn" if offline else "good"),
        _kpi(f"alerts opened ({_n(span_h)} h)", len(openings)),
        _kpi("median time to acknowledge", _fmt_age(statistics.median(acks)) if acks else "-"),
        _kpi("median time to resolve", _fmt_age(statistics.median(resolves)) if resolves else "-"),
        _kpi(f"acknowledged within deadline ({ack_n})", _share(ack_ok, ack_n)),
        _kpi(f"resolved within deadline ({res_n})", _share(res_ok, res_n)),
        _kpi("escalations", escalations, "warn" if escalations else ""),
    ])

    open_sorted = sorted(data.open_alerts, key=lambda a: a.opened_at)
    age_items = [(f"{a.device_id} {a.rule}", (data.end - a.opened_at) / 3600) for a in open_sorted[:40]]
    age_colours = [SEVERITY_COLOURS.get(a.severity, "#000") for a in open_sorted[:40]]
    open_rows = []
    for a in open_sorted:
        age = data.end - a.opened_at
        missed = [name for name, late in (("review", a.status == "open" and data.end >= a.review_deadline),
                                          ("response", data.end >= a.response_deadline)) if late]
        due = f"{' and '.join(missed)} overdue" if missed else "within deadlines"
        where = a.device or {}
        open_rows.append((_fmt_age(age), f'<span class="sev-{_e(a.severity)}">{_e(a.severity)}</span>', a.status,
                          due, a.rule, a.device_id, where.get("district", ""), where.get("grid", ""),
                          "" if a.value is None else a.value, _e(a.message)))

    districts = Counter((a.device or {}).get("district") or "-" for a in openings)
    grids = Counter(f"{(a.device or {}).get('district') or '-'} / {(a.device or {}).get('grid') or '-'}"
                    for a in openings)
    kinds = Counter(a.kind for a in openings)
    rules_count = Counter((a.kind, a.rule) for a in openings)
    hourly: dict[str, list[tuple[float, float]]] = defaultdict(list)
    per_hour: Counter[tuple[str, float]] = Counter()
    for t in data.transitions:
        if t.transition in OPENINGS:
            per_hour[(t.alert.kind, math.floor(t.at / 3600) * 3600)] += 1
    for (kind, hour), n in sorted(per_hour.items()):
        hourly[kind].append((hour, float(n)))

    def buckets(ages: list[float]) -> list[tuple[str, float]]:
        edges = [(0, 900, "< 15 min"), (900, 3600, "15-60 min"), (3600, review_s, f"1-{_n(data.review_h)} h"),
                 (review_s, response_s, f"{_n(data.review_h)}-{_n(data.response_h)} h"),
                 (response_s, math.inf, f"> {_n(data.response_h)} h")]
        return [(label, float(sum(1 for a in ages if lo <= a < hi))) for lo, hi, label in edges]

    offline_rows = []
    for a in sorted(offline, key=lambda a: a.opened_at):
        d = by_id.get(a.device_id)
        offline_rows.append((a.device_id, a.kind, d.district if d else "", d.grid if d else "",
                             when(data.last_seen.get(a.device_id)), _fmt_age(data.end - a.opened_at), a.status))
    battery_rows = [(a.device_id, a.kind, (a.device or {}).get("district", ""), "" if a.value is None else a.value,
                     _fmt_age(data.end - a.opened_at)) for a in low_battery]
    never_seen = sum(1 for d in data.devices if d.id not in data.last_seen)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>citywatch situation report {_e(when(data.end))}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>City situation report</h1>",
        f'<p class="meta">{_e(when(data.start))} to {_e(when(data.end))} ({_e(data.timezone)}); '
        f"{len(data.devices)} registered devices; deadlines: review {_n(data.review_h)} h, response "
        f"{_n(data.response_h)} h.</p>",
        f'<section id="kpis"><div class="kpis">{kpis}</div></section>',
        '<section id="map"><h2>City map</h2>',
        city_map("chart-map", data),
        "</section>",
        '<section id="open-alerts"><h2>Open alerts and deadlines</h2>',
        '<p class="muted">Age of each unresolved alert (oldest first, at most 40), against the review and '
        "response deadlines.</p>",
        bar_chart("chart-open-ages", "Open alerts by age", age_items, "hours", age_colours,
                  [(data.review_h, f"review {_n(data.review_h)} h", "#f59e0b"),
                   (data.response_h, f"response {_n(data.response_h)} h", "#dc2626")], width=900),
        _table(("age", "severity", "status", "deadline", "rule", "device", "district", "grid", "value",
                "message"), open_rows, frozenset({1, 9})) if open_rows else '<p class="muted">No open alerts.</p>',
        "</section>",
        '<section id="closed-loop"><h2>Closed loop</h2>',
        "<h3>Time to acknowledge and to resolve</h3>",
        bar_chart("chart-ack-times", "Time to acknowledge", buckets(acks), "alerts acknowledged",
                  [PALETTE[0]] * 5),
        bar_chart("chart-resolve-times", "Time to resolve", buckets(resolves), "alerts resolved", [PALETTE[2]] * 5),
        "<h3>Alerts opened per hour, by kind</h3>",
        line_chart("chart-timeline", "Alerts opened per hour", dict(hourly), data.start, data.end, tz, "alerts",
                   y_min=0, bars=True),
        "<h3>Alerts opened by district</h3>",
        bar_chart("chart-by-district", "Alerts by district", districts.most_common(), "alerts"),
        "<h3>Alerts opened by grid (top 15)</h3>",
        bar_chart("chart-by-grid", "Alerts by grid", grids.most_common(15), "alerts"),
        "<h3>Alerts opened by kind</h3>",
        bar_chart("chart-by-kind", "Alerts by kind", [(k, float(kinds[k])) for k in KINDS if kinds[k]], "alerts"),
        _table(("kind", "rule", "opened"), [(k, r, n) for (k, r), n in sorted(rules_count.items())]),
        "</section>",
        '<section id="loop-figures"><h2>The loop\'s figures</h2>',
        *_loop_section(data),
        "</section>",
        '<section id="sensors"><h2>Sensors by kind</h2>',
        *_sensor_section(data, settings, tz),
        "</section>",
        '<section id="health"><h2>Device health</h2>',
        f'<p class="muted">{len(offline)} offline, {len(low_battery)} with low battery, {never_seen} never seen '
        "by this installation.</p>",
    ]
    if data.influx:
        parts += [
            "<h3>Lowest battery by district</h3>",
            line_chart("chart-battery", "Lowest battery by district", _series(data.influx["battery"], "battery",
                                                                              "district"),
                       data.start, data.end, tz, "%", [(settings.rules.health.battery_low_pct, "low", "#dc2626")]),
            "<h3>Weakest signal by district</h3>",
            line_chart("chart-rssi", "Weakest RSSI by district", _series(data.influx["rssi"], "rssi", "district"),
                       data.start, data.end, tz, "dBm"),
        ]
    parts += [
        "<h3>Offline devices</h3>",
        _table(("device", "kind", "district", "grid", "last seen", "offline for", "status"), offline_rows)
        if offline_rows else '<p class="muted">None.</p>',
        "<h3>Low battery</h3>",
        _table(("device", "kind", "district", "battery %", "since"), battery_rows)
        if battery_rows else '<p class="muted">None.</p>',
        "</section>",
        f'<p class="meta">Generated {_e(when(data.generated_at))} by citywatch from the alert store'
        f"{' and InfluxDB' if data.influx else ''}.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(settings: Settings, since_s: float, out: Path, now: float | None = None,
                 use_influx: bool = True) -> ReportData:
    data = collect(settings, since_s, now, use_influx)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(data, settings), encoding="utf-8")
    return data


@click.command("report")
@click.option("--since", default="24h", show_default=True, help="Look back this far: 90m, 24h, 7d.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True, help="The HTML file to write.")
@click.option("--no-influx", is_flag=True, help="Only the alert store and registry (no sensor charts).")
@click.pass_context
def report_command(ctx: click.Context, since: str, out: Path, no_influx: bool) -> None:
    """Write a self-contained HTML situation report (map, alerts, closed loop, sensors, health)."""
    root = ctx.find_root().obj
    settings: Settings = root.settings if root is not None else Settings()
    try:
        data = write_report(settings, parse_duration(since), out, use_influx=not no_influx)
    except CitywatchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out}: {len(data.open_alerts)} open alerts, {len(data.openings())} opened since {since}")
    if data.influx_note:
        click.echo(data.influx_note, err=True)

