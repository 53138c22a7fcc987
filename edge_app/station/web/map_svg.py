"""The Map page's map: an inline SVG of the units over the park boundary (pure, no I/O).

No tile server and no JavaScript: a park's base station is often offline, and a drawing of
where the traps stand and which are in trouble is what a ranger needs, not a street map.

Projection: equirectangular, longitudes scaled by the cosine of the mid latitude so that a
kilometre is (nearly) as long east-west as north-south across a park-sized area; north up,
east right. The view is fitted, with a margin, to the bounding box of the placed units and
the boundary; a single unit (or all at one point) gets a minimum extent of
:data:`MIN_EXTENT_KM` around it.
No antimeridian handling: a park does not straddle ±180°.

Units without a position (None, out of range, non-finite, or exactly (0, 0), which is the
config's "not set" default) are not drawn: :func:`unplaced` returns them so the page can list
them under the map.

The boundary is untrusted (an uploaded or configured GeoJSON file): :func:`load_boundary`
parses bytes through the guarded door, and :func:`render_map` walks the structure iteratively
with a point budget, refusing anything else with :class:`~edge_app.core.guard.Refused` (a
``ValueError``): kind ``bad_geojson`` for the shape, ``too_many_points``, ``non_finite`` or
``out_of_range`` for coordinates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

from edge_app.core.guard import Limits, Refused, parse_object

MAX_BOUNDARY_BYTES = 4 * 1024 * 1024
"""A park boundary simplified for a map is tens of kB; 4 MB leaves room for a detailed one."""
MAX_BOUNDARY_POINTS = 50_000
"""Points drawn at most (beyond that the SVG is heavy and no more legible)."""
BOUNDARY_LIMITS = Limits(max_bytes=MAX_BOUNDARY_BYTES, max_depth=8,
                         max_nodes=4 * MAX_BOUNDARY_POINTS + 10_000)
"""A FeatureCollection of MultiPolygons nests 7 levels (collection, features, feature,
geometry, polygons, rings, positions, position)."""
MIN_EXTENT_KM = 2.0
"""The smallest area shown, so one unit alone is not zoomed to a pixel."""
MARGIN = 0.08
"""Fraction of the drawing kept free on each side (markers and labels stay inside)."""
KM_PER_DEG = 111.32
"""Kilometres per degree of latitude (and of longitude at the equator)."""
MIN_COS = 0.05
"""cos(latitude) floor: keeps the projection finite near the poles."""
MAX_SIZE = 10_000
"""Largest width/height in pixels."""
LEGEND_H = 22
"""Height of the legend strip at the top of the drawing."""

STYLE: dict[str, tuple[str, str]] = {
    # state: (colour, shape). Okabe-Ito colours (readable with colour-blindness), and the
    # shape and the legend carry the state too, so colour is never the only cue.
    "online": ("#009E73", "circle"),
    "silent": ("#E69F00", "triangle"),
    "lost": ("#D55E00", "cross"),
    "offline": ("#666666", "square"),
    "never": ("#FFFFFF", "ring"),
}
UNKNOWN_STYLE = ("#999999", "diamond")


@dataclass(frozen=True, slots=True)
class MapUnit:
    """One unit on the map.

    Attributes:
        unit: the unit id (shown as the label).
        site: the site name for people, or None.
        lat, lon: WGS 84 decimal degrees, or None when unknown.
        state: a Fleet state (``online``, ``silent``, ``lost``, ``offline``, ``never``).
        href: where a click goes: a relative URL or http(s); anything else (``javascript:``,
            ``data:``) is drawn without a link.
    """

    unit: str
    site: str | None
    lat: float | None
    lon: float | None
    state: str
    href: str


def placed(u: MapUnit) -> bool:
    """True if ``u`` has a usable position (see the module docstring)."""
    return _position(u) is not None


def _position(u: MapUnit) -> tuple[float, float] | None:
    """(lon, lat) of ``u``, None when it has no usable position."""
    lat, lon = u.lat, u.lon
    if not _real(lat) or not _real(lon):
        return None
    flat, flon = float(lat), float(lon)  # type: ignore[arg-type]  # _real checked them
    if -90 <= flat <= 90 and -180 <= flon <= 180 and (flat, flon) != (0.0, 0.0):
        return flon, flat
    return None


def unplaced(units: Sequence[MapUnit]) -> list[MapUnit]:
    """The units :func:`render_map` does not draw, in the given order (list them below)."""
    return [u for u in units if not placed(u)]


def load_boundary(data: bytes | str) -> dict[str, Any]:
    """Parse a boundary GeoJSON file through the guarded door and check it.

    Raises:
        Refused: too large, too deep, not JSON, or not a drawable boundary.
    """
    obj = parse_object(data, BOUNDARY_LIMITS)
    _lines(obj)  # check it all now, not when the page is drawn
    return obj


def render_map(units: Sequence[MapUnit], boundary: dict[str, Any] | None, *,
               width: int, height: int) -> str:
    """An ``<svg>`` element drawing ``units`` over ``boundary``; see the module docstring.

    Args:
        units: every unit; those without a position are skipped (see :func:`unplaced`).
        boundary: a GeoJSON Polygon, MultiPolygon, LineString, MultiLineString, a Feature
            of one, or a FeatureCollection of such Features; or None.
        width, height: the drawing's size in pixels (also its viewBox).

    Raises:
        ValueError: a size out of range.
        Refused: a boundary that is not a drawable GeoJSON (a ``ValueError`` too).
    """
    if not (isinstance(width, int) and isinstance(height, int)
            and 50 <= width <= MAX_SIZE and 50 + LEGEND_H <= height <= MAX_SIZE):
        raise ValueError(f"map size {width}x{height} out of range (50..{MAX_SIZE})")
    lines = _lines(boundary) if boundary is not None else []
    on_map = [(u, pos) for u in units if (pos := _position(u)) is not None]
    points = [pos for _, pos in on_map]
    points += [p for shape in lines for ring in shape.rings for p in ring]
    proj = _Projection(points, width, height)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" class="fleet-map" '
           'font-family="sans-serif" font-size="11">',
           "<title>Map of the units</title>",
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#F4F1E8"/>']
    out.extend(_boundary_svg(lines, proj))
    out.extend(_scale_bar(proj, width, height))
    out.extend(_unit_svg(u, pos, proj) for u, pos in on_map)
    out.extend(_legend(width, {_text(u.state) for u, _ in on_map}))
    if not on_map:
        out.append(f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" '
                   'fill="#333333">No unit has a position</text>')
    out.append("</svg>")
    return "\n".join(out)


# -- projection ------------------------------------------------------------------------------


class _Projection:
    """Equirectangular, cos(mean latitude) scaled, fitted to ``points`` (lon, lat)."""

    def __init__(self, points: list[tuple[float, float]], width: int, height: int) -> None:
        if not points:
            points = [(0.0, 0.0)]
        lons = [p[0] for p in points]
        lats = [p[1] for p in points]
        lat_mid = (min(lats) + max(lats)) / 2
        self.kx = max(MIN_COS, math.cos(math.radians(lat_mid)))
        x0, x1 = min(lons) * self.kx, max(lons) * self.kx
        y0, y1 = min(lats), max(lats)
        min_deg = MIN_EXTENT_KM / KM_PER_DEG
        if x1 - x0 < min_deg:
            c = (x0 + x1) / 2
            x0, x1 = c - min_deg / 2, c + min_deg / 2
        if y1 - y0 < min_deg:
            c = (y0 + y1) / 2
            y0, y1 = c - min_deg / 2, c + min_deg / 2
        top = LEGEND_H
        inner_w = width * (1 - 2 * MARGIN)
        inner_h = (height - top) * (1 - 2 * MARGIN)
        self.scale = min(inner_w / (x1 - x0), inner_h / (y1 - y0))  # pixels per degree
        self.cx, self.cy = (x0 + x1) / 2, (y0 + y1) / 2
        self.px, self.py = width / 2, top + (height - top) / 2

    def xy(self, lon: float, lat: float) -> tuple[float, float]:
        return (self.px + (lon * self.kx - self.cx) * self.scale,
                self.py - (lat - self.cy) * self.scale)

    @property
    def km_per_px(self) -> float:
        return KM_PER_DEG / self.scale


def _f(v: float) -> str:
    """A coordinate with one decimal (a tenth of a pixel is plenty)."""
    s = f"{v:.1f}"
    return "0.0" if s == "-0.0" else s


# -- the boundary ----------------------------------------------------------------------------


def _lines(geo: Any) -> list[_Shape]:
    """The boundary as shapes of (lon, lat) rings, checked; no recursion, a point budget."""
    out: list[_Shape] = []
    budget = [MAX_BOUNDARY_POINTS]
    todo: list[tuple[Any, int]] = [(geo, 0)]
    while todo:
        obj, level = todo.pop()
        if not isinstance(obj, Mapping):
            raise Refused("bad_geojson", "expected a GeoJSON object")
        kind = obj.get("type")
        coords = obj.get("coordinates")
        if kind == "FeatureCollection" and level == 0:
            feats = obj.get("features")
            if not isinstance(feats, list):
                raise Refused("bad_geojson", "a FeatureCollection needs a features list")
            _spend(budget, len(feats))
            todo.extend((f, 1) for f in reversed(feats))
        elif kind == "Feature" and level <= 1:
            geom = obj.get("geometry")
            if geom is not None:  # a Feature without a geometry is allowed and empty
                todo.append((geom, 2))
        elif kind == "LineString":
            out.append(_Shape(False, [_positions(coords, budget)]))
        elif kind == "MultiLineString":
            out.append(_Shape(False, _rings(coords, budget)))
        elif kind == "Polygon":
            out.append(_Shape(True, _rings(coords, budget)))
        elif kind == "MultiPolygon":
            if not isinstance(coords, list):
                raise Refused("bad_geojson", "MultiPolygon coordinates must be a list")
            _spend(budget, len(coords))
            out.extend(_Shape(True, _rings(poly, budget)) for poly in coords)
        else:
            raise Refused("bad_geojson", f"unsupported GeoJSON type {str(kind)[:40]!r}")
    return out


@dataclass(frozen=True, slots=True)
class _Shape:
    """A polygon (outer ring and holes, filled even-odd) or a set of lines (not filled)."""

    area: bool
    rings: list[list[tuple[float, float]]]


def _rings(value: Any, budget: list[int]) -> list[list[tuple[float, float]]]:
    if not isinstance(value, list):
        raise Refused("bad_geojson", "coordinates must be a list of rings or lines")
    _spend(budget, len(value))  # a million empty rings is as heavy as a million points
    return [_positions(r, budget) for r in value]


def _spend(budget: list[int], n: int) -> None:
    budget[0] -= n
    if budget[0] < 0:
        raise Refused("too_many_points", f"more than {MAX_BOUNDARY_POINTS} boundary points")


def _positions(value: Any, budget: list[int]) -> list[tuple[float, float]]:
    if not isinstance(value, list):
        raise Refused("bad_geojson", "coordinates must be a list of positions")
    _spend(budget, len(value))
    line: list[tuple[float, float]] = []
    for p in value:
        if not isinstance(p, list | tuple) or not 2 <= len(p) <= 3:
            raise Refused("bad_geojson", "a position must be [lon, lat] or [lon, lat, alt]")
        lon, lat = p[0], p[1]
        if not (_number(lon) and _number(lat)):
            raise Refused("bad_geojson", "a coordinate must be a number")
        if not (math.isfinite(lon) and math.isfinite(lat)):
            raise Refused("non_finite", "a boundary coordinate is not finite")
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise Refused("out_of_range", "a boundary coordinate is out of range "
                          "(lon -180..180, lat -90..90)")
        line.append((float(lon), float(lat)))
    return line


def _number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        float(v)
    except OverflowError:
        raise Refused("non_finite", "a boundary coordinate overflows") from None
    return True


def _real(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _boundary_svg(shapes: list[_Shape], proj: _Projection) -> list[str]:
    out = []
    for shape in shapes:
        parts: list[str] = []
        for ring in shape.rings:
            pts: list[str] = []
            for lon, lat in ring:
                x, y = proj.xy(lon, lat)
                p = f"{_f(x)},{_f(y)}"
                if not pts or pts[-1] != p:  # points closer than the precision are one
                    pts.append(p)
            if len(pts) >= 2:
                parts.append("M" + " L".join(pts) + (" Z" if shape.area else ""))
        if not parts:
            continue
        paint = ('fill="#E3EDD5" fill-rule="evenodd"' if shape.area else 'fill="none"')
        out.append(f'<path class="boundary" d="{" ".join(parts)}" {paint} stroke="#3D6B35" '
                   'stroke-width="1.5" stroke-linejoin="round"/>')
    return out


# -- units, legend, scale bar ------------------------------------------------------------------


def _marker(shape: str, x: float, y: float, colour: str) -> str:
    fill = f'fill="{colour}" stroke="#222222" stroke-width="1"'
    if shape == "circle":
        return f'<circle cx="{_f(x)}" cy="{_f(y)}" r="6" {fill}/>'
    if shape == "ring":
        return (f'<circle cx="{_f(x)}" cy="{_f(y)}" r="6" fill="{colour}" stroke="#222222" '
                'stroke-width="2" stroke-dasharray="2 2"/>')
    if shape == "square":
        return f'<rect x="{_f(x - 5.5)}" y="{_f(y - 5.5)}" width="11" height="11" {fill}/>'
    if shape == "triangle":
        return (f'<polygon points="{_f(x)},{_f(y - 7)} {_f(x + 7)},{_f(y + 5)} '
                f'{_f(x - 7)},{_f(y + 5)}" {fill}/>')
    if shape == "cross":
        return (f'<path d="M{_f(x - 6)},{_f(y - 6)} L{_f(x + 6)},{_f(y + 6)} '
                f'M{_f(x - 6)},{_f(y + 6)} L{_f(x + 6)},{_f(y - 6)}" stroke="{colour}" '
                'stroke-width="4" stroke-linecap="round"/>')
    return (f'<polygon points="{_f(x)},{_f(y - 7)} {_f(x + 7)},{_f(y)} {_f(x)},{_f(y + 7)} '
            f'{_f(x - 7)},{_f(y)}" {fill}/>')


def _safe_href(href: str) -> bool:
    if not isinstance(href, str) or not href or any(ord(c) < 32 for c in href):
        return False
    try:
        scheme = urlsplit(href).scheme.lower()
    except ValueError:
        return False
    return scheme in ("", "http", "https")


def _unit_svg(u: MapUnit, pos: tuple[float, float], proj: _Projection) -> str:
    x, y = proj.xy(*pos)
    colour, shape = STYLE.get(u.state, UNKNOWN_STYLE)
    state, name = _text(u.state), _text(u.unit)
    site = "" if u.site is None else _text(u.site)
    tip = " · ".join(p for p in (name, site, state) if p)
    # The state in words next to every unit not online: colour and shape are not the only cue.
    label = name if state == "online" else f"{name} · {state}"
    body = (f"<title>{escape(tip)}</title>{_marker(shape, x, y, colour)}"
            f'<text x="{_f(x + 9)}" y="{_f(y + 4)}" fill="#111111">{escape(label)}</text>')
    group = (f'<g class="unit state-{_css(state)}" data-unit={quoteattr(name)} '
             f"data-state={quoteattr(state)}>{body}</g>")
    if _safe_href(u.href):
        return f"<a href={quoteattr(u.href)}>{group}</a>"
    return group


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def _text(value: object) -> str:
    """``value`` as text an XML parser accepts (control characters dropped), unescaped."""
    return _NOT_XML.sub("", str(value))


def _css(state: str) -> str:
    return state if state in STYLE else "other"


def _legend(width: int, states: set[str]) -> list[str]:
    """The shapes of the states on this map (all of them would not fit a small map)."""
    out = [f'<g class="legend"><rect x="0" y="0" width="{width}" height="{LEGEND_H}" '
           'fill="#FFFFFF" fill-opacity="0.85"/>']
    x = 10.0
    shown = [(s, STYLE[s]) for s in STYLE if s in states]
    if states - set(STYLE):
        shown.append(("other", UNKNOWN_STYLE))
    for state, (colour, shape) in shown:
        out.append(_marker(shape, x, LEGEND_H / 2, colour))
        out.append(f'<text x="{_f(x + 10)}" y="{_f(LEGEND_H / 2 + 4)}" fill="#111111">'
                   f"{state}</text>")
        x += 12 + 7 * len(state) + 18
    out.append("</g>")
    return out


def _nice_km(max_km: float) -> float:
    """The largest 1, 2 or 5 × 10ⁿ km not above ``max_km``."""
    exp = math.floor(math.log10(max_km))
    for m in (5, 2, 1):
        if m * 10.0**exp <= max_km:
            return m * 10.0**exp
    return 10.0**exp  # pragma: no cover - 1 × 10ⁿ always fits


def _scale_bar(proj: _Projection, width: int, height: int) -> list[str]:
    km = _nice_km(width * 0.25 * proj.km_per_px)
    length = km / proj.km_per_px
    x0, y = 12.0, height - 12.0
    label = f"{km:g} km" if km >= 1 else f"{km * 1000:g} m"
    return [f'<g class="scale-bar"><path d="M{_f(x0)},{_f(y - 4)} V{_f(y)} H{_f(x0 + length)} '
            f'V{_f(y - 4)}" fill="none" stroke="#111111" stroke-width="2"/>'
            f'<text x="{_f(x0 + length + 6)}" y="{_f(y)}" fill="#111111">{label}</text></g>']
