"""A device's recent readings as an inline SVG line chart, rendered server-side (no script, no library).

Time runs left to right in the city's zone (axis labels HH:MM, the title says the zone's offset), the
value bottom to top from 0 (or the lowest reading, if negative) to a little above the highest of the
readings and the alert's threshold, which is drawn as a dashed line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 52, 16, 14, 30


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low
    if span <= 0:
        return [low]
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * step:
            step *= m
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.1f}"


def render(points: Sequence[tuple[float, float]], timezone: str, title: str, unit: str = "",
           threshold: float | None = None, step: bool = False) -> Markup:
    """`points`: (event time, value), oldest first. `step`: a 0/1 state (parking), drawn as steps."""
    zone = ZoneInfo(timezone)
    head = (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-label="{escape(title)}"><title>{escape(title)}</title>')
    t0, t1 = points[0][0], points[-1][0]
    if t1 <= t0:
        t0, t1 = t0 - 60, t0 + 60
    values = [v for _, v in points]
    low = min(0.0, min(values))
    high = max([*values, threshold if threshold is not None else low])
    high = low + 1 if high <= low else high + (high - low) * 0.08
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + (t - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return TOP + (high - v) / (high - low) * plot_h

    body = [head, f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/>']
    for v in _ticks(low, high):
        body.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
                    f'<text class="axis" x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{_number(v)}</text>')
    for i in range(5):
        t = t0 + (t1 - t0) * i / 4
        span = t1 - t0
        stamp = datetime.fromtimestamp(t, UTC).astimezone(zone).strftime(
            "%H:%M:%S" if span < 600 else "%H:%M" if span < 86400 else "%m-%d %H:%M")
        body.append(f'<text class="axis" x="{x(t):.1f}" y="{HEIGHT - 10}" text-anchor="middle">{stamp}</text>')
    if unit:
        body.append(f'<text class="axis" x="{LEFT}" y="{TOP - 2}">{escape(unit)}</text>')
    if threshold is not None:
        body.append(f'<line class="threshold" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(threshold):.1f}" '
                    f'y2="{y(threshold):.1f}"><title>{_number(threshold)}</title></line>')
    coords: list[str] = []
    for i, (t, v) in enumerate(points):
        if step and i:
            coords.append(f"{x(t):.1f},{y(points[i - 1][1]):.1f}")
        coords.append(f"{x(t):.1f},{y(v):.1f}")
    body.append(f'<polyline class="series" points="{" ".join(coords)}"/>')
    if len(points) <= 60:
        body += [f'<circle class="point" cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5"/>' for t, v in points]
    body.append("</svg>")
    return Markup("".join(body))
