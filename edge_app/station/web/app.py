"""The rangers' web app: :func:`make_app` turns a :class:`WebContext` into a Starlette app.

Run it with :class:`StationServer` (``camtrap station``); the receiver's ``on_event`` hook
calls ``ctx.bus.publish`` and its ``on_media`` hook ``ctx.bus.publish_media``, so open Alerts
pages update without a reload.

Why a server subclass: uvicorn waits for open responses before it stops, and a live page's
event stream never ends by itself; :class:`StationServer` ends the streams (``bus.close()``)
when it is told to stop, so Ctrl-C or ``systemctl stop`` takes a moment, not forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from urllib.parse import quote

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_app.core.guard import Refusals, Refused
from edge_app.station.web import (
    db,
    routes_alerts,
    routes_auth,
    routes_fleet,
    routes_live,
    routes_review,
)
from edge_app.station.web.bus import EventBus
from edge_app.station.web.context import WebContext
from edge_app.station.web.pages import HERE, SESSION_MAX_AGE_S, LoginRequired, render
from edge_app.station.web.throttle import LoginThrottle
from edge_app.station.web.tiles import tile_origin

logger = logging.getLogger(__name__)

SESSION_COOKIE = "camtrap_session"
CSP = ("default-src 'self'; img-src 'self' data:{tiles}; style-src 'self' 'unsafe-inline'; "
       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'self'")
"""Nothing from elsewhere, except map tiles from the configured tile server."""


def security_headers(tile_url: str | None) -> list[tuple[bytes, bytes]]:
    origin = tile_origin(tile_url) if tile_url else None
    csp = CSP.format(tiles=f" {origin}" if origin else "")
    return [(b"content-security-policy", csp.encode()), (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin")]


class SecurityHeaders:
    """Adds the same safety headers to every response (pages, media, errors, the stream), and
    ``no-store`` to pages, so a shared phone's Back button after logout shows no alert."""

    def __init__(self, app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + self.headers
                if not static and not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))  # pages are private
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


REFUSAL_KINDS = {400: "malformed", 403: "forbidden", 404: "not_found", 405: "bad_method",
                 413: "too_large", 415: "bad_type", 429: "throttled"}
"""Refused requests, counted per kind in ``app.state.refusals`` (the web door's stats)."""


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = REFUSAL_KINDS.get(exc.status_code)
    if kind is not None:
        refusals: Refusals = request.app.state.refusals
        client = request.client.host if request.client else "?"
        refusals.count(Refused(kind, str(exc.detail)[:200]),
                       f"{client} {request.method} {request.url.path[:80]}")
    if exc.status_code in (401, 405) or request.url.path.startswith(("/media/", "/events")):
        return PlainTextResponse(exc.detail, status_code=exc.status_code)
    return render(request, "error.html", f"{exc.status_code} · camtrap station",
                  status=exc.status_code, code=exc.status_code, message=exc.detail)


async def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(f"/login?next={quote(exc.next_url, safe='')}", status_code=303)


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.error("web: %s %s failed", request.method, request.url.path, exc_info=exc)
    return PlainTextResponse("Internal error: the station logged it.", status_code=500)


def make_app(ctx: WebContext) -> Starlette:
    """The app serving ``ctx``; creates the web tables in the store if needed.

    Raises:
        StorageError: the store cannot be opened.
        ValueError: a secret key shorter than 32 bytes.
    """
    if len(ctx.secret_key) < 32:
        raise ValueError("the session secret key must be at least 32 bytes")
    db.ensure(ctx.db_path)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ctx.bus.bind(asyncio.get_running_loop())
        try:
            yield
        finally:
            ctx.bus.unbind()

    app = Starlette(
        routes=[*routes_auth.routes, *routes_alerts.routes, *routes_live.routes,
                *routes_fleet.routes,
                *routes_review.routes,
                Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")],
        middleware=[
            Middleware(SecurityHeaders, headers=security_headers(ctx.tile_url)),
            Middleware(SessionMiddleware, secret_key=ctx.secret_key.hex(),
                       session_cookie=SESSION_COOKIE, max_age=SESSION_MAX_AGE_S,
                       same_site="lax", https_only=ctx.secure_cookies),
        ],
        exception_handlers={HTTPException: _http_error, LoginRequired: _login_required,
                            500: _server_error},
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.state.throttle = LoginThrottle()
    app.state.refusals = Refusals("web", ctx.clock)
    return app


class StationServer(uvicorn.Server):
    """A uvicorn server that ends the live streams of ``bus`` when told to stop."""

    def __init__(self, config: uvicorn.Config, bus: EventBus) -> None:
        super().__init__(config)
        self.bus = bus

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.bus.close()
        super().handle_exit(sig, frame)


def server(ctx: WebContext, host: str, port: int, *, log_level: str = "info",
           ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> StationServer:
    """The web server of ``ctx`` (call ``.run()``; it handles SIGINT and SIGTERM itself).

    Raises:
        StorageError: the store cannot be opened.
    """
    config = uvicorn.Config(make_app(ctx), host=host, port=port, log_level=log_level,
                            ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                            proxy_headers=False, server_header=False,
                            timeout_graceful_shutdown=5)
    return StationServer(config, ctx.bus)
