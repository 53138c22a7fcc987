"""What every page shares: the templates, who is logged in, and rendering.

Who is logged in is read from the signed session cookie and checked against ``web_users`` on
every request, so deleting an account (or changing its role) takes effect at once, not when
its cookie expires.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from edge_app.core.guard import Refused
from edge_app.station.web import csrf, db
from edge_app.station.web.accounts import User, session_user
from edge_app.station.web.context import WebContext
from edge_app.station.web.map_svg import MapUnit, render_map

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""Unit, event and media ids in a URL: what the receiver's doors let through."""


class LoginRequired(Exception):
    """Raised by :func:`require`; the app answers with a redirect to the login page."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def ctx_of(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


SESSION_MAX_AGE_S = 7 * 24 * 3600
"""A ranger's phone stays logged in for a week (a night shift must not start with a login)."""


async def user_of(request: Request) -> User | None:
    sid = request.session.get("sid")
    if not isinstance(sid, str) or not 16 <= len(sid) <= 128:
        return None
    ctx = ctx_of(request)
    now = ctx.clock.wall()
    return await db.acall(ctx.db_path,
                          lambda c: session_user(c, sid, now, SESSION_MAX_AGE_S))


async def require(request: Request, *, admin: bool = False, page: bool = True) -> User:
    """The logged-in user; else a redirect to the login page (``page``) or a 401; 403 for a
    ranger on an admin page."""
    user = await user_of(request)
    if user is None:
        if page:
            query = request.url.query
            raise LoginRequired(safe_next(request.url.path + (f"?{query}" if query else "")))
        raise HTTPException(401, "log in first")
    request.state.user = user
    if admin and not user.is_admin:
        raise HTTPException(403, "this page is for admins")
    return user


def check_id(value: str) -> str:
    """``value`` if it is a plain id, else 404 (never a path, never odd bytes)."""
    if not ID_RE.fullmatch(value):
        raise HTTPException(404, "no such item")
    return value


def safe_next(path: str) -> str:
    """A local path to return to after login (never another site: no ``//``, no scheme)."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path or len(path) > 512:
        return "/"
    return quote(path, safe="/-_.~%?=&")


def render(request: Request, template: str, title: str, status: int = 200,
           **values: Any) -> Response:
    user = getattr(request.state, "user", None)
    return templates.TemplateResponse(request, template, {
        "title": title, "user": user, "csrf": csrf.token(request),
        "now": ctx_of(request).clock.wall(), **values},
        status_code=status)


def map_svg(ctx: WebContext, units: Sequence[MapUnit], width: int, height: int) -> str:
    """The map; a boundary that cannot be drawn is left out (and logged), never a 500."""
    try:
        return render_map(units, ctx.boundary, width=width, height=height)
    except Refused as e:
        logger.warning("web: park boundary not drawn: %s", e)
        return render_map(units, None, width=width, height=height)
