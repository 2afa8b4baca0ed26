"""The city map as inline SVG, drawn from the registry's coordinates: works with no internet access.

No tiles and no map library: an equirectangular projection of the devices' lat/lon (x scaled by
cos(latitude) at the middle, so a city-sized area keeps its shape), each district outlined by the
convex hull of its devices and labelled at their centre, every device a dot coloured by the worst
severity of its open alerts (grey: none). The projection's parameters are on the <svg> element
(data-*), so the page's script can place a device that gets its first alert after the page was
drawn. Devices without an open alert beyond `max_points` are evenly sampled out; alerting ones are
always drawn.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from citywatch.model import SEVERITY_RANK, Device

WIDTH, HEIGHT, PAD = 960, 620, 28


@dataclass(frozen=True)
class Projection:
    """lon/lat -> SVG x/y."""

    min_lon: float
    max_lat: float
    kx: float  # cos(mid latitude)
    scale: float  # px per degree (of latitude)
    ox: float
    oy: float

    @classmethod
    def fit(cls, points: Sequence[tuple[float, float]], width: int = WIDTH, height: int = HEIGHT) -> Projection:
        lons = [p[0] for p in points]
        lats = [p[1] for p in points]
        mid = (min(lats) + max(lats)) / 2
        kx = math.cos(math.radians(mid))
        span_x = max((max(lons) - min(lons)) * kx, 1e-3)
        span_y = max(max(lats) - min(lats), 1e-3)
        scale = min((width - 2 * PAD) / span_x, (height - 2 * PAD) / span_y)
        return cls(min(lons), max(lats), kx, scale, (width - span_x * scale) / 2, (height - span_y * scale) / 2)

    def xy(self, lon: float, lat: float) -> tuple[float, float]:
        return self.ox + (lon - self.min_lon) * self.kx * self.scale, self.oy + (self.max_lat - lat) * self.scale


def hull(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Convex hull (Andrew's monotone chain), counter-clockwise; fewer than 3 points as given."""
    pts = sorted(set(points))
    if len(pts) < 3:
        return pts

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def worst(severities: Iterable[str]) -> str:
    """The most severe of these, "" for none."""
    return max(severities, key=lambda s: SEVERITY_RANK.get(s, -1), default="")


def render(devices: Sequence[Device], alerting: Mapping[str, str], title: str, max_points: int = 5000,
           empty_text: str = "") -> Markup:
    """The map: `devices` the user may see, `alerting` device id -> worst severity of its open alerts."""
    placed = [d for d in devices if d.lat is not None and d.lon is not None
              and -90 <= d.lat <= 90 and -180 <= d.lon <= 180]
    head = (f'<svg id="city-map" class="map" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'role="img" aria-label="{escape(title)}"')
    if not placed:
        return Markup(f'{head}><title>{escape(title)}</title><text x="{WIDTH / 2}" y="{HEIGHT / 2}" '
                      f'text-anchor="middle" class="muted">{escape(empty_text)}</text></svg>')
    proj = Projection.fit([(d.lon, d.lat) for d in placed])  # type: ignore[misc]
    body = [f'{head} data-min-lon="{proj.min_lon!r}" data-max-lat="{proj.max_lat!r}" data-kx="{proj.kx!r}" '
            f'data-scale="{proj.scale!r}" data-ox="{proj.ox!r}" data-oy="{proj.oy!r}">',
            f"<title>{escape(title)}</title>", f'<rect class="sea" x="0" y="0" width="{WIDTH}" height="{HEIGHT}"/>']
    by_district: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for d in placed:
        by_district[d.district].append(proj.xy(d.lon, d.lat))  # type: ignore[arg-type]
    for name, pts in sorted(by_district.items()):
        if not name:
            continue
        outline = hull(pts)
        if len(outline) >= 3:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in outline)
            body.append(f'<polygon class="district" points="{path}"><title>{escape(name)}</title></polygon>')
    for name, pts in sorted(by_district.items()):
        if name:
            cx, cy = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
            body.append(f'<text class="district-name" x="{cx:.1f}" y="{cy:.1f}" text-anchor="middle">'
                        f"{escape(name)}</text>")
    quiet = [d for d in placed if d.id not in alerting]
    step = max(1, math.ceil(len(quiet) / max_points))
    loud = sorted((d for d in placed if d.id in alerting), key=lambda d: SEVERITY_RANK.get(alerting[d.id], -1))
    for d in [*quiet[::step], *loud]:
        x, y = proj.xy(d.lon, d.lat)  # type: ignore[arg-type]
        severity = alerting.get(d.id, "")
        where = " ".join(v for v in (d.district, d.grid, d.address) if v)
        body.append(f'<circle id="dev-{escape(d.id)}" class="dev{" sev-" + severity if severity else ""}" '
                    f'cx="{x:.1f}" cy="{y:.1f}" r="{7 if severity else 4}" data-device="{escape(d.id)}">'
                    f"<title>{escape(d.id)} ({escape(d.kind)}) {escape(where)}</title></circle>")
    body.append("</svg>")
    return Markup("".join(body))
