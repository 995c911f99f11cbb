"""Who may talk to the service: the Host a request is addressed to, the origin of a request that
changes something, and the token a server off loopback requires.

`Guard` is a pure ASGI middleware that checks, in this order, before any route runs:

1. **Host** (every bind, against DNS rebinding): the Host header must name this server
   (`HostPolicy`): localhost or a loopback address (127.0.0.0/8, [::1]) always; the bound address;
   on a wildcard bind (0.0.0.0, ::) any IP address and the machine's own names; and the names
   given with --allowed-host (a reverse proxy's public name). 400 otherwise.
2. **Origin** of a state-changing request (POST and the like): a browser's `Origin`, or failing
   that its `Referer`, must be this server's own (the Host it addressed); `Sec-Fetch-Site:
   cross-site` is refused too. 403 otherwise, so another site's page cannot post a form or an
   upload here (nor a sign-in). A client that sends neither header (curl, scripts) is not a
   browser acting for someone else and passes.
3. **Token** (when one is set, and it must be off loopback): `Authorization: Bearer TOKEN`, or
   the session cookie that signing in at /login sets (HttpOnly, SameSite=Strict), compared in
   constant time. 401 otherwise; a page (/, /docs) redirects to /login. The sign-in page and the
   stylesheet it uses are the only things served without it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
MIN_TOKEN_CHARS = 16
SESSION_COOKIE = "fdn_session"
PUBLIC_PATHS = frozenset({"/login", "/static/app.css"})  # what the sign-in page needs
PAGES = frozenset({"/", "/docs"})  # sent to /login rather than answered 401


def is_loopback(host: str) -> bool:
    """Whether a bind address (or Host name) reaches only this machine: localhost, 127.0.0.0/8,
    ::1."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_of(header: str) -> str:
    """The host part of a Host header or URL netloc, lower-case, without port or brackets."""
    header = header.strip().lower()
    if header.startswith("["):  # [v6]:port
        return header[1 : header.find("]")] if "]" in header else ""
    if header.count(":") == 1:
        header = header.rsplit(":", 1)[0]
    return header.rstrip(".")


@dataclass(frozen=True)
class HostPolicy:
    """The Host values a server answers to. names: host names or addresses (lower-case, no
    port); any_address: any IP literal too (a wildcard bind). Loopback is always accepted."""

    names: frozenset[str]
    any_address: bool = False

    @classmethod
    def for_bind(cls, host: str, extra: Iterable[str] = ()) -> HostPolicy:
        """The policy of a server bound to `host`, plus `extra` names (e.g. a proxy's)."""
        names = {"localhost", *(host_of(name) for name in extra)}
        wildcard = host in WILDCARD_BINDS
        if wildcard:
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        else:
            names.add(host_of(host))
        return cls(frozenset(names), any_address=wildcard)

    def allows(self, host_header: str) -> bool:
        host = host_of(host_header)
        if not host:
            return False
        if host in self.names or is_loopback(host):
            return True
        return self.any_address and _ip(host) is not None


def _netloc(url: str) -> str:
    """scheme://host:port -> host:port, lower-case, without the scheme's default port."""
    parts = urlsplit(url.strip())
    netloc = parts.netloc.lower()
    default = {"http": ":80", "https": ":443"}.get(parts.scheme.lower())
    if default and netloc.endswith(default):
        netloc = netloc[: -len(default)]
    return netloc


def cross_origin(headers: Headers) -> str | None:
    """Why a state-changing request comes from another site's page; None when it does not."""
    site = headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site is {site}"
    own = headers.get("host", "").lower()
    for header in ("origin", "referer"):  # Origin when the browser sends it, else Referer
        value = headers.get(header)
        if value is not None:
            return None if _netloc(value) == own else f"{header.title()} is {value!r}"
    return None


class TokenCheck:
    """One secret token; the session cookie's value is an HMAC of it, so the cookie never holds
    the token itself. Every comparison is constant-time."""

    def __init__(self, token: str):
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"the token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        self._token = token.encode()
        self.session = hmac.new(self._token, b"fdn-index serve session", hashlib.sha256).hexdigest()

    def matches(self, submitted: str) -> bool:
        return hmac.compare_digest(submitted.encode(), self._token)

    def authorizes(self, headers: Headers) -> bool:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.matches(credentials.strip()):
            return True
        cookie = _cookie(headers.get("cookie", ""), SESSION_COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.session.encode())


def _cookie(header: str, name: str) -> str | None:
    for item in header.split(";"):
        key, _, value = item.strip().partition("=")
        if key == name:
            return value
    return None


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class Guard:
    """Pure ASGI middleware: the host, origin and token checks of this module's docstring.

    hosts None: any Host (an in-process client); token None: no token (loopback only)."""

    def __init__(self, app, hosts: HostPolicy | None = None, token: TokenCheck | None = None):
        self.app, self.hosts, self.token = app, hosts, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, scope) -> JSONResponse | RedirectResponse | None:
        headers = Headers(scope=scope)
        if self.hosts is not None and not self.hosts.allows(headers.get("host", "")):
            return _error(
                400,
                f"this server does not answer to the host {headers.get('host', '')!r}; use the "
                "address it printed, or start it with --allowed-host NAME",
            )
        if scope["method"] not in SAFE_METHODS:
            reason = cross_origin(headers)
            if reason is not None:
                return _error(403, f"cross-origin request refused ({reason})")
        path = scope["path"]
        if self.token is None or path in PUBLIC_PATHS or self.token.authorizes(headers):
            return None
        if scope["method"] == "GET" and path in PAGES:
            return RedirectResponse("/login", status_code=303)
        return _error(
            401,
            "this server requires its token: send 'Authorization: Bearer TOKEN', or sign in at "
            "/login",
            **{"www-authenticate": "Bearer"},
        )


class ServeSetupError(ValueError):
    """A serve set-up that would be unsafe or cannot work (no token off loopback, a bad token)."""


def load_token(token_file: str | None, env_token: str | None) -> str | None:
    """The token from --token-file (its first line; the file wins) or FDN_SERVE_TOKEN; None
    when neither is given. ServeSetupError for an unreadable, empty or short token."""
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ServeSetupError(f"--token-file {token_file}: cannot read it ({exc})") from None
        source = f"--token-file {token_file}"
    elif env_token is not None:
        token, source = env_token.strip(), "FDN_SERVE_TOKEN"
    else:
        return None
    try:
        TokenCheck(token)
    except ValueError as exc:
        raise ServeSetupError(f"{source}: {exc}") from None
    return token


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve off loopback without a token."""
    if token is None and not is_loopback(host):
        raise ServeSetupError(
            f"--host {host} lets other machines connect, so the server requires a token: put one "
            "in a file readable only by you and pass --token-file FILE (or set FDN_SERVE_TOKEN); "
            "for TLS, put a reverse proxy in front (docs/serve.md)"
        )


def server_url(host: str, port: int) -> str:
    """The URL a browser on this machine opens for a server bound to (host, port)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"
