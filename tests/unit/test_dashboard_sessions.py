"""Session cookies of local sign-ins: signed, expiring, one-time tickets, the cookie endpoint.
Pure: no database; the endpoint is called in-process (httpx ASGI transport)."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import PlainTextResponse

from dashboard import sessions
from dashboard.sessions import Claims

SECRET = b"k" * 32
CLAIMS = Claims("cadre.sante", "0123456789abcdef", 1_000.0, 1_000.0 + 12 * 3600)


def test_a_signed_cookie_says_who_until_when_and_nothing_else_passes() -> None:
    token = sessions.sign(SECRET, CLAIMS)
    assert sessions.verify(SECRET, token, 2_000.0) == CLAIMS
    # Expired, signed with another key, altered, or not a cookie of ours: refused.
    assert sessions.verify(SECRET, token, CLAIMS.expires) is None
    assert sessions.verify(b"another key", token, 2_000.0) is None
    body, mac = token.split(".")
    forged = sessions.sign(b"attacker", Claims("admin", CLAIMS.stamp, 1_000.0, 9e12))
    assert sessions.verify(SECRET, f"{forged.split('.')[0]}.{mac}", 2_000.0) is None
    assert sessions.verify(SECRET, f"{body}x.{mac}", 2_000.0) is None
    for junk in (None, "", "abc", "a.b.c", "!!.??"):
        assert sessions.verify(SECRET, junk, 2_000.0) is None


def test_a_ticket_is_exchanged_once_and_within_a_minute() -> None:
    ticket = sessions.issue_ticket("the-token", now=100.0)
    assert sessions.redeem("not-a-ticket", now=101.0) is None
    assert sessions.redeem(ticket, now=101.0) == "the-token"
    assert sessions.redeem(ticket, now=102.0) is None
    late = sessions.issue_ticket("the-token", now=100.0)
    assert sessions.redeem(late, now=100.0 + sessions.TICKET_SECONDS) is None


def test_the_install_secret_is_made_once_readable_by_its_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(sessions.SECRET_ENV, raising=False)
    first = sessions.install_secret(tmp_path / "data")
    assert len(first) == 64
    assert sessions.install_secret(tmp_path / "data") == first
    mode = (tmp_path / "data" / sessions.SECRET_FILE).stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert sessions.install_secret(tmp_path / "other") != first
    # A folder it cannot make (here under a file; in a container, a read-only app folder): a
    # key for this process, the same on every call.
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    process_key = sessions.install_secret(blocked / "data")
    assert len(process_key) == 32 and process_key != first
    assert sessions.install_secret(blocked / "other") == process_key
    monkeypatch.setenv(sessions.SECRET_ENV, "from the environment")
    assert sessions.install_secret(tmp_path / "data") == b"from the environment"


class Web:
    """The endpoint in front of a stand-in app, called in-process through httpx's ASGI transport."""

    def __init__(self) -> None:
        self.app = sessions.SessionCookies(PlainTextResponse("the app"))

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://dash") as web:
                return await web.request(method, path, **kwargs)

        return asyncio.run(call())

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)


def client() -> Web:
    return Web()


def test_the_endpoint_sets_an_httponly_strict_cookie_for_a_ticket_from_this_site() -> None:
    web = client()
    ticket = sessions.issue_ticket("signed-token")
    same = {"origin": "http://dash"}
    # Another site's page cannot post a ticket; a GET does nothing.
    assert (
        web.post(
            sessions.SESSION_PATH, content=ticket, headers={"origin": "http://evil"}
        ).status_code
        == 403
    )
    assert web.get(sessions.SESSION_PATH).status_code == 405
    answer = web.post(sessions.SESSION_PATH, content=ticket, headers=same)
    assert answer.status_code == 204
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{sessions.COOKIE}=signed-token")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert f"Max-Age={int(sessions.SESSION_HOURS * 3600)}" in cookie
    assert "Secure" not in cookie
    # Used once.
    assert web.post(sessions.SESSION_PATH, content=ticket, headers=same).status_code == 403
    # Behind an HTTPS proxy the cookie is Secure.
    again = sessions.issue_ticket("signed-token")
    proxied = web.post(
        sessions.SESSION_PATH,
        content=again,
        headers={"origin": "http://dash", "x-forwarded-proto": "https"},
    )
    assert "Secure" in proxied.headers["set-cookie"]
    # Sign-out clears it; every other path is the app's.
    out = web.post(sessions.SIGN_OUT_PATH, headers=same)
    assert out.status_code == 204
    assert (
        f'{sessions.COOKIE}=""' in out.headers["set-cookie"]
        or f"{sessions.COOKIE}=;" in out.headers["set-cookie"]
    )
    assert "Max-Age=0" in out.headers["set-cookie"]
    assert web.get("/lits").text == "the app"
