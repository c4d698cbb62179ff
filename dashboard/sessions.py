"""A local sign-in that survives a reload: a signed, expiring session cookie.

Streamlit keeps its session in the browser tab's WebSocket, so a reload starts a new one. Here,
after a local account signs in, the page hands the browser a one-time ticket (a random value
kept 60 seconds in this process), which a small built-in Streamlit component (no iframe, no
network fetch but to this server) posts to `…/_parcours/session`. That endpoint, an ASGI
middleware of `dashboard/server.py`, answers with the session cookie: HttpOnly (page scripts
cannot read it), SameSite=Strict, Secure behind HTTPS, for `SESSION_HOURS`. On a new page load
Streamlit reads it (`st.context.cookies`) and the page checks it:

- its HMAC-SHA256 signature, with `PARCOURS_DASHBOARD_SESSION_SECRET` or else a random secret
  made once per install in `PARCOURS_DATA_DIR/dashboard-session.key` (mode 0600);
- its expiry;
- the account: still active, same password (a stamp of its hash is signed in the cookie), and
  not signed out since the cookie was issued (a sign-out, kept in `access_audit`, ends every
  session of that account).

Sign-out also clears the cookie (`…/_parcours/sign-out`). Accounts signed in through OIDC keep
Streamlit's own `st.login` cookie instead. No Streamlit import here but in `keep` and `forget`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

COOKIE = "parcours_session"
SESSION_HOURS = 12.0
TICKET_SECONDS = 60.0
SESSION_PATH = "/_parcours/session"
SIGN_OUT_PATH = "/_parcours/sign-out"
# Where the secret is read from (names, not secrets).
SECRET_ENV = "PARCOURS_DASHBOARD_SESSION_SECRET"  # nosec B105
SECRET_FILE = "dashboard-session.key"  # nosec B105


@dataclass(frozen=True)
class Claims:
    """What a session cookie says: who, which password, when issued, until when."""

    username: str
    stamp: str
    issued: float
    expires: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: bytes, claims: Claims) -> str:
    """The cookie value: the claims, then their HMAC-SHA256 under `secret`."""
    body = _b64(
        json.dumps(
            {"u": claims.username, "s": claims.stamp, "i": claims.issued, "e": claims.expires},
            separators=(",", ":"),
        ).encode()
    )
    mac = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def verify(secret: bytes, token: str | None, now: float) -> Claims | None:
    """The claims of a cookie signed with `secret` and not expired at `now`; None otherwise."""
    if not token or token.count(".") != 1:
        return None
    body, mac = token.split(".")
    expected = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(expected, _unb64(mac)):
            return None
        data = json.loads(_unb64(body))
        claims = Claims(str(data["u"]), str(data["s"]), float(data["i"]), float(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    return claims if claims.expires > now else None


def password_stamp(password_hash: str) -> str:
    """A short digest of the account's password hash: a new password ends older sessions."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def install_secret(data_dir: Path) -> bytes:
    """The signing secret: `PARCOURS_DASHBOARD_SESSION_SECRET`, else this install's random one,
    made on first use in `data_dir` and readable by its owner only."""
    from_env = os.environ.get(SECRET_ENV, "")
    if from_env:
        return from_env.encode()
    path = data_dir / SECRET_FILE
    try:
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it first
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
        return path.read_text().strip().encode()
    except OSError as exc:
        # A read-only folder (a container's): sessions then end when the dashboard restarts.
        _log.warning(
            "cannot keep the session key in %s (%s); set %s to keep sign-ins across restarts",
            path,
            exc.strerror or exc,
            SECRET_ENV,
        )
        return _PROCESS_SECRET


_PROCESS_SECRET = secrets.token_bytes(32)
_log = logging.getLogger(__name__)


# --- One-time tickets, from the page to the cookie endpoint (same process) ---------------------

_tickets: dict[str, tuple[str, float]] = {}
_lock = threading.Lock()


def issue_ticket(token: str, now: float | None = None) -> str:
    """A random one-time ticket that the cookie endpoint exchanges for `token` within a minute."""
    at = time.time() if now is None else now
    ticket = secrets.token_urlsafe(32)
    with _lock:
        for old in [t for t, (_, until) in _tickets.items() if until <= at]:
            del _tickets[old]
        _tickets[ticket] = (token, at + TICKET_SECONDS)
    return ticket


def redeem(ticket: str, now: float | None = None) -> str | None:
    """The token of a ticket not yet used nor expired (used once)."""
    at = time.time() if now is None else now
    with _lock:
        found = _tickets.pop(ticket, None)
    if found is None or found[1] <= at:
        return None
    return found[0]


# --- The cookie endpoint (ASGI middleware) -------------------------------------------------------


def _header(scope: Any, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


def _same_origin(scope: Any) -> bool:
    """Whether the request's Origin names this server (a page of another site cannot post)."""
    origin = _header(scope, b"origin")
    host = _header(scope, b"x-forwarded-host") or _header(scope, b"host")
    return bool(origin) and urlsplit(origin).netloc == host.split(",")[0].strip()


def _secure(scope: Any) -> bool:
    forwarded = _header(scope, b"x-forwarded-proto").split(",")[0].strip()
    return scope.get("scheme") == "https" or forwarded == "https"


def cookie_header(value: str, max_age: int, secure: bool) -> bytes:
    """The Set-Cookie header for `value` (an empty value and age 0 delete it)."""
    jar: SimpleCookie = SimpleCookie()
    jar[COOKIE] = value
    morsel = jar[COOKIE]
    morsel["path"] = "/"
    morsel["max-age"] = str(max_age)
    morsel["httponly"] = True
    morsel["samesite"] = "Strict"
    if secure:
        morsel["secure"] = True
    return morsel.OutputString().encode()


class SessionCookies:
    """ASGI middleware: POST `…/_parcours/session` with a ticket sets the session cookie, POST
    `…/_parcours/sign-out` clears it; both only from a page of this server."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Answer the two session paths; pass everything else on."""
        path = str(scope.get("path", "")).rstrip("/")
        if scope["type"] != "http" or not path.endswith((SESSION_PATH, SIGN_OUT_PATH)):
            await self.app(scope, receive, send)
            return
        if scope.get("method") != "POST":
            await _answer(send, 405, [])
            return
        if not _same_origin(scope):
            await _answer(send, 403, [])
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > 4096:
                await _answer(send, 413, [])
                return
            if not message.get("more_body"):
                break
        secure = _secure(scope)
        if path.endswith(SIGN_OUT_PATH):
            await _answer(send, 204, [(b"set-cookie", cookie_header("", 0, secure))])
            return
        token = redeem(body.decode("ascii", "replace").strip())
        if token is None:
            await _answer(send, 403, [])
            return
        await _answer(
            send,
            204,
            [(b"set-cookie", cookie_header(token, int(SESSION_HOURS * 3600), secure))],
        )


async def _answer(send: Any, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"cache-control", b"no-store"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": b""})


# --- The page's side (Streamlit) -----------------------------------------------------------------

_POST_JS = """
const sent = new Set();
export default function (component) {
  const { data } = component;
  if (!data || !data.url || sent.has(data.url + data.body)) return;
  sent.add(data.url + data.body);
  fetch(data.url, {
    method: "POST",
    body: data.body,
    credentials: "same-origin",
    headers: { "Content-Type": "text/plain" },
  });
}
"""


@functools.cache
def _poster() -> Any:
    import streamlit as st

    return st.components.v2.component("parcours_session_cookie", js=_POST_JS)


def _url(path: str) -> str:
    import streamlit as st

    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}{path}" if base else path


def post(path: str, body: str, key: str) -> None:
    """Have the browser post `body` to this server's `path` (with its cookies), once."""
    _poster()(data={"url": _url(path), "body": body}, key=key)
