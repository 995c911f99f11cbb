"""Who may talk to the service, on real servers on 127.0.0.1 (and [::1]): cross-origin posts are
refused, a token is required off loopback (Bearer or the /login cookie), the Host is checked on
every bind, and answers name no absolute path."""

from __future__ import annotations

import socket

import httpx
import pytest

from fdn.archive_index.retrieval import open_index
from fdn.service import QueryService, create_app
from tests.service.conftest import LiveServer, ServeProcess

TOKEN = "correct-horse-battery-staple-42"


@pytest.fixture(scope="module")
def token_server(built_index, tmp_path_factory):
    """A real server that requires TOKEN."""
    scratch = tmp_path_factory.mktemp("guard-scratch")
    service = QueryService(open_index(built_index), scratch_dir=scratch)
    with LiveServer(create_app(service, allowed_hosts=["127.0.0.1"], token=TOKEN)) as server:
        yield server.url, service


def test_cross_origin_posts_are_refused(live_server):
    url = live_server.url
    own = {"origin": url}
    for headers in (
        {"origin": "http://evil.example"},
        {"origin": "null"},
        {"referer": "http://evil.example/page.html"},
        {"sec-fetch-site": "cross-site", **own},
        {"origin": url.replace("127.0.0.1", "localhost")},  # another origin, though the same host
    ):
        r = httpx.post(f"{url}/api/query/upload", headers=headers, files={"t1": ("a", b"x")})
        assert r.status_code == 403, (headers, r.text)
        assert "cross-origin request refused" in r.json()["error"]
    # the server's own page, and a client that is no browser, reach the upload's own checks
    for headers in (own, {"referer": f"{url}/"}, {}):
        r = httpx.post(f"{url}/api/query/upload", headers=headers, content=b"{}")
        assert r.status_code == 400 and "multipart/form-data" in r.json()["error"], headers
    r = httpx.get(f"{url}/api/info", headers={"origin": "http://evil.example"})
    assert r.status_code == 200  # reading is not changing; CORS keeps the answer from that page
    assert r.headers["referrer-policy"] == "same-origin"


def test_a_token_server_answers_only_with_its_token(token_server, tiny_archive, built_index):
    url, service = token_server
    case = service.index.cases[0]
    guarded = ["/api/info", "/api/health", f"/api/query?case={case}", "/static/app.js"]
    guarded.append(f"/api/cases/{case}/slices/3.png")
    for path in guarded:
        r = httpx.get(url + path)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        r = httpx.get(url + path, headers={"authorization": "Bearer wrong-token-of-some-length"})
        assert r.status_code == 401, path
        r = httpx.get(url + path, headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, (path, r.text)
    assert httpx.post(f"{url}/api/query/upload", content=b"{}").status_code == 401
    page = httpx.get(f"{url}/")
    assert page.status_code == 303 and page.headers["location"] == "/login"
    assert httpx.get(f"{url}/login").status_code == 200
    assert httpx.get(f"{url}/static/app.css").status_code == 200  # the sign-in page's style

    wrong = httpx.post(f"{url}/login", data={"token": "not it"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    signed_in = httpx.post(f"{url}/login", data={"token": TOKEN})
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
    cookie = signed_in.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert TOKEN not in cookie  # the cookie is derived from the token, not the token
    with httpx.Client(base_url=url, cookies=signed_in.cookies) as browser:
        assert browser.get("/").status_code == 200
        body = browser.get("/api/query", params={"case": case, "mode": "all"}).text
        assert browser.get(f"/api/cases/{case}/slices/3.png").status_code == 200
    # no absolute path of the server's disks in an answer
    for folder in (tiny_archive, tiny_archive.resolve(), built_index, built_index.resolve()):
        assert str(folder) not in body
    # a sign-in from another site's page is refused like any cross-origin post
    forged = httpx.post(f"{url}/login", data={"token": TOKEN}, headers={"origin": "http://x.y"})
    assert forged.status_code == 403


def test_serve_refuses_to_leave_loopback_without_a_token(built_index, tmp_path):
    from click.testing import CliRunner

    from cli.main import main

    runner = CliRunner()
    for host in ("0.0.0.0", "192.0.2.7", "::"):
        result = runner.invoke(main, ["serve", "--index", str(built_index), "--host", host])
        assert result.exit_code != 0
        assert "--token-file" in result.output, result.output
    short = tmp_path / "short"
    short.write_text("abc\n")
    result = runner.invoke(
        main, ["serve", "--index", str(built_index), "--host", "0.0.0.0", "--token-file", short]
    )
    assert result.exit_code != 0 and "at least 16" in result.output, result.output
    result = runner.invoke(
        main,
        ["serve", "--index", str(built_index), "--host", "0.0.0.0"],
        env={"FDN_SERVE_TOKEN": "short"},
    )
    assert result.exit_code != 0 and "FDN_SERVE_TOKEN" in result.output, result.output


def test_serve_on_another_loopback_address_checks_the_host(built_index):
    with ServeProcess("--index", str(built_index), "--host", "127.0.0.2") as server:
        assert server.url.startswith("http://127.0.0.2:"), server.banner
        health = httpx.get(f"{server.url}/api/health", timeout=30)
        assert health.status_code == 200
        assert "server" not in health.headers  # no software name and version
        r = httpx.get(f"{server.url}/api/health", headers={"host": "evil.example"}, timeout=30)
        assert r.status_code == 400 and "does not answer to the host" in r.json()["error"]
        server.process.kill()
        assert "other machines" not in server.process.stderr.read()  # loopback: no warning


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_serve_on_ipv6_loopback_prints_a_url_that_answers(built_index):
    with ServeProcess("--index", str(built_index), "--host", "::1") as server:
        assert server.url.startswith("http://[::1]:"), server.banner
        assert httpx.get(f"{server.url}/api/health", timeout=30).status_code == 200
        r = httpx.get(f"{server.url}/api/health", headers={"host": "evil.example"}, timeout=30)
        assert r.status_code == 400


def test_serve_with_a_token(built_index, tmp_path):
    """With a token the token is required, and names that are not the server's are refused
    (DNS rebinding) except those --allowed-host names. The server binds loopback, as every
    test server does; what a wildcard bind answers is `HostPolicy.for_bind`'s, tested below."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args = ("--index", str(built_index), "--host", "127.0.0.1", "--token-file", str(token_file))
    with ServeProcess(*args, "--allowed-host", "cbir.example.org") as server:
        assert server.url.startswith("http://127.0.0.1:"), server.banner
        assert "token required" in server.banner
        health = f"{server.url}/api/health"
        bearer = {"authorization": f"Bearer {TOKEN}"}
        assert httpx.get(health, timeout=30).status_code == 401
        assert httpx.get(health, headers=bearer, timeout=30).status_code == 200
        for host, status in (
            ("evil.example", 400),
            (f"cbir.example.org:{server.port}", 200),
            ("192.0.2.7", 400),  # an address of no loopback bind
        ):
            r = httpx.get(health, headers={**bearer, "host": host}, timeout=30)
            assert r.status_code == status, (host, r.text)


@pytest.mark.parametrize(
    "bind, header, allowed",
    [
        ("127.0.0.1", "127.0.0.1:8000", True),
        ("127.0.0.1", "localhost:8000", True),
        ("127.0.0.1", "127.9.8.7", True),  # all of 127.0.0.0/8 is loopback
        ("127.0.0.1", "[::1]:8000", True),
        ("127.0.0.1", "evil.example", False),
        ("127.0.0.1", "127.0.0.1.evil.example", False),  # a name, not an address
        ("127.0.0.1", "localhost.evil.example", False),
        ("127.0.0.1", "10.0.0.5:8000", False),  # an address of no loopback bind
        ("127.0.0.1", "", False),
        ("127.0.0.1", "[::1", False),
        ("10.0.0.5", "10.0.0.5:8000", True),
        ("10.0.0.5", "10.0.0.6:8000", False),
        ("0.0.0.0", "10.0.0.6:8000", True),  # a wildcard bind: any address
        ("0.0.0.0", "[2001:db8::1]:8000", True),
        ("0.0.0.0", "evil.example", False),
        ("0.0.0.0", "CBIR.Example.org.:443", True),  # --allowed-host, any case, trailing dot
    ],
)
def test_host_policy(bind, header, allowed):
    from fdn.service.guard import HostPolicy

    policy = HostPolicy.for_bind(bind, ["cbir.example.org"] if bind == "0.0.0.0" else [])
    assert policy.allows(header) is allowed


@pytest.mark.parametrize(
    "headers, refused",
    [
        ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}, False),
        ({"host": "cbir.example.org", "origin": "https://cbir.example.org:443"}, False),
        ({"host": "127.0.0.1", "origin": "http://127.0.0.1:80"}, False),
        ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8001"}, True),
        ({"host": "127.0.0.1:8000", "referer": "http://127.0.0.1:8000/?case=A"}, False),
        ({"host": "127.0.0.1:8000", "referer": "https://evil.example/"}, True),
        ({"host": "127.0.0.1:8000", "sec-fetch-site": "same-origin"}, False),
        ({"host": "127.0.0.1:8000", "sec-fetch-site": "same-site"}, True),
        ({"host": "127.0.0.1:8000"}, False),  # no browser header: a script, not a forged post
    ],
)
def test_cross_origin(headers, refused):
    from starlette.datastructures import Headers

    from fdn.service.guard import cross_origin

    assert (cross_origin(Headers(headers)) is not None) is refused
