"""Review (admins): the keep frames a unit was unsure about, one key or tap per frame.

The labels live in :mod:`edge_app.station.review` (``review_labels``); this page only shows
the next unlabelled frame of a unit and posts the label (with the CSRF token), then shows the
next one. Keys: ``e`` empty, ``a`` animal, ``p`` person, ``v`` vehicle, ``l`` leopard,
``t`` tiger (static/app.js turns a key press into the matching button's submit).

With ``[review]`` configured, the page also trains the unit's head from those labels and shows
its cross-validated figures (and the last sent head's, "before"); only then can an admin send
it, as a signed pack (:mod:`edge_app.station.review_runner`). The send names the head whose
figures were on the screen, so a head trained meanwhile by someone else is never shipped.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from edge_app.station.review import LABELS, ReviewError, ReviewStore
from edge_app.station.web import csrf, db, queries
from edge_app.station.web.pages import check_id, ctx_of, render, require
from edge_app.station.web.views import local, media_url

KEYS = {label: label[0] for label in LABELS}
"""Label → its key (the first letters are all different)."""


def _next_frame(store_dir: Any, unit: str) -> tuple[dict[str, Any], Any]:
    with ReviewStore(store_dir) as rs:
        counts = rs.counts(unit)
        queue = rs.queue(unit, 1)
    return counts, queue[0] if queue else None


async def review_page(request: Request) -> Response:
    await require(request, admin=True)
    ctx = ctx_of(request)
    fleet = await db.acall(ctx.db_path, queries.units)
    names = sorted(set(ctx.units) | set(fleet))
    unit = request.query_params.get("unit")
    if unit is None:
        return render(request, "review.html", "Review · camtrap station", units=names,
                      unit=None)
    check_id(unit)
    try:
        counts, frame = await run_in_threadpool(_next_frame, ctx.store_dir, unit)
    except ReviewError as e:
        raise HTTPException(400, str(e)) from e
    view = None
    if frame is not None:
        view = {"media_id": frame.media_id, "kind": frame.kind,
                "url": media_url(unit, frame.media_id),
                "when": local(frame.received, ctx.tz, ctx.clock.wall()),
                "trap": " ".join(str(v) for v in (frame.event.get("label"),
                                                  frame.event.get("species")) if v)}
    job = ctx.review.state(unit) if ctx.review is not None else None
    return render(request, "review.html", f"Review {unit} · camtrap station", units=names,
                  unit=unit, counts=counts, frame=view, keys=KEYS, job=job,
                  can_train=ctx.review is not None)


async def review_train(request: Request) -> Response:
    """Start training ``unit``'s head from its labels (the page then shows the figures)."""
    user = await require(request, admin=True)
    unit = check_id(str(request.path_params["unit"]))
    await csrf.read_form(request)
    runner = ctx_of(request).review
    if runner is None:
        raise HTTPException(404, "training is not configured ([review] in station.toml)")
    try:
        runner.train(unit, user.name)
    except ReviewError as e:
        raise HTTPException(409 if e.kind == "busy" else 400, str(e)) from e
    return RedirectResponse(f"/review?unit={quote(unit, safe='')}", status_code=303)


async def review_send(request: Request) -> Response:
    """Send the head whose figures the page showed (its sha256 comes with the form)."""
    user = await require(request, admin=True)
    unit = check_id(str(request.path_params["unit"]))
    form = await csrf.read_form(request)
    head = form.get("head_sha256", "")
    if len(head) != 64 or any(c not in "0123456789abcdef" for c in head):
        raise HTTPException(400, "head_sha256 must be the head's sha256")
    runner = ctx_of(request).review
    if runner is None:
        raise HTTPException(404, "training is not configured ([review] in station.toml)")
    try:
        runner.send(unit, user.name, head)
    except ReviewError as e:
        raise HTTPException(409 if e.kind in ("busy", "state") else 400, str(e)) from e
    return RedirectResponse(f"/review?unit={quote(unit, safe='')}", status_code=303)


def _label(store_dir: Any, unit: str, media_id: str, label: str, user: str,
           now: float) -> None:
    with ReviewStore(store_dir) as rs:
        rs.label(unit, media_id, label, user, now)


async def review_label(request: Request) -> Response:
    user = await require(request, admin=True)
    unit = check_id(str(request.path_params["unit"]))
    form = await csrf.read_form(request)
    media_id = check_id(form.get("media_id", ""))
    label = form.get("label", "")
    if label not in LABELS:
        raise HTTPException(400, f"label must be one of {', '.join(LABELS)}")
    ctx = ctx_of(request)
    try:
        await run_in_threadpool(_label, ctx.store_dir, unit, media_id, label, user.name,
                                ctx.clock.wall())
    except ReviewError as e:
        raise HTTPException(404 if e.kind == "unknown_frame" else 400, str(e)) from e
    return RedirectResponse(f"/review?unit={quote(unit, safe='')}", status_code=303)


routes = [
    Route("/review", review_page, methods=["GET"]),
    Route("/review/{unit}/label", review_label, methods=["POST"]),
    Route("/review/{unit}/train", review_train, methods=["POST"]),
    Route("/review/{unit}/send", review_send, methods=["POST"]),
]
