"""An optional tile background for the Map page, when the station has a tile server (pure).

Only with ``web.tile_url`` set (e.g. an offline tile server on the station's own network,
``http://10.0.0.2:8081/{z}/{x}/{y}.png``): the SVG map (:mod:`.map_svg`) needs nothing from
outside, this adds roads, rivers and relief for a ranger planning a walk. Web Mercator, the
scheme every tile server uses: the zoom is the largest at which every placed unit fits in the
frame with a margin; the page lays the tiles and the unit markers out in percent of the
frame, so it scales with the screen like the SVG does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from edge_app.station.web.map_svg import MapUnit, placed

TILE = 256
MAX_ZOOM = 16
"""Closest zoom used (a single unit would otherwise be shown at street level)."""
MARGIN_PX = 48
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class Tile:
    url: str
    left: float  # percent of the frame's width
    top: float  # percent of the frame's height
    size_w: float  # percent of the frame's width
    size_h: float


@dataclass(frozen=True, slots=True)
class Marker:
    unit: MapUnit
    left: float
    top: float


@dataclass(frozen=True, slots=True)
class TileView:
    width: int
    height: int
    zoom: int
    tiles: list[Tile]
    markers: list[Marker]
    origin: str


def tile_origin(tile_url: str) -> str | None:
    """``scheme://host[:port]`` of a tile URL template (for the page's CSP), None if odd."""
    parts = urlsplit(tile_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    return origin if _ORIGIN.fullmatch(origin) else None


def _px(lon: float, lat: float, zoom: int) -> tuple[float, float]:
    """Global Web Mercator pixel coordinates at ``zoom``."""
    lat = max(-85.0511, min(85.0511, lat))
    n = TILE * 2**zoom
    x = (lon + 180.0) / 360.0 * n
    s = math.sin(math.radians(lat))
    y = (0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)) * n
    return x, y


def tile_view(units: Sequence[MapUnit], tile_url: str, *, width: int = 768,
              height: int = 768) -> TileView | None:
    """Tiles and markers framing the placed ``units``; None without a placed unit or with a
    URL this page cannot use (it must have ``{z}``, ``{x}`` and ``{y}``)."""
    origin = tile_origin(tile_url)
    on_map = [u for u in units if placed(u)]
    if origin is None or not on_map or not all(k in tile_url for k in ("{z}", "{x}", "{y}")):
        return None
    pos = [(float(u.lon), float(u.lat)) for u in on_map]  # type: ignore[arg-type]
    zoom = 1
    for z in range(MAX_ZOOM, 0, -1):
        pts = [_px(lon, lat, z) for lon, lat in pos]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if (max(xs) - min(xs) <= width - 2 * MARGIN_PX
                and max(ys) - min(ys) <= height - 2 * MARGIN_PX):
            zoom = z
            break
    pts = [_px(lon, lat, zoom) for lon, lat in pos]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0 = (min(xs) + max(xs)) / 2 - width / 2
    y0 = (min(ys) + max(ys)) / 2 - height / 2
    count = 2**zoom
    tiles = []
    for ty in range(math.floor(y0 / TILE), math.floor((y0 + height - 1) / TILE) + 1):
        if not 0 <= ty < count:
            continue
        for tx in range(math.floor(x0 / TILE), math.floor((x0 + width - 1) / TILE) + 1):
            url = (tile_url.replace("{z}", str(zoom)).replace("{x}", str(tx % count))
                   .replace("{y}", str(ty)))
            tiles.append(Tile(url, _pct(tx * TILE - x0, width), _pct(ty * TILE - y0, height),
                              _pct(TILE, width), _pct(TILE, height)))
    markers = [Marker(u, _pct(x - x0, width), _pct(y - y0, height))
               for u, (x, y) in zip(on_map, pts, strict=True)]
    return TileView(width, height, zoom, tiles, markers, origin)


def _pct(px: float, total: int) -> float:
    return round(px * 100.0 / total, 4)
