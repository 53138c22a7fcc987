"""The live stream of the Alerts page: server-sent events, one per stored or changed alert.

Each open page holds one stream (``GET /events``) and one bounded queue on the bus
(:mod:`.bus`). A notice is rendered to the alert's card HTML here, per page, from the store (so
the card is exactly what a reload would show), and the page swaps it in by its id or puts it
on top. Idle, a stream costs nothing but a comment line every :data:`HEARTBEAT_S`, which keeps
proxies and phone networks from closing it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from edge_app.station.web import db, queries
from edge_app.station.web.bus import Notice
from edge_app.station.web.pages import ctx_of, require, templates
from edge_app.station.web.views import AlertView, alert_view

HEARTBEAT_S = 15.0


def card_html(view: AlertView) -> str:
    return templates.get_template("_card.html").render(a=view)


async def _card_event(request: Request, notice: Notice) -> str | None:
    ctx = ctx_of(request)
    row = await db.acall(ctx.db_path,
                         lambda c: queries.alert(c, notice.unit, notice.event_id))
    if row is None or row.event.get("outcome", "alert") != "alert":
        return None
    view = alert_view(row, ctx.units, ctx.tz, ctx.clock.wall())
    data = json.dumps({"id": view.dom_id, "html": card_html(view), "new": notice.new})
    return f"event: alert\ndata: {data}\n\n"


async def events(request: Request) -> Response:
    """Server-sent events: one ``alert`` event (the card's HTML) per stored or changed alert."""
    await require(request, page=False)
    bus = ctx_of(request).bus

    async def stream() -> AsyncIterator[str]:
        sub = bus.subscribe()
        try:
            yield "retry: 3000\n: hello\n\n"
            while not sub.dropped.is_set():
                try:
                    notice = await asyncio.wait_for(sub.queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                if sub.dropped.is_set():  # too slow, or the server is stopping
                    break
                pending = [notice]
                while not sub.queue.empty():
                    pending.append(sub.queue.get_nowait())
                seen: set[tuple[str, str]] = set()
                for n in pending:
                    if (n.unit, n.event_id) in seen:
                        continue
                    seen.add((n.unit, n.event_id))
                    chunk = await _card_event(request, n)
                    if chunk is not None:
                        yield chunk
        finally:
            bus.unsubscribe(sub)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


routes = [
    Route("/events", events, methods=["GET"]),
]
