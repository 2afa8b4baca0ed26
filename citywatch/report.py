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
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
import msgspec

from citywatch.alert_text import alert_message
from citywatch.charts import PALETTE as PALETTE
from citywatch.charts import SensorReport, _e, _empty, _n, _svg, _width, bar_chart, line_chart
from citywatch.charts import series as _series
from citywatch.config import Settings
from citywatch.dashboards import queries as q
from citywatch.detectors.record import stored_seen
from citywatch.errors import CitywatchError
from citywatch.i18n import N_, Translator, local_time, translator
from citywatch.kinds import specs
from citywatch.labels import label as code_label
from citywatch.loop import kpis
from citywatch.model import KINDS, SEVERITY_RANK, Alert, Device, Transition

SEVERITY_COLOURS = {"info": "#2563eb", "warning": "#f59e0b", "critical": "#dc2626"}
OK_COLOUR, OFFLINE_COLOUR, UNKNOWN_COLOUR = "#16a34a", "#6b7280", "#cbd5e1"
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
        raise ReportError(f"duration {text!r}: use a number and s, m, h, d or w (e.g. 24h)")  # API too: English
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
    influx_note: str = ""  # why there are no sensor charts (English; `note(tr)` in a language)
    influx_note_id: tuple[str, dict[str, Any]] = ("", {})  # the same as (message id, fields)
    loop: dict[str, dict[str, Any]] = field(default_factory=dict)  # the loop's figures by district and by grid

    # derived figures ---------------------------------------------------------------------------

    def note(self, tr: Translator) -> str:
        """Why there are no sensor charts, in `tr`'s language ("" when there are)."""
        msgid, fields = self.influx_note_id
        return tr.gettext(msgid, **fields) if msgid else self.influx_note

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
        raise ReportError(translator_for(settings).gettext("data_dir {dir} does not exist: nothing to report",
                                                           dir=data_dir))
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
        last_seen = {device_id: seen for device_id, state in store.device_states().items()
                     if (seen := stored_seen(state)) is not None}
        loop = {by: kpis.compute(store.conn, start, end, [by], data_dir) for by in ("district", "grid")}
    finally:
        store.close()
        registry.close()
    data = ReportData(generated_at=time.time(), start=start, end=end, timezone=settings.timezone,
                      review_h=settings.alerts.review_deadline_h, response_h=settings.alerts.response_deadline_h,
                      devices=devices, last_seen=last_seen, open_alerts=open_alerts, transitions=transitions,
                      loop=loop)
    if not use_influx:
        data.influx_note_id = (N_("InfluxDB not used (--no-influx): sensor charts omitted."), {})
    elif not settings.influx.url:
        data.influx_note_id = (N_("InfluxDB not configured (influx.url): sensor charts omitted."), {})
    else:
        try:
            data.influx = influx_figures(settings, start, end)
        except ReportError as exc:
            data.influx_note_id = (N_("InfluxDB unavailable, sensor charts omitted: {error}"), {"error": str(exc)})
    if data.influx_note_id[0]:
        data.influx_note = data.note(translator("en"))
    return data


def translator_for(settings: Settings) -> Translator:
    """The report's language: settings.language."""
    return translator(settings.language)


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


# figure name -> its queries: each kind's (KindSpec.report_figures) and the devices' health.
INFLUX_FIGURES: dict[str, Any] = {
    **{name: make for kind in specs().values() for name, make in kind.report_figures.items()},
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

def city_map(chart_id: str, data: ReportData, width: int = 900, height: int = 560,
             tr: Translator | None = None) -> str:
    """Devices by lat/lon: open alerts coloured by their worst severity (triangles), devices
    offline grey, the rest green (pale when never seen)."""
    tr = tr or translator("en")
    placed = [d for d in data.devices if d.lat is not None and d.lon is not None]
    if not placed:
        return _empty(chart_id, tr.gettext("City map"), tr.gettext("no device has coordinates"))
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
                    f"<title>{_e(d.id)} ({_e(code_label(tr, 'kind', d.kind))}, {_e(d.district)} {_e(d.grid)})"
                    "</title></circle>")
    alerting = sorted((d for d in placed if d.id in open_by_device),
                      key=lambda d: max(SEVERITY_RANK.get(a.severity, 0) for a in open_by_device[d.id]))
    for d in alerting:
        x, y = xy(d)
        alerts = open_by_device[d.id]
        worst = max(alerts, key=lambda a: SEVERITY_RANK.get(a.severity, 0))
        offline = any(a.rule == "device_offline" for a in alerts)
        fill = OFFLINE_COLOUR if offline and len(alerts) == 1 else SEVERITY_COLOURS.get(worst.severity, "#000")
        rules = tr.gettext(", ").join(sorted({code_label(tr, "rule", a.rule) for a in alerts}))
        body.append(f'<path class="alert" d="M{x:.1f},{y - 8:.1f} L{x + 7:.1f},{y + 5:.1f} L{x - 7:.1f},{y + 5:.1f} Z" '
                    f'fill="{fill}" stroke="#111827" stroke-width="0.8">'
                    f"<title>{_e(d.id)}: {_e(rules)} ({_e(code_label(tr, 'severity', worst.severity))})</title></path>")
    legend = [(tr.gettext("ok"), OK_COLOUR, "circle"), (tr.gettext("never seen"), UNKNOWN_COLOUR, "circle"),
              (tr.gettext("offline"), OFFLINE_COLOUR, "tri")]
    legend += [(tr.gettext("{severity} alert", severity=code_label(tr, "severity", s)), c, "tri")
               for s, c in SEVERITY_COLOURS.items()]
    lx = 12
    for label, colour, shape in legend:
        if shape == "circle":
            body.append(f'<circle cx="{lx + 5}" cy="16" r="5" fill="{colour}"/>')
        else:
            body.append(f'<path d="M{lx + 5},9 L{lx + 11},21 L{lx - 1},21 Z" fill="{colour}" stroke="#111827" '
                        'stroke-width="0.8"/>')
        body.append(f'<text x="{lx + 16}" y="20" class="label">{_e(label)}</text>')
        lx += 22 + round(_width(label, 7))
    return _svg(chart_id, width, height, tr.gettext("City map"), body)


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


def _fmt_age(seconds: float, tr: Translator) -> str:
    if seconds < 3600:
        return tr.gettext("{n} min", n=format(seconds / 60, ".0f"))
    if seconds < 86400:
        return tr.gettext("{n} h", n=format(seconds / 3600, ".1f"))
    return tr.gettext("{n} d", n=format(seconds / 86400, ".1f"))


def _share(ok: int, total: int) -> str:
    return f"{100 * ok / total:.0f}%" if total else "-"


def _kpi(label: str, value: Any, tone: str = "") -> str:
    return f'<div class="kpi {tone}"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], raw_cols: frozenset[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if i in raw_cols else _e(c)}</td>" for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _share_of(figure: dict[str, Any]) -> str:
    """`{n, count, share}` as "75% (3/4)", or "-" when it applies to no case."""
    return "-" if not figure["n"] else f"{100 * figure['share']:.0f}% ({figure['count']}/{figure['n']})"


def _pct(figure: dict[str, Any]) -> str:
    return "-" if not figure["n"] else f"{100 * figure['share']:.0f}%"


def _median(figure: dict[str, Any], tr: Translator) -> str:
    return "-" if figure["median"] is None else _fmt_age(figure["median"], tr)


LOOP_HEADERS = (N_("opened"), N_("finished"), N_("closed at grid level"), N_("ack/assigned within review"),
                N_("closed within response"), N_("reopened after rectification"), N_("resolved without dispatch"),
                N_("median to ack/assign"), N_("median to rectify"), N_("median to verified closure"))
MAX_GRID_ROWS = 40


def _loop_cells(g: dict[str, Any], tr: Translator) -> tuple[Any, ...]:
    return (g["opened"], g["finished"], _share_of(g["closed_at_grid_level"]), _share_of(g["within_review"]),
            _share_of(g["within_response"]), _share_of(g["reopened_after_rectification"]),
            g["resolved_without_dispatch"], _median(g["time_to_ack_s"], tr), _median(g["time_to_rectify_s"], tr),
            _median(g["time_to_verified_close_s"], tr))


def _loop_section(data: ReportData, tr: Translator) -> list[str]:
    """The loop's figures over the cases finished in the period: city tiles, then per district and grid."""
    if not data.loop:
        return []
    _ = tr.gettext
    headers = tuple(_(h) for h in LOOP_HEADERS)
    total, districts = data.loop["district"]["total"], data.loop["district"]["groups"]
    grid_share = total["closed_at_grid_level"]
    tone = "" if not grid_share["n"] else "good" if grid_share["share"] >= 0.9 else "warn"
    tiles = "".join([
        _kpi(_("closed at grid level ({n} closed)", n=grid_share["n"]), _pct(grid_share), tone),
        _kpi(_("ack/assigned within review deadline"), _pct(total["within_review"])),
        _kpi(_("closed within response deadline"), _pct(total["within_response"])),
        _kpi(_("reopened after rectification"), _pct(total["reopened_after_rectification"])),
        _kpi(_("median time to ack/assign"), _median(total["time_to_ack_s"], tr)),
        _kpi(_("median time to rectify"), _median(total["time_to_rectify_s"], tr)),
        _kpi(_("median time to verified closure"), _median(total["time_to_verified_close_s"], tr)),
        _kpi(_("cases finished"), total["finished"]),
        _kpi(_("resolved without dispatch"), total["resolved_without_dispatch"]),
    ])
    shares = [(g["key"]["district"] or "-", 100 * g["closed_at_grid_level"]["share"]) for g in districts
              if g["closed_at_grid_level"]["n"]]
    grids = sorted((g for g in data.loop["grid"]["groups"] if g["finished"] or g["opened"]),
                   key=lambda g: (-g["finished"], -g["opened"], tuple(g["key"].values())))
    more = len(grids) - MAX_GRID_ROWS
    no_cases = '<p class="muted">' + _e(_("No cases in this period.")) + "</p>"
    intro = _("Cases (alerts) finished in the period, closed or resolved; shares count only the cases each applies "
              "to (see GET /kpis). The city's aim: over 90% closed at the grid level.")
    return [
        f'<p class="muted">{_e(intro)}</p>',
        f'<div class="kpis">{tiles}</div>',
        "<h3>" + _e(_("Closed at grid level by district")) + "</h3>",
        bar_chart("chart-grid-level", _("Closed at grid level by district"), shares, _("% of closed cases"),
                  [OK_COLOUR if v >= 90 else SEVERITY_COLOURS["warning"] if v >= 80 else SEVERITY_COLOURS["critical"]
                   for _v, v in shares], lines=[(90.0, "90%", "#16a34a")], tr=tr),
        "<h3>" + _e(_("By district")) + "</h3>",
        _table((_("district"), *headers), [(g["key"]["district"] or "-", *_loop_cells(g, tr)) for g in districts])
        if districts else no_cases,
        "<h3>" + _e(_("By grid (most cases first, top {n})", n=MAX_GRID_ROWS) if more > 0
                    else _("By grid (most cases first)")) + "</h3>",
        _table((_("district"), _("community"), _("grid"), *headers),
               [(g["key"]["district"] or "-", g["key"]["community"] or "-", g["key"]["grid"] or "-",
                 *_loop_cells(g, tr)) for g in grids[:MAX_GRID_ROWS]]) if grids else no_cases,
        '<p class="muted">' + _e(_("{n} more grids: GET /kpis?by=grid lists them all.", n=more)) + "</p>"
        if more > 0 else "",
    ]


def _sensor_section(data: ReportData, settings: Settings, tz: ZoneInfo, tr: Translator) -> list[str]:
    """Each kind's charts, as the kind draws them (KindSpec.report)."""
    if not data.influx:
        return [f'<p class="note">{_e(data.note(tr))}</p>'] if data.influx_note else []
    report = SensorReport(data.influx, settings.rules, data.start, data.end, tz, tr)
    return [part for kind in specs().values() if kind.report is not None for part in kind.report(report)]


def render_html(data: ReportData, settings: Settings) -> str:
    """The report in settings.language, times in the report's zone with their offset."""
    tz = ZoneInfo(data.timezone)
    tr = translator_for(settings)
    _ = tr.gettext

    def when(ts: float | None) -> str:
        return local_time(ts, data.timezone) if ts else "-"

    def age(seconds: float) -> str:
        return _fmt_age(seconds, tr)

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
        _kpi(_("open alerts"), len(data.open_alerts), "warn" if data.open_alerts else "good"),
        _kpi(_("critical open"), len(critical), "bad" if critical else "good"),
        _kpi(_("unacknowledged past {n} h", n=_n(data.review_h)), len(past_review), "bad" if past_review else "good"),
        _kpi(_("unresolved past {n} h", n=_n(data.response_h)), len(past_response),
             "bad" if past_response else "good"),
        _kpi(_("devices offline"), len(offline), "warn" if offline else "good"),
        _kpi(_("alerts opened ({n} h)", n=_n(span_h)), len(openings)),
        _kpi(_("median time to acknowledge"), age(statistics.median(acks)) if acks else "-"),
        _kpi(_("median time to resolve"), age(statistics.median(resolves)) if resolves else "-"),
        _kpi(_("acknowledged within deadline ({n})", n=ack_n), _share(ack_ok, ack_n)),
        _kpi(_("resolved within deadline ({n})", n=res_n), _share(res_ok, res_n)),
        _kpi(_("escalations"), escalations, "warn" if escalations else ""),
    ])

    def rule(code: str) -> str:
        return code_label(tr, "rule", code)

    def kind(code: str) -> str:
        return code_label(tr, "kind", code)

    open_sorted = sorted(data.open_alerts, key=lambda a: a.opened_at)
    age_items = [(f"{a.device_id} {rule(a.rule)}", (data.end - a.opened_at) / 3600) for a in open_sorted[:40]]
    age_colours = [SEVERITY_COLOURS.get(a.severity, "#000") for a in open_sorted[:40]]
    open_rows = []
    for a in open_sorted:
        review_late = a.status == "open" and data.end >= a.review_deadline
        response_late = data.end >= a.response_deadline
        due = (_("review and response overdue") if review_late and response_late else _("review overdue")
               if review_late else _("response overdue") if response_late else _("within deadlines"))
        where = a.device or {}
        severity = code_label(tr, "severity", a.severity)
        open_rows.append((age(data.end - a.opened_at), f'<span class="sev-{_e(a.severity)}">{_e(severity)}</span>',
                          code_label(tr, "alert status", a.status), due, rule(a.rule), a.device_id,
                          where.get("district", ""), where.get("grid", ""), "" if a.value is None else a.value,
                          _e(alert_message(tr, a))))

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
    for (kind_code, hour), n in sorted(per_hour.items()):
        hourly[kind(kind_code)].append((hour, float(n)))

    def buckets(ages: list[float]) -> list[tuple[str, float]]:
        review, response = _n(data.review_h), _n(data.response_h)
        edges = [(0, 900, _("< 15 min")), (900, 3600, _("15-60 min")), (3600, review_s, _("1-{n} h", n=review)),
                 (review_s, response_s, _("{low}-{high} h", low=review, high=response)),
                 (response_s, math.inf, _("> {n} h", n=response))]
        return [(label, float(sum(1 for a in ages if lo <= a < hi))) for lo, hi, label in edges]

    offline_rows = []
    for a in sorted(offline, key=lambda a: a.opened_at):
        d = by_id.get(a.device_id)
        offline_rows.append((a.device_id, kind(a.kind), d.district if d else "", d.grid if d else "",
                             when(data.last_seen.get(a.device_id)), age(data.end - a.opened_at),
                             code_label(tr, "alert status", a.status)))
    battery_rows = [(a.device_id, kind(a.kind), (a.device or {}).get("district", ""),
                     "" if a.value is None else a.value, age(data.end - a.opened_at)) for a in low_battery]
    never_seen = sum(1 for d in data.devices if d.id not in data.last_seen)
    none = '<p class="muted">' + _e(_("None.")) + "</p>"
    loop_heading = _("The loop's figures")
    generated = (_("Generated {time} by citywatch from the alert store and InfluxDB.", time=when(data.generated_at))
                 if data.influx else _("Generated {time} by citywatch from the alert store.",
                                       time=when(data.generated_at)))

    parts = [
        "<!DOCTYPE html>",
        f'<html lang="{_e(tr.language)}"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>" + _e(_("citywatch situation report {time}", time=when(data.end))) + "</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>" + _e(_("City situation report")) + "</h1>",
        '<p class="meta">' + _e(_("{start} to {end} ({zone}); {n} registered devices; deadlines: review {review} h, "
                                  "response {response} h.", start=when(data.start), end=when(data.end),
                                  zone=data.timezone, n=len(data.devices), review=_n(data.review_h),
                                  response=_n(data.response_h))) + "</p>",
        f'<section id="kpis"><div class="kpis">{kpis}</div></section>',
        '<section id="map"><h2>' + _e(_("City map")) + "</h2>",
        city_map("chart-map", data, tr=tr),
        "</section>",
        '<section id="open-alerts"><h2>' + _e(_("Open alerts and deadlines")) + "</h2>",
        '<p class="muted">' + _e(_("Age of each unresolved alert (oldest first, at most 40), against the review and "
                                   "response deadlines.")) + "</p>",
        bar_chart("chart-open-ages", _("Open alerts by age"), age_items, _("hours"), age_colours,
                  [(data.review_h, _("review {n} h", n=_n(data.review_h)), "#f59e0b"),
                   (data.response_h, _("response {n} h", n=_n(data.response_h)), "#dc2626")], width=900, tr=tr),
        _table((_("age"), _("severity"), _("status"), _("deadline"), _("rule"), _("device"), _("district"), _("grid"),
                _("value"), _("message")), open_rows, frozenset({1, 9})) if open_rows
        else '<p class="muted">' + _e(_("No open alerts.")) + "</p>",
        "</section>",
        '<section id="closed-loop"><h2>' + _e(_("Closed loop")) + "</h2>",
        "<h3>" + _e(_("Time to acknowledge and to resolve")) + "</h3>",
        bar_chart("chart-ack-times", _("Time to acknowledge"), buckets(acks), _("alerts acknowledged"),
                  [PALETTE[0]] * 5, tr=tr),
        bar_chart("chart-resolve-times", _("Time to resolve"), buckets(resolves), _("alerts resolved"),
                  [PALETTE[2]] * 5, tr=tr),
        "<h3>" + _e(_("Alerts opened per hour, by kind")) + "</h3>",
        line_chart("chart-timeline", _("Alerts opened per hour"), dict(hourly), data.start, data.end, tz, _("alerts"),
                   y_min=0, bars=True, tr=tr),
        "<h3>" + _e(_("Alerts opened by district")) + "</h3>",
        bar_chart("chart-by-district", _("Alerts by district"), districts.most_common(), _("alerts"), tr=tr),
        "<h3>" + _e(_("Alerts opened by grid (top 15)")) + "</h3>",
        bar_chart("chart-by-grid", _("Alerts by grid"), grids.most_common(15), _("alerts"), tr=tr),
        "<h3>" + _e(_("Alerts opened by kind")) + "</h3>",
        bar_chart("chart-by-kind", _("Alerts by kind"), [(kind(k), float(kinds[k])) for k in KINDS if kinds[k]],
                  _("alerts"), tr=tr),
        _table((_("kind"), _("rule"), _("opened")),
               [(kind(k), rule(r), n) for (k, r), n in sorted(rules_count.items())]),
        "</section>",
        f'<section id="loop-figures"><h2>{_e(loop_heading)}</h2>',
        *_loop_section(data, tr),
        "</section>",
        '<section id="sensors"><h2>' + _e(_("Sensors by kind")) + "</h2>",
        *_sensor_section(data, settings, tz, tr),
        "</section>",
        '<section id="health"><h2>' + _e(_("Device health")) + "</h2>",
        '<p class="muted">' + _e(_("{offline} offline, {low} with low battery, {never} never seen by this "
                                   "installation.", offline=len(offline), low=len(low_battery),
                                   never=never_seen)) + "</p>",
    ]
    if data.influx:
        parts += [
            "<h3>" + _e(_("Lowest battery by district")) + "</h3>",
            line_chart("chart-battery", _("Lowest battery by district"), _series(data.influx["battery"], "battery",
                                                                                 "district"),
                       data.start, data.end, tz, "%", [(settings.rules.health.battery_low_pct, _("low"), "#dc2626")],
                       tr=tr),
            "<h3>" + _e(_("Weakest signal by district")) + "</h3>",
            line_chart("chart-rssi", _("Weakest RSSI by district"), _series(data.influx["rssi"], "rssi", "district"),
                       data.start, data.end, tz, "dBm", tr=tr),
        ]
    parts += [
        "<h3>" + _e(_("Offline devices")) + "</h3>",
        _table((_("device"), _("kind"), _("district"), _("grid"), _("last seen"), _("offline for"), _("status")),
               offline_rows) if offline_rows else none,
        "<h3>" + _e(_("Low battery")) + "</h3>",
        _table((_("device"), _("kind"), _("district"), _("battery %"), _("since")), battery_rows)
        if battery_rows else none,
        "</section>",
        f'<p class="meta">{_e(generated)}</p>',
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
    click.echo(translator_for(settings).gettext("wrote {out}: {open} open alerts, {opened} opened since {since}",
                                                out=out, open=len(data.open_alerts), opened=len(data.openings()),
                                                since=since))
    if data.influx_note:
        click.echo(data.note(translator_for(settings)), err=True)
