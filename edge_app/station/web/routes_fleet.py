"""The Map and Fleet pages: every unit, from the fleet file and from what the station heard.

A unit the fleet file lists but the station never heard is shown as ``never``; a unit heard
but not in the file (a spare, a swap) is shown by its id, without a position.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge_app.station.web import db, queries
from edge_app.station.web.context import WebContext
from edge_app.station.web.fleet_view import UnitHealth, age_text, fleet_order, unit_health
from edge_app.station.web.map_svg import MapUnit, unplaced
from edge_app.station.web.pages import ctx_of, map_svg, render, require
from edge_app.station.web.tiles import tile_view
from edge_app.station.web.views import local

MAP_W, MAP_H = 480, 560
"""Phone-shaped: the SVG scales to the screen, its labels with it."""


async def _healths(ctx: WebContext) -> list[UnitHealth]:
    rows = await db.acall(ctx.db_path, queries.units)
    now = ctx.clock.wall()
    names = sorted(set(ctx.units) | set(rows))
    return fleet_order(unit_health(rows.get(u), u, now, ctx.expected_interval_s)
                       for u in names)


async def map_page(request: Request) -> Response:
    await require(request)
    ctx = ctx_of(request)
    units = []
    for h in await _healths(ctx):
        info = ctx.units.get(h.unit)
        units.append(MapUnit(h.unit, info.site if info else None,
                             info.lat if info else None, info.lon if info else None,
                             h.state, "/fleet#u-" + quote(h.unit, safe="")))
    tiles = tile_view(units, ctx.tile_url) if ctx.tile_url else None
    return render(request, "map.html", "Map · camtrap station",
                  svg=map_svg(ctx, units, MAP_W, MAP_H), unplaced=unplaced(units), tiles=tiles)


async def fleet_page(request: Request) -> Response:
    await require(request)
    ctx = ctx_of(request)
    now = ctx.clock.wall()
    rows = []
    for h in await _healths(ctx):
        info = ctx.units.get(h.unit)
        seen = (None if h.last_seen is None else
                (local(h.last_seen, ctx.tz, now), age_text(now - h.last_seen) + " ago"))
        rows.append({"h": h, "site": info.site if info else "", "seen": seen})
    return render(request, "fleet.html", "Fleet · camtrap station", rows=rows,
                  interval=age_text(ctx.expected_interval_s))


routes = [
    Route("/map", map_page, methods=["GET"]),
    Route("/fleet", fleet_page, methods=["GET"]),
]
