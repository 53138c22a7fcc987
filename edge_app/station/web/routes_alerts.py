"""The Alerts page, an alert's detail, acknowledgements and media files.

Media files are served only through :func:`media`: a logged-in user, ids of the receiver's
form, a row in ``media`` for exactly that (unit, id), and a path that resolves inside the
unit's media folder. The store's own ``path`` column is not trusted for the file name.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from edge_app.station.web import csrf, db, queries
from edge_app.station.web.fleet_view import unit_health
from edge_app.station.web.map_svg import MapUnit
from edge_app.station.web.pages import check_id, ctx_of, map_svg, render, require
from edge_app.station.web.views import alert_view

logger = logging.getLogger(__name__)

MAX_NOTE = 200
PRESETS = ("on my way", "false alarm", "seen, no action")


def _param_id(request: Request, name: str) -> str:
    return check_id(str(request.path_params[name]))


def _before(request: Request) -> int | None:
    raw = request.query_params.get("before")
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise HTTPException(400, "before must be a row number")
    return int(raw)


async def alerts_page(request: Request) -> Response:
    await require(request)
    before = _before(request)
    ctx = ctx_of(request)
    rows = await db.acall(ctx.db_path, lambda c: queries.alerts(c, before))
    now = ctx.clock.wall()
    views = [alert_view(r, ctx.units, ctx.tz, now) for r in rows]
    older = rows[-1].rowid if len(rows) == queries.PAGE else None
    return render(request, "alerts.html", "Alerts · camtrap station", alerts=views,
                  older=older, live=before is None)


async def alert_page(request: Request) -> Response:
    user = await require(request)
    unit, event_id = _param_id(request, "unit"), _param_id(request, "event_id")
    ctx = ctx_of(request)
    row = await db.acall(ctx.db_path, lambda c: queries.alert(c, unit, event_id))
    if row is None:
        raise HTTPException(404, "no such alert")
    view = alert_view(row, ctx.units, ctx.tz, ctx.clock.wall())
    info = ctx.units.get(unit)
    small_map = None
    if info is not None and info.lat is not None and info.lon is not None:
        fleet_row = await db.acall(ctx.db_path, lambda c: queries.units(c).get(unit))
        state = unit_health(fleet_row, unit, ctx.clock.wall(), ctx.expected_interval_s).state
        small_map = map_svg(ctx, [MapUnit(unit, info.site, info.lat, info.lon, state,
                                          "/fleet")], 320, 220)
    title = f"{view.what} at {view.site or unit}, {view.when} · camtrap station"
    return render(request, "alert.html", title, a=view, small_map=small_map,
                  presets=PRESETS, max_note=MAX_NOTE,
                  can_command=user.is_admin and ctx.send_command is not None,
                  sent=request.query_params.get("sent") == "1")


def clean_note(text: str) -> str:
    """A note as stored: no control characters, single-line, at most :data:`MAX_NOTE`."""
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text).strip()
    if len(text) > MAX_NOTE:
        raise HTTPException(400, f"a note is at most {MAX_NOTE} characters")
    return text


async def acknowledge(request: Request) -> Response:
    user = await require(request)
    unit, event_id = _param_id(request, "unit"), _param_id(request, "event_id")
    form = await csrf.read_form(request)
    note = clean_note(form.get("note", "") or form.get("preset", ""))
    ctx = ctx_of(request)
    now = ctx.clock.wall()
    ok = await db.acall(ctx.db_path,
                        lambda c: queries.add_ack(c, unit, event_id, user.name, note, now))
    if not ok:
        raise HTTPException(404, "no such alert")
    ctx.bus.publish(unit, event_id, "ack", False)
    return RedirectResponse(request.url_for("alert", unit=unit, event_id=event_id).path,
                            status_code=303)


async def request_image(request: Request) -> Response:
    """Admins: ask the unit for the full image of an alert (``cmd/media/request``)."""
    await require(request, admin=True)
    unit, event_id = _param_id(request, "unit"), _param_id(request, "event_id")
    await csrf.read_form(request)
    ctx = ctx_of(request)
    if ctx.send_command is None:
        raise HTTPException(409, "the station has no link to send commands on")
    send = ctx.send_command
    try:
        cmd_id = await asyncio.to_thread(send, unit, "media/request",
                                         {"media": f"{event_id}-image"})
    except Exception as e:  # the link's own error (not connected, queue full, ...)
        logger.warning("web: media/request to %s failed: %s", unit, e)
        raise HTTPException(503, "the command could not be sent: try again later") from e
    logger.info("web: asked %s for %s-image (command %s)", unit, event_id, cmd_id)
    path = request.url_for("alert", unit=unit, event_id=event_id).path
    return RedirectResponse(path + "?sent=1", status_code=303)


async def media(request: Request) -> Response:
    await require(request, page=False)
    unit, media_id = _param_id(request, "unit"), _param_id(request, "media_id")
    ctx = ctx_of(request)
    stored = await db.acall(ctx.db_path, lambda c: queries.media_file(c, unit, media_id))
    if stored is None:
        raise HTTPException(404, "no such media")
    folder = (ctx.store_dir / "media" / unit).resolve()
    path = (folder / f"{media_id}.jpg").resolve()
    if path.parent != folder or not path.is_file():
        raise HTTPException(404, "no such media")
    return FileResponse(path, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400"})


routes = [
    Route("/", alerts_page, methods=["GET"], name="alerts"),
    Route("/alerts/{unit}/{event_id}", alert_page, methods=["GET"], name="alert"),
    Route("/alerts/{unit}/{event_id}/ack", acknowledge, methods=["POST"]),
    Route("/alerts/{unit}/{event_id}/request-image", request_image, methods=["POST"]),
    Route("/media/{unit}/{media_id}", media, methods=["GET"]),
]
