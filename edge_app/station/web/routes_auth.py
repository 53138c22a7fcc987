"""Login and logout.

A failed login spends one argon2 verification whatever went wrong (see :mod:`.accounts`) and
counts against the (name, address) pair in :class:`~.throttle.LoginThrottle`; a throttled
pair gets 429 without a verification, so guessing costs the guesser time, not the station.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from edge_app.core.guard import Refusals, Refused
from edge_app.station.web import csrf, db
from edge_app.station.web.accounts import MAX_PASSWORD, close_session, open_session, verify
from edge_app.station.web.pages import SESSION_MAX_AGE_S, ctx_of, render, safe_next, user_of
from edge_app.station.web.throttle import LoginThrottle


def _throttle(request: Request) -> LoginThrottle:
    t: LoginThrottle = request.app.state.throttle
    return t


def _count(request: Request, kind: str, reason: str, addr: str) -> None:
    refusals: Refusals = request.app.state.refusals
    refusals.count(Refused(kind, reason), addr)


async def login_page(request: Request) -> Response:
    if await user_of(request) is not None:
        return RedirectResponse("/", status_code=303)
    nxt = safe_next(request.query_params.get("next", "/"))
    return render(request, "login.html", "Log in · camtrap station", next=nxt)


async def login(request: Request) -> Response:
    form = await csrf.read_form(request)
    ctx = ctx_of(request)
    name = form.get("name", "").strip()[:64]
    password = form.get("password", "")[:MAX_PASSWORD + 1]
    nxt = safe_next(form.get("next", "/"))
    addr = request.client.host if request.client else "?"
    now = ctx.clock.wall()
    wait = _throttle(request).wait_s(name, addr, now)
    if wait > 0:
        _count(request, "throttled", f"login of {name[:40]!r}", addr)
        return render(request, "login.html", "Log in · camtrap station", status=429,
                      next=nxt, name=name,
                      error=f"Too many failed attempts: try again in {int(wait) + 1} s.")
    user = await db.acall(ctx.db_path, lambda c: verify(c, name, password))
    if user is None:
        _throttle(request).failed(name, addr, now)
        _count(request, "bad_login", f"failed login of {name[:40]!r}", addr)
        return render(request, "login.html", "Log in · camtrap station", status=401,
                      next=nxt, name=name, error="Wrong name or password.")
    _throttle(request).succeeded(name, addr)
    sid = await db.acall(ctx.db_path,
                         lambda c: open_session(c, user, now, SESSION_MAX_AGE_S))
    request.session.clear()
    request.session["sid"] = sid
    csrf.new_token(request)
    return RedirectResponse(nxt, status_code=303)


async def logout(request: Request) -> Response:
    await csrf.read_form(request)
    sid = request.session.get("sid")
    if isinstance(sid, str):
        await db.acall(ctx_of(request).db_path, lambda c: close_session(c, sid))
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


routes = [
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
