"""SVG charts for the HTML report (`citywatch report`), and what a kind's section of it gets.

Plain functions over plain data, in a module of their own: each kind draws its own sensor charts
(KindSpec.report, in citywatch/kinds/<kind>.py) with them, and report.py lays the page out.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

from citywatch.i18n import Translator, translator
from citywatch.section import Section

S = TypeVar("S", bound=Section)


class Sections(Protocol):
    """Typed access to a `rules.<kind>` section (config.RuleSettingsBase has it)."""

    def section(self, cls: type[S]) -> S: ...

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563",
           "#65a30d")

def _width(text: str, per: float) -> float:
    """About how wide `text` draws: `per` px a character, a CJK character about twice that."""
    return sum(per * (1.9 if ord(ch) >= 0x2E80 else 1.0) for ch in text)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def _svg(chart_id: str, width: int, height: int, title: str, body: Iterable[str]) -> str:
    return (f'<svg id="{_e(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">'
            f"<title>{_e(title)}</title>" + "".join(body) + "</svg>")


def _empty(chart_id: str, title: str, message: str) -> str:
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
              width: int = 640, tr: Translator | None = None) -> str:
    """Horizontal bars (label, value); `lines` are reference values (value, label, colour)."""
    if not items:
        return _empty(chart_id, title, (tr or translator("en")).gettext("nothing in this period"))
    label_w = int(min(340, max(80, 12 + max(_width(label, 6.2) for label, _ in items))))
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
               colours: dict[str, str] | None = None, bars: bool = False, tr: Translator | None = None) -> str:
    """Time series (name -> [(epoch s, value)]) over [start, end], with reference lines."""
    series = {k: sorted(v) for k, v in series.items() if v}
    if not series:
        return _empty(chart_id, title, (tr or translator("en")).gettext("nothing in this period"))
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


def series(rows: list[dict[str, Any]], value: str, by: str | None = None, ref: str | None = None,
            label: str = "{}") -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if ref is not None and row.get("_ref") != ref:
            continue
        v = row.get(value)
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[label.format(row.get(by, "")) if by else value].append((float(row["time"]), float(v)))
    return dict(out)




@dataclass(frozen=True)
class SensorReport:
    """What a kind's report section draws from: the InfluxDB figures' rows (by figure name, as the
    kinds declare them in KindSpec.report_figures), the rules, the period and the reader's zone and
    language."""

    rows: dict[str, list[dict[str, Any]]]
    rules: Sections
    start: float
    end: float
    tz: ZoneInfo
    tr: Translator

    def heading(self, text: str) -> str:
        return "<h3>" + _e(text) + "</h3>"


esc = _e  # public names for the kinds' report sections
num = _n
