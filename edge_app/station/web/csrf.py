"""POST forms: size first, parse with limits, then the per-session CSRF token.

Why parse the form ourselves: the pages only post small URL-encoded forms (login,
acknowledge, a review label), so anything else — a multipart upload, a megabyte body, bytes
that are not UTF-8, hundreds of fields — is refused with a 4xx before it reaches a handler,
and nothing of it can turn into a 500.

Why a token in the session *and* SameSite=Lax cookies: Lax stops most cross-site POSTs in
current browsers, the token stops the rest (older browsers, a sibling site on the same host).
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

MAX_FORM_BYTES = 16 * 1024
MAX_FIELDS = 16
FORM_TYPE = "application/x-www-form-urlencoded"


def token(request: Request) -> str:
    """The session's CSRF token (made on first use)."""
    tok = request.session.get("csrf")
    if not isinstance(tok, str) or len(tok) < 32:
        tok = secrets.token_urlsafe(32)
        request.session["csrf"] = tok
    return tok


def new_token(request: Request) -> str:
    """A fresh token (after login: a token seen before login is not reused)."""
    tok = secrets.token_urlsafe(32)
    request.session["csrf"] = tok
    return tok


async def read_form(request: Request, max_bytes: int = MAX_FORM_BYTES) -> dict[str, str]:
    """A small URL-encoded form, its CSRF token checked.

    Raises:
        HTTPException: 413 too large, 415 not URL-encoded, 400 not UTF-8 or too many fields,
            403 missing or wrong CSRF token.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != FORM_TYPE:
        raise HTTPException(415, "forms are posted URL-encoded")
    length = request.headers.get("content-length")
    if length is not None and (not length.isascii() or not length.isdigit()
                               or int(length) > max_bytes):
        raise HTTPException(413, "form too large")
    body = bytearray()
    try:
        async for part in request.stream():
            body += part
            if len(body) > max_bytes:
                raise HTTPException(413, "form too large")
    except ClientDisconnect as e:
        raise HTTPException(400, "incomplete form") from e
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                          max_num_fields=MAX_FIELDS, errors="strict")
    except (UnicodeDecodeError, ValueError) as e:
        raise HTTPException(400, "malformed form") from e
    form: dict[str, str] = {}
    for k, v in pairs:
        form.setdefault(k, v)
    expected = request.session.get("csrf")
    got = form.get("csrf", "")
    if not isinstance(expected, str) or not expected or not hmac.compare_digest(
            expected.encode(), got.encode("utf-8", "surrogatepass")):
        raise HTTPException(403, "the form is stale or not ours: reload the page")
    return form
