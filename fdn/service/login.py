"""Signing in to a service that requires a token, so the viewer works in a browser.

GET /login shows a form; POST /login with the right token sets the session cookie (HttpOnly,
SameSite=Strict, Secure over HTTPS; its value an HMAC of the token, `guard.TokenCheck`) and sends
the browser to the viewer; POST /logout clears it. API clients send `Authorization: Bearer`
instead and never need these. The form's body is read within the same byte and time limits as
an upload's, scaled down (`uploads.body_chunks`).
"""

from __future__ import annotations

import asyncio
import html
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fdn.service.guard import SESSION_COOKIE, TokenCheck
from fdn.service.uploads import UploadLimits, UploadRefused, body_chunks

FORM_LIMITS = UploadLimits(max_bytes=4096, max_voxels=0, idle_seconds=10.0)
FAILED_SIGN_IN_DELAY = 0.5  # seconds; slows guessing without blocking anyone else

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fdn-index: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/app.css"></head>
<body><main class="login">
<h1>fdn-index</h1>
<p>{message}</p>
<form method="post" action="/login">
<label>Token <input type="password" name="token" autocomplete="current-password" autofocus
required></label>
<button type="submit">Sign in</button>
</form></main></body></html>
"""


def _page(message: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(message=html.escape(message)), status_code=status)


def _token(request: Request) -> TokenCheck | None:
    return request.app.state.token


async def login_page(request: Request) -> Response:
    if _token(request) is None:
        return RedirectResponse("/", status_code=303)
    return _page("This server requires its token (the one it was started with).")


async def login(request: Request) -> Response:
    token = _token(request)
    if token is None:
        return RedirectResponse("/", status_code=303)
    try:
        body = b"".join([chunk async for chunk in body_chunks(request.receive, FORM_LIMITS)])
    except UploadRefused as exc:
        return _page(exc.message, exc.status)
    submitted = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
    if not token.matches(submitted):
        await asyncio.sleep(FAILED_SIGN_IN_DELAY)
        return _page("Wrong token; try again.", 401)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token.session,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
